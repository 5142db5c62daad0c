"""Paired comparison of two methods over the (task, seed) cells both have: mean difference with a 95 % bootstrap
interval, wins / ties / losses and the Wilcoxon signed-rank p-value, per task and overall (`sptbench compare`).

A side is a method name, optionally narrowed by its config (`lpt:layer=3`). Where a side still has several
configurations in one cell (a learning-rate grid, LPT over layers), `select_by_dev` keeps the one best on dev, per
cell; without it that is an error, never a silent pick. Test scores are compared; dev never decides a number here
beyond that selection.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from sptbench.core.errors import SptbenchError, unknown_choice
from sptbench.records.keys import canonical_json, latest_per_key, record_key, setting_name, without
from sptbench.records.schema import require_valid
from sptbench.reports.selection import partial_grid_notes
from sptbench.reports.tables import cell_metric

BOOTSTRAP_RESAMPLES = 10_000


@dataclass(frozen=True)
class Side:
    """One side of a comparison: a method and config values it must have."""

    method: str
    where: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        return self.method + ("" if not self.where else ":" + ",".join(f"{k}={v}" for k, v in self.where))

    def matches(self, rec: dict) -> bool:
        if rec["method"]["name"] != self.method:
            return False
        config = rec["method"]["config"] or {}
        return all(k in config and _text(config[k]) == v for k, v in self.where)


def _text(value) -> str:
    return canonical_json(value).strip('"') if not isinstance(value, str) else value


def parse_side(text: str) -> Side:
    """`method` or `method:key=value,key=value` (values compared as their YAML/JSON text: 3, 0.5, true, [1,2])."""
    method, colon, rest = text.partition(":")
    where = []
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise SptbenchError(f"'{text}': a config filter is key=value, got '{part}'")
        where.append((key.strip(), value.strip()))
    if not method:
        raise SptbenchError(f"'{text}': no method name")
    if colon and not where:
        raise SptbenchError(f"'{text}': no config filter after ':' (e.g. {method}:layer=3)")
    return Side(method, tuple(where))


def check_side(records: list[dict], side: Side) -> None:
    """The side's method, config keys and values occur in `records`; else one line listing what does."""
    recorded = [r for r in records if r["method"]["name"] == side.method]
    if not recorded:
        raise unknown_choice("method in these records", side.method, {r["method"]["name"] for r in records})
    for key, value in side.where:
        configs = [r["method"]["config"] or {} for r in recorded]
        values = {_text(c[key]) for c in configs if key in c}
        if not values:
            raise unknown_choice(f"config key of {side.method}", key, {k for c in configs for k in c})
        if value not in values:
            raise SptbenchError(f"no {side.method} record has {key}={value}; recorded: {', '.join(sorted(values))}")


@dataclass
class Stats:
    """Paired differences a - b in points (percent of the test metric)."""

    n: int
    mean: float | None
    low: float | None
    high: float | None
    wins: int
    ties: int
    losses: int
    p_wilcoxon: float | None
    diffs: list[float] = field(default_factory=list)


def paired_stats(diffs: list[float], seed: int = 0) -> Stats:
    """Mean, 95 % percentile-bootstrap interval of the mean (scipy.stats.bootstrap, seeded), win counts and the
    two-sided Wilcoxon signed-rank p-value (None where it is undefined: fewer than 2 pairs, or all differences 0)."""
    import numpy as np
    from scipy import stats

    n = len(diffs)
    wins = sum(d > 0 for d in diffs)
    ties = sum(d == 0 for d in diffs)
    if n == 0:
        return Stats(0, None, None, None, 0, 0, 0, None)
    mean = float(np.mean(diffs))
    low = high = mean if n == 1 else None
    if n > 1:
        if max(diffs) == min(diffs):
            low = high = mean
        else:
            res = stats.bootstrap((np.asarray(diffs),), np.mean, confidence_level=0.95, n_resamples=BOOTSTRAP_RESAMPLES,
                                  method="percentile", rng=np.random.default_rng(seed))
            low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    p = None
    if n > 1 and any(d != 0 for d in diffs):
        p = float(stats.wilcoxon(diffs, zero_method="wilcox").pvalue)
    return Stats(n, mean, low, high, wins, ties, n - wins - ties, p, list(diffs))


@dataclass
class Comparison:
    a: str
    b: str
    per_task: dict[str, Stats]
    overall: Stats
    missing: list[str]  # cells only one side has
    partial: list[str] = field(default_factory=list)  # sides whose dev selection ran over grids not fully recorded


