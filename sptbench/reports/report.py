"""The data of the HTML report (`sptbench report`, rendered by `reports/report_html.py`). Records in, plain data out.

The report has one section per results collection, backbone and regime (data setting and head): a collection is
where the records came from (`results/tuned` for `results/tuned/v1/...`; a table file outside a `v1/` tree is its
own collection), since different collections are different experiments (a hyper-parameter grid, default configs, a
regression reference) that dev selection must not mix. Each section holds what `sptbench table --select-by-dev`,
`sptbench compare --select-by-dev`, `plot gates --by task` and `plot layers` compute from the same records (their own
functions, called here), plus the run ids behind every number, and the records themselves (compacted) for the
record view. Nothing here reads a model or a data set.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sptbench.core.errors import SptbenchError, unknown_choice
from sptbench.records.io import read_table, table_files
from sptbench.records.keys import latest_per_key, regime_of
from sptbench.records.schema import TABLE_DIR
from sptbench.reports.compare import Side, compare
from sptbench.reports.plots import _searches, chosen_layer_counts, gate_grid, layer_curves
from sptbench.reports.selection import dev_selection, dev_ties
from sptbench.reports.stats import holm
from sptbench.reports.tables import _method_label, build_table, cell_metric

LAYER_METHOD = "lpt"  # the method whose layer grid draws the layer curves (as `sptbench plot layers`)
CSV_COLUMNS = ["collection", "backbone", "setting", "head", "method", "task", "mean", "std", "n", "trainable",
               "trainable_with_head", "trainable_pct", "train_samples_per_s", "peak_memory_mb"]


@dataclass
class Loaded:
    """The records of the given paths, each with its collection and table file."""

    records: list[dict] = field(default_factory=list)
    collection: dict[int, str] = field(default_factory=dict)  # id(record) -> collection
    source: dict[int, str] = field(default_factory=dict)  # id(record) -> table file
    full: dict[int, dict] = field(default_factory=dict)  # id(record) -> the record as read (`records` are `light`)


def collection_of(table: Path, given: Path) -> str:
    """The collection of a table file found under the path `given`: the folder above its `v1/<backbone>/` tree
    (`results/tuned` for `results/tuned/v1/minilm-l6/16shot.yaml`), else the file itself without its suffix."""
    parts = table.parts
    if TABLE_DIR in parts[:-1]:
        return str(Path(*parts[: len(parts) - 1 - parts[::-1].index(TABLE_DIR)]) or given)
    return str(table.with_suffix(""))


def load(paths: Iterable[str | Path]) -> Loaded:
    """Read every table under `paths` (files or folders), remembering where each record came from."""
    out = Loaded()
    for given in map(Path, paths):
        for table in table_files([given]):
            for full in read_table(table):
                rec = light(full)
                out.records.append(rec)
                out.full[id(rec)] = full
                out.collection[id(rec)] = collection_of(table, given)
                out.source[id(rec)] = str(table)
    if not out.records:
        raise SptbenchError("no records in the given paths")
    return out


def _per_step(value) -> bool:
    """A long list of mappings: a per-step log (`outcome.history`, a search trajectory)."""
    return isinstance(value, list) and len(value) > 3 and all(isinstance(v, dict) for v in value)


def light(rec: dict) -> dict:
    """The record without its per-step logs, which no table, comparison or plot here reads: validating them is
    most of the time `compare` and `select_by_dev` take (each validates what it is given)."""
    out = dict(rec)
    if isinstance(rec.get("outcome"), dict):
        out["outcome"] = {k: v for k, v in rec["outcome"].items() if not _per_step(v)}
    if isinstance(rec.get("extra"), dict):
        out["extra"] = {k: v for k, v in rec["extra"].items() if not _per_step(v)}
    return out


def restrict(loaded: Loaded, tasks: Sequence[str] | None, methods: Sequence[str] | None) -> Loaded:
    """Only the records of these tasks and methods (a name no record has is an error listing those they have)."""
    for names, kind, name_of in ((tasks, "task", lambda r: r["task"]["name"]),
                                 (methods, "method", lambda r: r["method"]["name"])):
        if names is None:
            continue
        present = {name_of(r) for r in loaded.records}
        for name in names:
            if name not in present:
                raise unknown_choice(f"{kind} in these records", name, present)
        loaded.records = [r for r in loaded.records if name_of(r) in names]
    return loaded


def _tested_ok(records: Iterable[dict]) -> list[dict]:
    """The latest ok record of each key that has a test score (untested grid points of the test-once protocol left
    out), as tables count them."""
    ok = latest_per_key([r for r in records if r.get("status") == "ok"])[0]
    return [r for r in ok if (r.get("selection") or {}).get("tested") is not False and cell_metric(r) is not None]


# ---------------------------------------------------------------------------------------------------- one section


def _table(records: list[dict]) -> tuple[dict, list[dict]]:
    """The section's dev-selected comparison table, as `sptbench table --select-by-dev` builds it, with the run ids
    behind every cell and row; and the records it counts."""
    winners, sizes = dev_selection(records)
    table = build_table(winners, selected=True, grid_sizes=sizes, ties=dev_ties(records))
    counted = _tested_ok(winners)
    runs: dict[tuple[str, str], list[str]] = {}
    by_row: dict[str, list[dict]] = {}
    for rec in sorted(counted, key=lambda r: (r["task"]["name"], r["protocol"]["seed"])):
        label = _method_label(rec)
        runs.setdefault((label, rec["task"]["name"]), []).append(rec["run_id"])
        by_row.setdefault(label, []).append(rec)
    cells = {row: {task: {"mean": c.mean, "std": c.std, "n": c.n_seeds, "mixed": c.mixed,
                          "runs": runs.get((row, task), [])}
                   for (r, task), c in table.cells.items() if r == row} for row in table.rows}
    rows = []
    for label in table.rows:
        recs = by_row.get(label, [])
        memory = [r["throughput"]["peak_memory_mb"] for r in recs if r["throughput"]["peak_memory_mb"] is not None]
        base = max(table.backbone_params[label])
        rows.append({
            "label": label,
            "method": recs[0]["method"]["name"] if recs else label.split(" [")[0],
            "trainable": max(table.trainable[label]),
            "trainable_with_head": max((r["params"]["trainable_with_head"] for r in recs), default=0),
            "trainable_pct": 100.0 * max(table.trainable[label]) / base if base else None,
            "throughput": table.throughput.get(label),
            "peak_memory_mb": statistics.mean(memory) if memory else None,
            "runs": [r["run_id"] for r in recs],
        })
    data = {"tasks": table.tasks, "rows": rows, "cells": cells, "expected_seeds": table.expected_seeds,
            "notes": table.notes}
    return data, counted


def default_pairs(records: list[dict], rows: list[dict]) -> list[tuple[Side, Side]]:
    """The comparisons a section shows when no family is given: each method with learned gates (records carrying
    `extra.alpha`: the layer-selection methods) against every other method, as the README's families do; where
    no method has gates, every pair of methods in table order."""
    methods = list(dict.fromkeys(row["method"] for row in rows))
    gated = [m for m in methods if any(r["method"]["name"] == m and (r.get("extra") or {}).get("alpha")
                                       for r in records)]
    if not gated:
        return [(Side(a), Side(b)) for i, a in enumerate(methods) for b in methods[i + 1:]]
    pairs = [(Side(g), Side(m)) for g in gated for m in methods if m not in gated]
    return pairs + [(Side(b), Side(a)) for i, a in enumerate(gated) for b in gated[i + 1:]]


def _stats(s) -> dict:
    return {"n": s.n, "mean": s.mean, "low": s.low, "high": s.high, "p": s.p_sign_flip, "wins": s.wins,
            "ties": s.ties, "losses": s.losses, "p_wilcoxon": s.p_wilcoxon, "sd": s.sd}


def _comparisons(records: list[dict], rows: list[dict], pairs: list[tuple[Side, Side]] | None) -> dict:
    """`sptbench compare --select-by-dev` for each pair whose two methods the section has, Holm-adjusted across
    them; pairs the records cannot make are named with the reason."""
    methods = {row["method"] for row in rows}
    out, skipped = [], []
    for a, b in pairs if pairs is not None else default_pairs(records, rows):
        if a.method not in methods or b.method not in methods:
            continue
        mine = [r for r in records if r["method"]["name"] in (a.method, b.method)]  # compare validates what it gets
        try:
            comp = compare(mine, a, b, select=True)
        except SptbenchError as err:
            skipped.append(f"{a.label} - {b.label}: {err}")
            continue
        out.append({"a": comp.a, "b": comp.b, "method_a": a.method, "method_b": b.method,
                    "overall": _stats(comp.overall),
                    "per_task": {t: _stats(s) for t, s in comp.per_task.items()},
                    "notes": comp.partial + comp.ties + ([f"cells only one side has (left out): {len(comp.missing)}"]
                                                         if comp.missing else [])})
    for comp, p in zip(out, holm([c["overall"]["p"] for c in out]), strict=True):
        comp["p_holm"] = p
    return {"pairs": out, "skipped": skipped}


def _gates(records: list[dict]) -> dict | None:
    """`plot gates --by task`: mean α per layer over seeds per task and method, how often each layer was chosen,
    and the runs of each row; None when no record has learned gates. Malformed gate fields (`extra` is free-form)
    leave the gates out, saying why (`problem`), not the section."""
    if not any((r.get("extra") or {}).get("alpha") for r in records if r.get("status") == "ok"):
        return None
    try:
        labels, alphas, chosen, counts = gate_grid(records, by="task")
    except SptbenchError as err:
        return {"rows": [], "layers": 0, "problem": str(err)}
    runs: dict[tuple[str, str], list[str]] = {}
    for rec in _searches(records):
        runs.setdefault((rec["task"]["name"], rec["method"]["name"]), []).append(rec["run_id"])
    rows = []
    for label, alpha, picks, n in zip(labels, alphas, chosen, counts, strict=True):
        task, method = label.rsplit(" (n=", 1)[0].split(" · ", 1)
        rows.append({"task": task, "method": method, "alpha": [None if a != a else a for a in alpha],
                     "chosen": picks, "count": n, "runs": runs.get((task, method), [])})
    return {"rows": rows, "layers": len(alphas[0])}


def _layers(records: list[dict]) -> dict | None:
    """`plot layers`: LPT's test score per prompt layer (mean ± std over seeds) per task, the layers SPT and
    SPT-DARTS chose, and the runs behind each point; None without an LPT layer grid."""
    curves = layer_curves(records, LAYER_METHOD)
    if not curves:
        return None
    runs: dict[tuple[str, int], list[str]] = {}
    for rec in _tested_ok(r for r in records if r["method"]["name"] == LAYER_METHOD):
        layer = (rec["method"]["config"] or {}).get("layer")
        if isinstance(layer, int):
            runs.setdefault((rec["task"]["name"], layer), []).append(rec["run_id"])
    try:
        chosen = chosen_layer_counts(records)
    except SptbenchError:  # malformed gate fields: said under the gates
        chosen = {}
    tasks = {}
    for task, by_layer in curves.items():
        tasks[task] = {"layers": list(by_layer), "mean": [statistics.mean(v) for v in by_layer.values()],
                       "std": [statistics.stdev(v) if len(v) > 1 else 0.0 for v in by_layer.values()],
                       "n": [len(v) for v in by_layer.values()],
                       "runs": [runs.get((task, layer), []) for layer in by_layer],
                       "chosen": {m: {str(k): n for k, n in c.items()} for m, c in chosen.get(task, {}).items()}}
    return {"method": LAYER_METHOD, "tasks": tasks}


def build_section(records: list[dict], pairs: list[tuple[Side, Side]] | None = None) -> tuple[dict, list[dict]]:
    """One section's data (the records share collection, backbone and regime) and the records it refers to."""
    table, counted = _table(records)
    gates, layers = _gates(records), _layers(records)
    section = {**table, "comparisons": _comparisons(records, table["rows"], pairs), "gates": gates,
               "layers": layers}
    ids = {run for row in table["rows"] for run in row["runs"]}
    ids |= {run for row in (gates or {}).get("rows", []) for run in row["runs"]}
    ids |= {run for t in (layers or {}).get("tasks", {}).values() for runs in t["runs"] for run in runs}
    return section, [r for r in records if r["run_id"] in ids]


