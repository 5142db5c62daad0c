"""Results tables from records: methods x tasks, mean ± std over seeds, parameter counts and throughput.

Tables read records only (never models or data). Every choice that could hide something is said in a note under
the table: failed runs, duplicate runs replaced by later ones, task versions that differ within a column, cells that
mix configurations, records without a usable test metric.
"""

from __future__ import annotations

import csv
import io
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tabulate import tabulate

from sptbench.core.errors import SptbenchError, unknown_choice
from sptbench.records.io import safe_backbone_name
from sptbench.records.keys import (
    canonical_json,
    head_of,
    key_hash,
    latest_per_key,
    record_key,
    seed_group,
    setting_name,
)
from sptbench.records.schema import require_valid
from sptbench.reports.selection import group_of, partial_grid_notes, selection_group

FORMATS = ("md", "latex", "csv")
MISSING = "–"
VERSION_MARK = "†"  # on a column header: the column mixes task versions
MIXED_MARK = "‡"  # on a cell: the cell mixes configurations beyond the seed


@dataclass
class Cell:
    """The test scores (in percent) of one method on one task, one value per seed."""

    values: list[float] = field(default_factory=list)
    mixed: bool = False
    # distinct (seed, split source) pairs (a mixed cell can hold two runs of one seed; a seed's LM-BFF split and its
    # sampled split are two)
    seeds: set = field(default_factory=set)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)

    @property
    def mean(self) -> float:
        return statistics.mean(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof=1); 0 for a single seed."""
        return statistics.stdev(self.values) if self.n > 1 else 0.0


@dataclass
class TableData:
    """Everything a rendered table shows, before formatting."""

    backbone: str
    setting: str
    tasks: list[str]
    rows: list[str]
    cells: dict[tuple[str, str], Cell]
    avg: dict[str, float]
    best: dict[str, set[str]]
    trainable: dict[str, list[int]]
    backbone_params: dict[str, list[int]]
    throughput: dict[str, float]
    expected_seeds: int
    version_mismatch: set[str]
    n_failed: int
    notes: list[str]


# ---------------------------------------------------------------------------------------------------- metric rule


def cell_metric(rec: dict) -> float | None:
    """The test number of a record: the selection metric by name, else test `score` (its value), else accuracy."""
    metrics = rec.get("metrics") or {}
    test = metrics.get("test") or {}
    for name in (metrics.get("selection_metric"), "score", "accuracy"):
        value = test.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _setting(rec: dict) -> str:
    return setting_name(rec["protocol"]["shots"], rec["protocol"]["train_size"])


# ---------------------------------------------------------------------------------------------------- selection


def _filter(records: Iterable[dict], backbone: str | None, setting: str | None) -> list[dict]:
    """Records of the asked backbone (id or its directory name) and setting."""
    out = []
    for rec in records:
        bid = rec["backbone"]["id"]
        if backbone is not None and backbone not in (bid, safe_backbone_name(bid)):
            continue
        if setting is not None and _setting(rec) != setting:
            continue
        out.append(rec)
    return out


def _single(records: list[dict], what: str, value_of, flag: str) -> str:
    """The one value of `what` among the records; several -> an error asking the user to pick one."""
    values = sorted({value_of(r) for r in records})
    if len(values) > 1:
        raise SptbenchError(f"records span several {what}s ({', '.join(values)}); pick one with {flag}")
    return values[0]


def _restrict(records: list[dict], names: Sequence[str] | None, kind: str, name_of) -> list[dict]:
    """Records whose task/method is among `names` (unknown names are an error, not an empty column)."""
    if names is None:
        return records
    available = {name_of(r) for r in records}
    for name in names:
        if name not in available:
            raise unknown_choice(kind, name, available)
    return [r for r in records if name_of(r) in names]


def _method_label(rec: dict) -> str:
    """The method's name, marked `[prompt]` when the run used the prompt head (a different experiment)."""
    kind = head_of(rec).get("kind", "linear")
    return rec["method"]["name"] if kind == "linear" else f"{rec['method']['name']} [{kind}]"


