"""Result tables on disk: where a record's table is, reading (migrated), validating files, and appending atomically
under a lock (see docs/records.md).

A table is a YAML stream (`---` per record) under `<results>/v1/<backbone>/<setting>.yaml`. Records are data only
(`yaml` safe loader and dumper), validated before they are written, never edited after, and migrated to the current
schema when read (records/migrate.py), so tables, checks and `show` only ever see schema `SCHEMA_VERSION`.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from sptbench.core import safe_yaml
from sptbench.core.errors import SptbenchError
from sptbench.records.keys import setting_name
from sptbench.records.migrate import migrate
from sptbench.records.schema import TABLE_DIR, validate_record

_SETTING_RE = re.compile(r"^(\d+shot|n\d+|full)$")
# A Hugging Face hub id: `name` or `org/name`; the hub forbids "--" and ".." in names, so "/" -> "--" is injective.
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


# ---------------------------------------------------------------------------------------------------- paths


def safe_backbone_name(backbone_id: str) -> str:
    """One safe path component for a backbone id: hub ids `org/name` -> `org--name`; local paths -> `<name>-<hash>`."""
    if not isinstance(backbone_id, str) or not backbone_id.strip():
        raise SptbenchError(f"backbone id must be a non-empty string, got {backbone_id!r}")
    if _HUB_ID_RE.match(backbone_id) and ".." not in backbone_id and "--" not in backbone_id:
        return backbone_id.replace("/", "--")
    # Anything else (a local path, odd characters): readable last component plus a hash of the full id.
    last = re.split(r"[/\\]+", backbone_id.rstrip("/\\"))[-1]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", last).lstrip(".-")[:60] or "backbone"
    return f"{base}-{hashlib.sha256(backbone_id.encode()).hexdigest()[:8]}"


def table_path(results_dir: str | Path, backbone_id: str, setting: str) -> Path:
    """Where the records of one backbone and data regime go: `<results_dir>/v1/<safe backbone>/<setting>.yaml`."""
    if not _SETTING_RE.match(setting):
        raise SptbenchError(f"bad setting '{setting}': expected <K>shot, n<N> or full")
    root = Path(results_dir)
    path = root / TABLE_DIR / safe_backbone_name(backbone_id) / f"{setting}.yaml"
    if not path.resolve().is_relative_to(root.resolve()):  # defence in depth: the name is one safe component
        raise SptbenchError(f"table path {path} escapes the results directory {root}")
    return path


def record_table_path(results_dir: str | Path, record: dict) -> Path:
    """The table a record belongs in, from its backbone id and protocol."""
    protocol = record["protocol"]
    return table_path(results_dir, record["backbone"]["id"], setting_name(protocol["shots"], protocol["train_size"]))


# ---------------------------------------------------------------------------------------------------- reading


def _load_documents(path: Path, text: str) -> list[tuple[int, Any]]:
    """(first line, data) of every non-empty document of a YAML stream; malformed -> SptbenchError file:line."""
    return list(safe_yaml.iter_documents(text, str(path)))


def _read_text(path: Path) -> str:
    """A table's text (bounded: see `safe_yaml.MAX_TABLE_BYTES`); a missing or unreadable file is a user error.
    Read under a shared lock (no append is half-done meanwhile) and without an append that was interrupted (its
    journal names the size before it: `append_record`)."""
    with _locked(path, shared=True):
        text = safe_yaml.read_text(path, "results table", safe_yaml.MAX_TABLE_BYTES)
        committed = _committed_size(path)
    if committed is not None and committed < len(text):  # cheap test first: bytes >= characters
        data = text.encode("utf-8")
        if committed < len(data):
            text = data[:committed].decode("utf-8")
    return text


def _migrated(path: Path, docs: list[tuple[int, Any]]) -> list[dict]:
    """The documents of one table as current-schema records; non-mappings and bad versions name file:line."""
    records = []
    for line, data in docs:
        if not isinstance(data, dict):
            raise SptbenchError(f"{path}:{line}: a record must be a mapping, got {type(data).__name__}")
        try:
            records.append(migrate(data))
        except SptbenchError as err:
            raise SptbenchError(f"{path}:{line}: {err}") from None
    return records


def read_table(path: str | Path) -> list[dict]:
    """All records of one table, migrated to the current schema, in file order (empty file -> [])."""
    path = Path(path)
    return _migrated(path, _load_documents(path, _read_text(path)))


_OTHER_KINDS = re.compile(rb"^(bench_version|script):", re.M)  # `sptbench bench` records, scripts/stock_loop.py output
PENDING_DIR = "pending"  # under a results root: saved states of untested grid points (sptbench/reports/selection.py)
# The files of a saved run (the format is declared in run/persist.py; named here so that outputs can refuse them).
SAVED_WEIGHTS, SAVED_RECORD, SAVED_MANIFEST = "trained.safetensors", "record.yaml", "model.yaml"


def is_run_table(path: Path) -> bool:
    """Whether a YAML file found in a folder holds run records: files whose head names another kind of document
    (`sptbench bench` records carry `bench_version`, the stock loop's output `script`) are left to their readers."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:  # unreadable: kept, so that reading it says why in one line (never silently left out)
        return True
    return _OTHER_KINDS.search(head) is None


def holds_records(path: Path) -> bool:
    """An existing YAML file whose head holds a run record (a `run_id:` key): a results table, whatever it is called."""
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except OSError:
        return False
    return re.search(rb"^run_id:", head, re.M) is not None


def check_output(path: str | Path, flag: str) -> None:
    """An output file named by the user (`--out`, `--readme`) is neither a results table nor a file of a saved run:
    output never replaces records or trained weights (one line, before any work)."""
    path = Path(path)
    if holds_records(path):
        raise SptbenchError(f"{flag} {path} is a results table: not overwritten (write to another file)")
    if path.name in (SAVED_WEIGHTS, SAVED_RECORD, SAVED_MANIFEST) and (path.parent / SAVED_WEIGHTS).exists():
        raise SptbenchError(f"{flag} {path} is part of a saved run: not overwritten (write to another file)")


def table_files(paths: Iterable[str | Path]) -> list[Path]:
    """The table files named by `paths`: files as given, directories searched recursively for *.yaml (sorted),
    leaving out other kinds of YAML kept beside the tables (`is_run_table`) and the saved states of untested grid
    points (`pending/`: their record.yaml repeats a record the table holds)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*.yaml")
                            if f.is_file() and PENDING_DIR not in f.relative_to(p).parts[:-1] and is_run_table(f))
        elif p.is_file():
            files.append(p)
        else:
            raise SptbenchError(f"{p}: no such file or directory")
    return files


def read_records(paths: Iterable[str | Path]) -> list[dict]:
    """The records of every table under `paths` (files or directories), in sorted file order."""
    return [rec for f in table_files(paths) for rec in read_table(f)]


def validate_paths(paths: Iterable[str | Path]) -> list[str]:
    """Every problem in the tables under `paths`, each as `file:line: problem` (line where the record starts)."""
    problems: list[str] = []
    seen: dict[str, str] = {}
    for f in table_files(paths):
        try:
            docs = _load_documents(f, _read_text(f))
        except SptbenchError as err:
            problems.append(str(err))
            continue
        for line, data in docs:
            where = f"{f}:{line}"
            try:
                (rec,) = _migrated(f, [(line, data)])
            except SptbenchError as err:
                problems.append(str(err))
                continue
            problems += [f"{where}: {p}" for p in validate_record(rec)]
            run_id = rec.get("run_id")
            if isinstance(run_id, str) and run_id in seen:
                problems.append(f"{where}: duplicate run_id '{run_id}' (first at {seen[run_id]})")
            elif isinstance(run_id, str):
                seen[run_id] = where
    return problems


def find_record(paths: Iterable[str | Path], run_id: str) -> dict:
    """The record with this run id (or a unique prefix of one) under `paths`."""
    records = read_records(paths)
    exact = [r for r in records if r.get("run_id") == run_id]
    matches = exact or [r for r in records if str(r.get("run_id", "")).startswith(run_id)]
    if not matches:
        raise SptbenchError(f"no record with run id '{run_id}' ({len(records)} records searched)")
    if len({r.get("run_id") for r in matches}) > 1:
        ids = ", ".join(sorted(str(r.get("run_id")) for r in matches)[:5])
        raise SptbenchError(f"run id '{run_id}' is ambiguous: {ids}")
    return matches[-1]


# ---------------------------------------------------------------------------------------------------- writing


@contextmanager
def _locked(path: Path, shared: bool = False) -> Iterator[None]:
    """An inter-process lock on a table, held on a sibling `.NAME.lock` file: exclusive for appends; `shared` for
    readers, where the lock file exists and can be opened (a reader of a read-only folder goes without)."""
    lock_path = path.with_name(f".{path.name}.lock")
    try:
        fd = os.open(lock_path, os.O_RDONLY) if shared else os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        if not shared:
            raise
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def is_read_only(path: Path) -> bool:
    """Write-protected: not writable for us, or no write bit at all (a `chmod a-w` that root would override)."""
    return not os.access(path, os.W_OK) or not path.stat().st_mode & 0o222


def check_writable_dir(folder: str | Path) -> None:
    """`folder` is, or can be created as, a folder we may write in: its nearest existing ancestor is a writable
    folder. Checked before a run, so that its record has somewhere to go."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise SptbenchError(f"{existing} is not a folder (on the way to {folder})")
    if is_read_only(existing) or not os.access(existing, os.X_OK):
        raise SptbenchError(f"{existing} is read-only: cannot write {folder}")


def check_appendable(path: str | Path) -> None:
    """Before a run: a record can be appended to the table at `path` (its folder is writable; an existing table is
    a readable, valid, writable table). The same checks `append_record` makes, made before any training."""
    path = Path(path)
    check_writable_dir(path.parent)
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise SptbenchError(f"{path}: the results table is not a file")
        if is_read_only(path):
            raise SptbenchError(f"{path}: the results table is read-only (chmod u+w to allow appends)")
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as err:
            raise SptbenchError(f"{path}: cannot read results table: {err.strerror or err}") from None
        try:
            size = os.fstat(fd).st_size
            _check_tail(path, fd, min(size, _committed_size(path) or size))
        finally:
            os.close(fd)


def umask() -> int:
    """The process's umask (read from /proc where it can be, else set and restored)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def new_file_mode() -> int:
    """The mode a new file gets from `open`: 0o666 less the umask (atomic writes go through a 0600 temp file)."""
    return 0o666 & ~umask()


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8) atomically (`write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` atomically: temp file in the same directory, fsync, rename, fsync the directory.
    The file keeps its mode (a new one gets 0o666 less the umask); a write-protected file is an error, not replaced;
    OS errors are one-line errors."""
    path = Path(path)
    try:
        if path.exists() and is_read_only(path):
            raise SptbenchError(f"{path} is read-only: not replaced")
        mode = path.stat().st_mode & 0o777 if path.exists() else new_file_mode()
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise SptbenchError(f"cannot write {path}: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise SptbenchError(f"cannot write {path}: {err.strerror or err}") from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class _Dumper(yaml.SafeDumper):
    """The safe dumper, writing a value that occurs twice twice (readers refuse YAML aliases)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_record(record: dict) -> str:
    """One record as a YAML document, starting with `---`, keys in record order, no aliases."""
    return yaml.dump(record, Dumper=_Dumper, sort_keys=False, explicit_start=True, allow_unicode=True, width=120)


def _journal(path: Path) -> Path:
    """The journal of an append in progress: the table's size before it (`append_record`)."""
    return path.with_name(f".{path.name}.append")


def _committed_size(path: Path) -> int | None:
    """The size of the table before an append that has not finished (a journal is left), else None."""
    try:
        text = _journal(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.endswith("\n") and text[:-1].isdigit() else None  # half-written: no data yet


def _roll_back(path: Path) -> None:
    """Under the lock, before an append: undo an append that was interrupted (kill -9: the table is cut back to the
    journal's size) and remove the hidden temp files killed atomic writes left beside the table."""
    size = _committed_size(path)
    if size is not None and path.is_file() and path.stat().st_size > size:
        os.truncate(path, size)
    _journal(path).unlink(missing_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)


_DOCUMENT_START = re.compile(rb"^---(?=[ \t\r\n]|$)", re.M)


def _tail_document(fd: int, size: int) -> tuple[int, bytes]:
    """(offset, bytes) of the table's last document: from its last `---` line (or the file's start); reads
    backwards from the end, as far as that document goes."""
    chunk = 1 << 16
    while True:
        start = max(0, size - chunk)
        data = os.pread(fd, size - start, start)
        hits = [m.start() for m in _DOCUMENT_START.finditer(data)]
        hits = [h for h in hits if h > 0 or start == 0]  # a hit at a chunk's start may be mid-line
        if hits or start == 0:
            at = hits[-1] if hits else 0
            return start + at, data[at:]
        chunk *= 4


def _check_tail(path: Path, fd: int, size: int) -> dict | None:
    """The table's last record (migrated), checked to parse as one, or None for an empty table: what an append
    needs to know of the table, whatever its size. A malformed tail is an error naming file:line."""
    if size == 0:
        return None
    offset, data = _tail_document(fd, size)
    try:
        records = _migrated(path, _load_documents(path, safe_yaml.decode_utf8(data, str(path))))
    except SptbenchError:  # the whole table, for the error's true line (an error path: its cost does not matter)
        with open(path, "rb") as f:  # no lock: the caller may hold it
            whole = safe_yaml.decode_utf8(f.read(size), str(path))
        _migrated(path, _load_documents(path, whole))
        raise
    return records[-1] if records else None


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def append_record(path: str | Path, record: dict) -> None:
    """Validate `record` and append it to the table at `path`: atomically (a journal holds the table's size until
    the record is written and synced; an interrupted append is undone by the next one, and readers never see it)
    and safely under concurrent appends (an exclusive lock). Costs what the record costs: only the table's last
    record is read (`_check_tail`); full validation is `validate_paths`' (`sptbench validate`)."""
    problems = validate_record(record)
    if problems:
        raise SptbenchError(f"refusing to write an invalid record: {'; '.join(problems)}")
    document = dump_record(record).encode("utf-8")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SptbenchError(f"cannot create the folder of {path}: {err.strerror or err}") from None
    with _locked(path):
        _roll_back(path)
        if path.exists() and is_read_only(path):
            raise SptbenchError(f"{path} is read-only: not replaced")
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)  # the umask applies to a new table
        except OSError as err:
            raise SptbenchError(f"cannot write {path}: {err.strerror or err}") from None
        try:
            _append(path, fd, record, document)
        finally:
            os.close(fd)


def _append(path: Path, fd: int, record: dict, document: bytes) -> None:
    """The append itself, under the lock: tail check, journal, write, sync; undone on any failure."""
    size = os.fstat(fd).st_size
    last = _check_tail(path, fd, size)
    if last is not None and last.get("run_id") == record["run_id"]:
        raise SptbenchError(f"{path}: run id '{record['run_id']}' is already in this table")
    sep = b"\n" if size and os.pread(fd, 1, size - 1) != b"\n" else b""
    if size + len(sep) + len(document) > safe_yaml.MAX_TABLE_BYTES:
        raise SptbenchError(f"{path}: the table would pass {safe_yaml.MAX_TABLE_BYTES:,} bytes, the most a table may "
                            "hold; start another results folder")
    journal = _journal(path)
    try:
        with open(journal, "w", encoding="ascii") as f:  # first: what to cut back to, should the write not finish
            f.write(f"{size}\n")
            f.flush()
            os.fsync(f.fileno())
        _write_all(fd, sep + document)
        os.fsync(fd)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        if isinstance(err, OSError):
            raise SptbenchError(f"cannot append to {path}: {err.strerror or err}") from None
        raise
    finally:
        journal.unlink(missing_ok=True)