# ---------------------------------------------------------------------------------------------------- the report


def compact_record(rec: dict, source: str, collection: str) -> dict:
    """A record as the record view shows it: everything but the long per-step lists (`outcome.history`, search
    trajectories: lists of mappings), which are counted instead (`sptbench show RUN_ID` prints them)."""
    def trim(value):
        if isinstance(value, dict):
            return {k: trim(v) for k, v in value.items()}
        if _per_step(value):
            return f"[{len(value)} entries: sptbench show {rec['run_id']}]"
        if isinstance(value, float) and value != value:
            return None
        return [trim(v) for v in value] if isinstance(value, list) else value

    return {**trim(rec), "_source": source, "_collection": collection}


def build_report(loaded: Loaded, pairs: list[tuple[Side, Side]] | None = None) -> dict:
    """The whole report's data: its sections (collection, backbone, regime), the tasks and methods they hold, and
    the records any number refers to. A group of records without one successful tested run is named in `skipped`."""
    groups: dict[tuple, list[dict]] = {}
    for rec in loaded.records:
        groups.setdefault((loaded.collection[id(rec)], rec["backbone"]["id"], *regime_of(rec)), []).append(rec)
    sizes = Counter(loaded.collection[id(r)] for r in loaded.records)  # the largest collections first
    order = {c: i for i, c in enumerate(sorted(sizes, key=lambda c: (-sizes[c], c)))}
    sections, referenced, skipped = [], {}, []
    for key in sorted(groups, key=lambda k: (order[k[0]], k[1], _setting_order(k[2]), k[3])):
        collection, backbone, setting, head = key
        try:
            section, used = build_section(groups[key], pairs)
        except SptbenchError as err:
            skipped.append(f"{collection}: {backbone} {setting} ({head} head): {err}")
            continue
        section.update(id=f"s{len(sections)}", collection=collection, backbone=backbone, setting=setting, head=head)
        sections.append(section)
        for rec in used:
            referenced[rec["run_id"]] = compact_record(loaded.full[id(rec)], loaded.source[id(rec)], collection)
    if not sections:
        raise SptbenchError("no successful tested runs in the given paths: " + "; ".join(skipped))
    return {
        "sections": sections,
        "collections": list(order),
        "tasks": sorted({t for s in sections for t in s["tasks"]}),
        "methods": sorted({row["method"] for s in sections for row in s["rows"]}),
        "records": referenced,
        "csv_columns": CSV_COLUMNS,
        "n_records": len(loaded.records),
        "skipped": skipped,
    }


def _setting_order(setting: str) -> tuple[int, int]:
    """Few-shot settings first (by K), then training-set sizes (by N), then full data."""
    if setting.endswith("shot"):
        return 0, int(setting[:-4])
    return (1, int(setting[1:])) if setting.startswith("n") else (2, 0)


def report_csv(report: dict) -> str:
    """The report's tables in long form: one line per section, method and task (CSV_COLUMNS)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for s in report["sections"]:
        for row in s["rows"]:
            for task in s["tasks"]:
                cell = s["cells"][row["label"]].get(task)
                if cell is None:
                    continue
                writer.writerow([s["collection"], s["backbone"], s["setting"], s["head"], row["label"], task,
                                 round(cell["mean"], 4), round(cell["std"], 4), cell["n"], row["trainable"],
                                 row["trainable_with_head"], _round(row["trainable_pct"], 6),
                                 _round(row["throughput"], 3), _round(row["peak_memory_mb"], 1)])
    return out.getvalue()


def _round(x: float | None, digits: int) -> float | str:
    return "" if x is None else round(x, digits)