def _row_labels(records: list[dict], selected: bool = False) -> tuple[dict[int, str], list[str]]:
    """Row label per record: the method name (`name [prompt]` with the prompt head), plus a config hash when one
    method appears with several configs, unless `selected` (each cell's configs were chosen on dev: one row per
    method, a note says which configs won)."""
    if selected:
        return {id(rec): _method_label(rec) for rec in records}, _selection_notes(records)
    configs: dict[str, set[str]] = defaultdict(set)
    poolings: dict[str, set[str]] = defaultdict(set)
    for rec in records:
        configs[_method_label(rec)].add(canonical_json(rec["method"]["config"]))
        poolings[_method_label(rec)].add(rec["backbone"]["pooling"])
    labels, notes = {}, []
    for rec in records:
        name, cfg = _method_label(rec), canonical_json(rec["method"]["config"])
        label = name if len(configs[name]) == 1 else f"{name} [{key_hash((cfg,))}]"
        # runs of one method with several poolings (`--pooling`) are different experiments: one row each
        labels[id(rec)] = label if len(poolings[name]) == 1 else f"{label} ({rec['backbone']['pooling']} pooling)"
    for name, cfgs in sorted(configs.items()):
        if len(cfgs) > 1:
            tags = ", ".join(f"[{key_hash((c,))}] {c}" for c in sorted(cfgs))
            notes.append(f"{name} ran with {len(cfgs)} method configs, shown as separate rows: {tags}")
    return labels, notes


def _selection_notes(records: list[dict]) -> list[str]:
    """Per method whose dev-selected runs differ in method or training options: how often each value won."""
    notes = []
    by_method: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        by_method[_method_label(rec)].append(rec)
    for name, recs in sorted(by_method.items()):
        won = []
        for options in ([rec["method"]["config"] or {} for rec in recs], [rec["training"] for rec in recs]):
            for key in sorted({k for o in options for k in o}):
                values = Counter(canonical_json(o.get(key)) for o in options)
                if len(values) > 1:
                    counts = ", ".join(f"{v} x{n}" for v, n in sorted(values.items(), key=lambda kv: (-kv[1], kv[0])))
                    won.append(f"{key} {counts}")
        if won:
            notes.append(f"{name} ({len(recs)} runs): {'; '.join(won)}")
    head = "--select-by-dev: each run is its (method, task, seed)'s configuration best on dev"
    return [head + ("; where the winners differ, how often each value won:" if notes else ".")] + notes