def _cells(records: list[dict], side: Side, select: bool) -> tuple[dict[tuple, dict], dict[tuple, tuple[int, int]]]:
    """(task, setting, backbone, seed) -> the side's record there (latest of a configuration; dev-best of several
    configurations when `select`), and with `select` `selection.grid_sizes` of the side's records."""
    mine = [r for r in records if r.get("status") == "ok" and side.matches(r)]
    ok = [r for r in mine if (r.get("selection") or {}).get("tested") is not False]  # lost on dev: no test
    sizes: dict[tuple, tuple[int, int]] = {}
    if select:
        from sptbench.reports.selection import grid_sizes, select_by_dev

        ok = [r for r in select_by_dev(ok) if r.get("status") == "ok"]
        sizes = grid_sizes(mine, declared=not side.where)  # a config filter narrows the grid on purpose
    cells: dict[tuple, list[dict]] = {}
    for rec in latest_per_key(ok)[0]:
        p = rec["protocol"]
        cell = (rec["task"]["name"], setting_name(p["shots"], p["train_size"]), rec["backbone"]["id"], p["seed"])
        cells.setdefault(cell, []).append(rec)
    out = {}
    for cell, recs in cells.items():
        if len({without(record_key(r), "data_fingerprint") for r in recs}) > 1:
            raise SptbenchError(
                f"{side.label} has {len(recs)} configurations for {cell[0]} {cell[1]} seed {cell[3]}: narrow it "
                f"(e.g. {side.method}:key=value) or pick the dev-best one with --select-by-dev"
            )
        out[cell] = recs[0]
    return out, sizes


def compare(records: Iterable[dict], a: Side, b: Side, *, tasks: list[str] | None = None,
            select: bool = False) -> Comparison:
    """Pair `a` and `b` over the cells both have (optionally only `tasks`)."""
    records = require_valid(records)
    if a == b:
        raise SptbenchError(f"compare needs two different sides, got '{a.label}' twice")
    for side in (a, b):
        check_side(records, side)
    present = {r["task"]["name"] for r in records}
    for task in tasks or []:
        if task not in present:
            raise unknown_choice("task in these records", task, present)
    (cells_a, sizes_a), (cells_b, sizes_b) = _cells(records, a, select), _cells(records, b, select)
    if tasks is not None:
        cells_a = {c: r for c, r in cells_a.items() if c[0] in tasks}
        cells_b = {c: r for c, r in cells_b.items() if c[0] in tasks}
    common = sorted(set(cells_a) & set(cells_b), key=lambda c: tuple(map(str, c)))
    if not common:
        raise SptbenchError(f"no (task, seed) cell has both {a.label} and {b.label}")
    diffs: dict[str, list[float]] = {}
    for cell in common:
        sa, sb = cell_metric(cells_a[cell]), cell_metric(cells_b[cell])
        if sa is None or sb is None or not (math.isfinite(sa) and math.isfinite(sb)):
            continue
        diffs.setdefault(cell[0], []).append(100 * (sa - sb))
    one_sided = sorted(set(cells_a) ^ set(cells_b), key=lambda c: tuple(map(str, c)))
    missing = [f"{c[0]} {c[1]} seed {c[3]}" for c in one_sided]
    per_task = {task: paired_stats(d) for task, d in sorted(diffs.items())}
    overall = paired_stats([d for task in sorted(diffs) for d in diffs[task]])
    partial = [note for side, cells, sizes in ((a, cells_a, sizes_a), (b, cells_b, sizes_b))
               for note in partial_grid_notes([cells[c] for c in common], sizes, lambda _, s=side: s.label)]
    return Comparison(a.label, b.label, per_task, overall, missing, partial)


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:+.{digits}f}"


STATS_HEADERS = ["pairs", "mean diff", "95% bootstrap CI", "W/T/L", "Wilcoxon p"]


def stats_cells(s: Stats) -> list[str]:
    """A row's cells under STATS_HEADERS."""
    interval = "-" if s.low is None else f"[{s.low:+.2f}, {s.high:+.2f}]"
    return [str(s.n), _fmt(s.mean), interval, f"{s.wins}/{s.ties}/{s.losses}",
            "-" if s.p_wilcoxon is None else f"{s.p_wilcoxon:.3g}"]


def render(comp: Comparison) -> str:
    """A Markdown table: one row per task and an overall row."""
    from tabulate import tabulate

    rows = [[name, *stats_cells(s)] for name, s in [*comp.per_task.items(), ("**all**", comp.overall)]]
    head = f"{comp.a} - {comp.b}: paired test-score differences in points (a positive mean favours {comp.a})\n\n"
    table = tabulate(rows, headers=["task", *STATS_HEADERS], tablefmt="github", disable_numparse=True)
    notes = "\n\n- interval: percentile bootstrap of the mean over the pairs (10,000 resamples, seeded); " \
            "Wilcoxon: two-sided signed-rank over the pairs (undefined for fewer than 2 non-zero differences)."
    notes += "".join(f"\n- {note}" for note in comp.partial)
    if comp.missing:
        notes += f"\n- cells only one side has (left out): {', '.join(comp.missing[:8])}" + \
                 (f" and {len(comp.missing) - 8} more" if len(comp.missing) > 8 else "")
    return head + table + notes + "\n"
