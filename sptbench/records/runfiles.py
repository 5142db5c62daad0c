"""Records as files of their own (docs/records.md, "Cluster-safe records"): a run on a cluster writes its record to
`<results>/v1/<backbone>/runs/<run_id>.yaml` instead of appending to the shared table, so no two nodes ever write
the same file (whatever their file system's locks do); `sptbench merge` (records/merge.py) folds the files into the
tables. Readers of a results folder see them as they are (a one-record table each) until merged."""

from __future__ import annotations

import os
from pathlib import Path

from sptbench.core.errors import SptbenchError
from sptbench.core.paths import check_name
from sptbench.records.io import check_writable_dir, dump_record, record_table_path, write_text_atomic
from sptbench.records.schema import TABLE_DIR, validate_record

RUNS_DIR = "runs"


def runs_dir(table: Path) -> Path:
    """The run-file folder beside a table (`<results>/v1/<backbone>/runs/`)."""
    return table.parent / RUNS_DIR


def run_file_path(results_dir: str | Path, record: dict) -> Path:
    """Where `record`'s own file goes: the `runs/` folder of its table's backbone, named by its run id."""
    return runs_dir(record_table_path(results_dir, record)) / f"{check_name(record['run_id'], 'run id')}.yaml"


def check_run_file_dir(table: Path) -> None:
    """Before a run: its record file will have a writable folder (the table's `runs/`)."""
    check_writable_dir(runs_dir(table))


def write_run_file(results_dir: str | Path, record: dict) -> Path:
    """Validate `record` and write it as its own file (atomically; never over another one). Returns the path."""
    problems = validate_record(record)
    if problems:
        raise SptbenchError(f"refusing to write an invalid record: {'; '.join(problems)}")
    path = run_file_path(results_dir, record)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SptbenchError(f"cannot create the folder {path.parent}: {err.strerror or err}") from None
    if os.path.lexists(path):
        raise SptbenchError(f"{path} already exists: run id '{record['run_id']}' was written before")
    write_text_atomic(path, dump_record(record))
    return path


def run_files(results_dir: str | Path) -> list[Path]:
    """Every record file under `<results>/v1/*/runs/`, sorted."""
    root = Path(results_dir) / TABLE_DIR
    return sorted(p for p in root.glob(f"*/{RUNS_DIR}/*.yaml") if p.is_file()) if root.is_dir() else []