def _tie_notes(winners: list[dict], ties: dict[tuple, list[dict]]) -> list[str]:
    """One line: per method, how many of its dev selections were ties on dev that grid order decided."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for rec in winners:
        counts[_method_label(rec)][1] += 1
        counts[_method_label(rec)][0] += group_of(rec) in ties
    tied = [f"{name} {k} of {n}" for name, (k, n) in sorted(counts.items()) if k]
    if not tied:
        return []
    return ["dev ties (equal dev score, and equal dev loss where recorded) decided by grid order, the first "
            "configuration winning: " + ", ".join(tied) + " selections (`sptbench compare` shows what the last "
            "tied configuration would change)"]


# ---------------------------------------------------------------------------------------------------- build


def build_table(
    records: Iterable[dict],
    *,
    backbone: str | None = None,
    shots: int | None = None,
    train_size: int | None = None,
    tasks: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    expected_seeds: int | None = None,
    setting: str | None = None,
    selected: bool = False,
    grid_sizes: dict[tuple, tuple[int, int]] | None = None,
    ties: dict[tuple, list[dict]] | None = None,
) -> TableData:
    """Aggregate records of one backbone and one data regime into a methods x tasks table (see docs/records.md).
    `selected`: the records are `selection.select_by_dev`'s (one row per method whatever config won);
    `grid_sizes`: `selection.grid_sizes` of its input, for a note on grids not fully recorded yet; `ties`:
    `selection.dev_ties` of its input, for a note on selections that dev ties left to grid order."""
    if shots is not None or train_size is not None:
        setting = setting_name(shots, train_size)
    records = require_valid(records)
    if not records:
        raise SptbenchError("no records in the given paths")
    chosen = _filter(records, backbone, setting)
    if not chosen:
        held = sorted({f"{r['backbone']['id']} {_setting(r)}" for r in records})
        raise SptbenchError(f"no records match backbone {backbone or 'any'}, setting {setting or 'any'}; the records "
                            f"hold: {', '.join(held)}")
    the_backbone = _single(chosen, "backbone", lambda r: r["backbone"]["id"], "--backbone")
    the_setting = _single(chosen, "setting", _setting, "--shots, --train-size or --setting")
    chosen = _restrict(chosen, tasks, "task", lambda r: r["task"]["name"])
    chosen = _restrict(chosen, methods, "method", lambda r: r["method"]["name"])
    failed = [r for r in chosen if r["status"] != "ok"]
    ok, replaced = latest_per_key([r for r in chosen if r["status"] == "ok"])
    # grid points of the test-once protocol that lost on dev were never tested (sptbench/reports/selection.py)
    untested = [r for r in ok if (r.get("selection") or {}).get("tested") is False]
    ok = [r for r in ok if (r.get("selection") or {}).get("tested") is not False]
    if not ok:
        raise SptbenchError(f"no successful tested runs match ({len(failed)} failed, {len(untested)} untested)")
    labels, notes = _row_labels(ok, selected)
    if grid_sizes:
        notes += partial_grid_notes(ok, grid_sizes, _method_label)
    if ties:
        notes += _tie_notes(ok, ties)
    table = _aggregate(ok, labels, the_backbone, the_setting, tasks, methods)
    table.n_failed = len(failed)
    if expected_seeds is not None and (not isinstance(expected_seeds, int) or expected_seeds < 1):
        raise SptbenchError(f"expected_seeds must be a positive integer, got {expected_seeds!r}")
    table.expected_seeds = expected_seeds or max((c.n_seeds for c in table.cells.values()), default=0)
    _finish(table)
    table.notes = _notes(table, ok, failed, replaced, notes)
    tested_groups = {selection_group(r) for r in ok}
    lost = sum(selection_group(r) in tested_groups for r in untested)
    if lost:
        table.notes.append(f"{lost} grid point(s) not tested (lost on dev under the test-once protocol)")
    if len(untested) > lost:
        table.notes.append(f"{len(untested) - lost} run(s) not counted: their selection group is not complete yet "
                           "(awaiting the test of its dev-selected configuration)")
    return table


def _aggregate(
    ok: list[dict],
    labels: dict[int, str],
    backbone: str,
    setting: str,
    tasks: Sequence[str] | None,
    methods: Sequence[str] | None,
) -> TableData:
    """Collect per-seed scores, parameter counts and throughput per row and column."""
    cells: dict[tuple[str, str], Cell] = defaultdict(Cell)
    groups: dict[tuple[str, str], set[tuple]] = defaultdict(set)
    versions: dict[str, set[int]] = defaultdict(set)
    trainable, bb_params, speed = defaultdict(list), defaultdict(list), defaultdict(list)
    for rec in ok:
        row, task = labels[id(rec)], rec["task"]["name"]
        value = cell_metric(rec)
        if value is not None:
            cells[row, task].values.append(100.0 * value)
            cells[row, task].seeds.add((rec["protocol"]["seed"], rec["protocol"]["split_source"]))
            groups[row, task].add(seed_group(record_key(rec)))
            versions[task].add(rec["task"]["version"])
        trainable[row].append(rec["params"]["trainable"])
        bb_params[row].append(rec["params"]["backbone"])
        if rec["throughput"]["train_samples_per_s"] is not None:  # null when not measured
            speed[row].append(rec["throughput"]["train_samples_per_s"])
    for where, keys in groups.items():
        cells[where].mixed = len(keys) > 1
    method_order = {m: i for i, m in enumerate(methods or [])}
    rows = sorted(set(labels.values()), key=lambda r: (method_order.get(re.split(r" [\[(]", r)[0], -1), r))
    return TableData(
        backbone=backbone,
        setting=setting,
        tasks=list(tasks) if tasks else sorted({t for _, t in cells}),
        rows=rows,
        cells=dict(cells),
        avg={},
        best={},
        trainable=dict(trainable),
        backbone_params=dict(bb_params),
        throughput={r: statistics.mean(v) for r, v in speed.items() if v},
        expected_seeds=0,
        version_mismatch={t for t, v in versions.items() if len(v) > 1},
        n_failed=0,
        notes=[],
    )


def _finish(table: TableData) -> None:
    """Row averages (complete rows only) and the best row(s) per column, compared at the shown precision."""
    for row in table.rows:
        means = [table.cells[row, t].mean for t in table.tasks if (row, t) in table.cells]
        if len(means) == len(table.tasks):
            table.avg[row] = statistics.mean(means)
    columns = {t: {r: table.cells[r, t].mean for r in table.rows if (r, t) in table.cells} for t in table.tasks}
    columns["avg"] = table.avg
    for col, means in columns.items():
        if means:
            top = max(round(m, 1) for m in means.values())
            table.best[col] = {r for r, m in means.items() if round(m, 1) == top}


def _short_list(items: list[str], limit: int = 5) -> str:
    """A comma list cut at `limit` items."""
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _notes(table: TableData, ok: list[dict], failed: list[dict], replaced: list[str], extra: list[str]) -> list[str]:
    """The lines under the table that say what was counted and what was not."""
    notes = [
        f"{table.backbone}, {table.setting}: test score in % (the selection metric), "
        f"mean ± sample std over seeds; (n=k) marks cells with fewer than {table.expected_seeds} seeds; "
        f"best mean per column in bold."
    ]
    if failed:
        several = len({r["protocol"]["split_source"] for r in [*ok, *failed]}) > 1  # then say which split
        ids = [f"{r['method']['name']}/{r['task']['name']} seed={r['protocol']['seed']}"
               + (f" ({r['protocol']['split_source']})" if several else "") for r in failed]
        notes.append(f"{len(failed)} failed run(s) not counted: {_short_list(ids)}.")
    if replaced:
        notes.append(
            f"{len(replaced)} duplicate run(s) replaced by a later run with the same key: {_short_list(replaced)}."
        )
    for task in sorted(table.version_mismatch):
        vers = sorted({r["task"]["version"] for r in ok if r["task"]["name"] == task})
        notes.append(f"{VERSION_MARK} {task}: the column mixes task versions {vers}; its numbers may not compare.")
    if any(c.mixed for c in table.cells.values()):
        notes.append(f"{MIXED_MARK} the cell mixes runs that differ in more than the seed (training config, data).")
    no_metric = [r["run_id"] for r in ok if cell_metric(r) is None]
    if no_metric:
        notes.append(f"{len(no_metric)} run(s) without a test metric: {_short_list(no_metric)}.")
    return notes + extra


# ---------------------------------------------------------------------------------------------------- render


def _fmt_count(n: int) -> str:
    """A parameter count to 3 significant digits: 5,120 / 0.0205M / 0.15M / 355M / 1.1B."""
    if n < 10_000:
        return f"{n:,}"
    return f"{n / 1e6:.3g}M" if n < 1e9 else f"{n / 1e9:.3g}B"


def _params_text(trainable: list[int], backbone: list[int]) -> str:
    """Trainable parameters (absolute and % of the backbone); a range when they differ across runs."""
    lo, hi, base = min(trainable), max(trainable), max(backbone)
    pct = (lambda n: f"{100.0 * n / base:.3g}%") if base else (lambda n: "?%")
    if lo == hi:
        return f"{_fmt_count(lo)} ({pct(lo)})"
    return f"{_fmt_count(lo)}–{_fmt_count(hi)} ({pct(lo)}–{pct(hi)})"


def _cell_text(table: TableData, row: str, task: str, bold: str) -> str:
    """One cell: mean ± std, `(n=k)` when short of seeds, ‡ when mixed; `bold` is a format with one {}."""
    cell = table.cells.get((row, task))
    if cell is None:
        return MISSING
    text = f"{cell.mean:.1f} ± {cell.std:.1f}"
    if row in table.best.get(task, ()):
        text = bold.format(text)
    if cell.n_seeds < table.expected_seeds:
        text += f" (n={cell.n_seeds})"
    return text + (f" {MIXED_MARK}" if cell.mixed else "")


def _grid(table: TableData, bold: str) -> tuple[list[str], list[list[str]]]:
    """Header and body rows as display text (before format-specific escaping of names)."""
    header = ["method"] + [t + (f" {VERSION_MARK}" if t in table.version_mismatch else "") for t in table.tasks]
    header += ["avg", "trainable params", "train samples/s"]
    body = []
    for row in table.rows:
        avg = MISSING
        if row in table.avg:
            avg = f"{table.avg[row]:.1f}"
            avg = bold.format(avg) if row in table.best.get("avg", ()) else avg
        cells = [_cell_text(table, row, t, bold) for t in table.tasks]
        params = _params_text(table.trainable[row], table.backbone_params[row])
        speed = f"{table.throughput[row]:.1f}" if row in table.throughput else MISSING
        body.append([row, *cells, avg, params, speed])
    return header, body


def _escape_md(text: str) -> str:
    return text.replace("|", "\\|")


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "†": r"$^\dagger$",
    "‡": r"$^\ddagger$",
    "–": "--",
}
_LATEX_RE = re.compile("|".join(re.escape(c) for c in _LATEX_SPECIAL))


def latex_escape(text: str) -> str:
    """Plain text as LaTeX: specials escaped, ±/†/‡/– as math or dashes."""
    return _LATEX_RE.sub(lambda m: _LATEX_SPECIAL[m.group()], text)


def _render_md(table: TableData) -> str:
    header, body = _grid(table, "**{}**")
    esc = [[_escape_md(c) for c in row] for row in body]
    text = tabulate(esc, headers=[_escape_md(h) for h in header], tablefmt="github", disable_numparse=True)
    return text + "\n\n" + "\n".join(f"- {n}" for n in table.notes) + "\n"


def _render_latex(table: TableData) -> str:
    marker = "\x00{}\x01"  # placeholders survive escaping, then become \textbf{...}
    header, body = _grid(table, marker)
    fix = lambda s: latex_escape(s).replace("\x00", r"\textbf{").replace("\x01", "}")
    align = ["left"] + ["right"] * (len(header) - 1)
    text = tabulate(
        [[fix(c) for c in row] for row in body],
        headers=[fix(h) for h in header],
        tablefmt="latex_raw",
        colalign=align,
        disable_numparse=True,
    )
    notes = "\n".join(f"{latex_escape(n)}\\par" for n in table.notes)
    return f"{text}\n\\par\\smallskip\n{{\\footnotesize\n{notes}\n}}\n"


def _render_csv(table: TableData) -> str:
    """Numbers only (mean, std and n per task, unrounded to 4 places); notes are not part of CSV."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = ["method"] + [f"{t}{s}" for t in table.tasks for s in ("", "_std", "_n")]
    writer.writerow(header + ["avg", "trainable", "trainable_pct", "train_samples_per_s"])
    for row in table.rows:
        line: list[object] = [row]
        for t in table.tasks:
            cell = table.cells.get((row, t))
            line += [round(cell.mean, 4), round(cell.std, 4), cell.n] if cell else ["", "", 0]
        trainable, base = max(table.trainable[row]), max(table.backbone_params[row])
        pct = round(100.0 * trainable / base, 6) if base else ""
        avg = round(table.avg[row], 4) if row in table.avg else ""
        speed = round(table.throughput[row], 3) if row in table.throughput else ""
        writer.writerow(line + [avg, trainable, pct, speed])
    return out.getvalue()


def render(table: TableData, fmt: str = "md") -> str:
    """The table as Markdown (pipe table + notes), LaTeX (tabular + footnotesize notes) or CSV (numbers only)."""
    renderers = {"md": _render_md, "latex": _render_latex, "csv": _render_csv}
    if fmt not in renderers:
        raise unknown_choice("table format", fmt, renderers)
    return renderers[fmt](table)
