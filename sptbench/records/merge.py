"""`sptbench merge`: fold the records runs wrote as files of their own (records/runfiles.py) into the versioned
tables, idempotently: a record the table already holds (the same run id, the same content) is not added again, and
a record whose run id is already taken by a different record (in the table or another file) is an error naming both
files, found before anything is written. Appends go through records/io.py's `append_record` (validated, atomic,
under the table's lock); a merged file is then removed, or with `keep` renamed to `<run_id>.yaml.merged` (which no
reader takes for a table: a kept copy must not count twice)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from sptbench.core.errors import SptbenchError
from sptbench.records.io import append_record, read_table, record_table_path
from sptbench.records.runfiles import run_files

MERGED_SUFFIX = ".merged"


@dataclass
class MergeReport:
    """What a merge did: records appended, records the tables already held, files removed or renamed (per table)."""

    added: int = 0
    already: int = 0
    removed: int = 0  # run files removed, or renamed `.merged` with `keep`
    tables: dict[str, int] = field(default_factory=dict)  # table -> records appended to it


def _one_record(path: Path) -> dict:
    records = read_table(path)
    if len(records) != 1:
        raise SptbenchError(f"{path}: a run file holds one record, found {len(records)}")
    return records[0]


def plan_merge(results_dir: str | Path) -> dict[Path, list[tuple[Path, dict]]]:
    """The run files under `results_dir` grouped by their table, each as (file, record), with every conflict
    refused: a run id that another file or the table holds with a different record."""
    by_table: dict[Path, list[tuple[Path, dict]]] = defaultdict(list)
    for path in run_files(results_dir):
        rec = _one_record(path)
        by_table[record_table_path(results_dir, rec)].append((path, rec))
    for table, items in by_table.items():
        held = {r["run_id"]: (table, r) for r in read_table(table)} if table.exists() else {}
        for path, rec in items:
            where, other = held.setdefault(rec["run_id"], (path, rec))
            if other != rec:
                raise SptbenchError(f"run id '{rec['run_id']}' is in {where} and in {path} with different contents; "
                                    "keep one of them (nothing was merged)")
    return by_table


def merge_runs(results_dir: str | Path, *, keep: bool = False) -> MergeReport:
    """Fold every run file under `results_dir` into its table (see the module docstring)."""
    report = MergeReport()
    for table, items in sorted(plan_merge(results_dir).items()):
        ids = {r["run_id"] for r in read_table(table)} if table.exists() else set()
        for path, rec in items:
            if rec["run_id"] in ids:
                report.already += 1
            else:
                append_record(table, rec)
                ids.add(rec["run_id"])
                report.added += 1
                report.tables[str(table)] = report.tables.get(str(table), 0) + 1
            if keep:
                path.replace(path.with_name(path.name + MERGED_SUFFIX))
            else:
                path.unlink(missing_ok=True)
            report.removed += 1
    return report
