"""Names read from files (run ids, task names, data file names) and the paths built from them never leave their
root: every path derived from something a record or spec says goes through `check_name` and `inside`."""

from __future__ import annotations

import re
from pathlib import Path

from sptbench.core.errors import SptbenchError

# A run id as `records.build` writes it: UTC timestamp and 6 hex digits (every committed record matches).
RUN_ID = re.compile(r"[0-9]{8}T[0-9]{6}-[0-9a-f]{6}")
# A name that is one path component: no separators, no leading dot (so neither '..' nor hidden files).
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")


def check_run_id(run_id: object) -> str:
    """The run id, or a one-line error: it becomes a folder name (pending states), so only the strict pattern."""
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise SptbenchError(f"run_id {run_id!r} is not of the form YYYYMMDDTHHMMSS-xxxxxx (6 hex digits)")
    return run_id


def check_name(name: object, what: str) -> str:
    """`name` if it is a single safe path component (letters, digits, _ . + -; no leading dot), else one line."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise SptbenchError(f"{what} {name!r} is not a plain name (letters, digits, '_', '.', '+', '-'; "
                            "no path separators, no leading dot)")
    return name


def inside(root: str | Path, *parts: str, what: str = "path") -> Path:
    """`root / parts`, checked to resolve (symlinks followed) to a path under `root`, else one line."""
    base = Path(root).resolve()
    path = base.joinpath(*parts).resolve()
    if path != base and base not in path.parents:
        raise SptbenchError(f"{what} {'/'.join(parts)!r} leaves its folder {root}")
    return path
