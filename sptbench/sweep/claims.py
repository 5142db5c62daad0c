"""Claims that let several `sptbench sweep` processes share one queue: a process claims a run (or a group's test)
before it starts it, and the others skip what is claimed. A claim is an exclusive `flock` on a file in
`<results_dir>/.claims/`, so the operating system drops it when the process ends in any way (no stale claims to
clean up after a crash or `kill -9`); the file is removed when the work is done. Locks are per machine (and on a
shared file system only where it supports `flock`); the record written at the end is what other machines see.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sptbench.core.errors import SptbenchError

CLAIMS_DIR = ".claims"


def claims_dir(results_dir: str | Path) -> Path:
    return Path(results_dir) / CLAIMS_DIR


def claim_name(kind: str, text: str) -> str:
    """A file name for the claim on `text` (a canonical key): `kind-<16 hex digits of its sha256>`."""
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


@functools.cache
def _warn_once(message: str) -> None:
    print(message, file=sys.stderr)


@contextmanager
def claim(folder: str | Path, name: str) -> Iterator[bool]:
    """Try to claim `name` without waiting: yields True when this process holds it for the block, False when
    another one does (then nothing is held). Where the file system cannot lock, it says so once and yields True."""
    folder = Path(folder)
    path = folder / f"{name}.lock"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise SptbenchError(f"cannot claim work in {folder}: {err.strerror or err}") from None
    try:
        state = "held"
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            state = "taken"
        except OSError as err:  # a file system without flock (some network mounts): work alone, as before claims
            _warn_once(f"warning: cannot lock files in {folder} ({err.strerror or err}): sweep processes sharing "
                       "it will not share runs")
            state = "unlockable"
        if state != "held":
            yield state == "unlockable"
            return
        try:
            yield True
        finally:
            # removed while held; a process that opened the old file meanwhile may lock it after we let go, which
            # is why the caller re-checks the records once it holds a claim
            path.unlink(missing_ok=True)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
