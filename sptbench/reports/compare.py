"""Paired comparison of two methods over the (task, seed) cells both have (`sptbench compare`): the task-blocked
mean difference with its t-interval, the sign-flip permutation p, wins / ties / losses, the Wilcoxon (Pratt) p, per
task and overall, with the design's power; several comparisons as a declared family with Holm-adjusted p-values.
A cell is a task, setting, backbone, seed and split source: a seed's LM-BFF split and its sampled split are two cells
(their labels name the split source where the cells compared have several).
The statistics are in `reports/stats.py` and docs/statistics.md.

A side is a method name, optionally narrowed by its config (`lpt:layer=3`). Where a side still has several
configurations in one cell (a learning-rate grid, LPT over layers), `select_by_dev` keeps the one best on dev, per
cell; without it that is an error, never a silent pick. Test scores are compared; dev never decides a number here
beyond that selection.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sptbench.core.errors import SptbenchError, unknown_choice
from sptbench.records.keys import canonical_json, latest_per_key, record_key, setting_name, without
from sptbench.records.schema import require_valid
from sptbench.reports.selection import partial_grid_notes
from sptbench.reports.stats import ALPHA, Blocked, blocked_stats, holm, mde, pairs_needed
from sptbench.reports.tables import cell_metric

MIN_PAIRS = 5  # below this many (task, seed) pairs the interval and p-values mean little: the output warns


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
class Comparison:
    a: str
    b: str
    per_task: dict[str, Blocked]
    overall: Blocked
    diffs: dict[str, list[float]]  # task -> paired differences in points, cell order
    missing: list[str]  # cells only one side has
    partial: list[str] = field(default_factory=list)  # sides whose dev selection ran over grids not fully recorded
    ties: list[str] = field(default_factory=list)  # cells whose dev selection fell through to grid order
    p_holm: float | None = None  # Holm-adjusted sign-flip p within a declared family (`compare_family`)
    family_size: int = 1


def _cells(records: list[dict], side: Side, select: bool) -> tuple[dict[tuple, dict], dict[tuple, tuple[int, int]],
                                                                  dict[tuple, list[dict]]]:
    """(task, setting, backbone, seed, split source) -> the side's record there (latest of a configuration; dev-best
    of several configurations when `select`), and with `select` `selection.grid_sizes` of the side's records and, per
    cell whose dev selection was a tie decided by grid order, the tied records (`selection.dev_ties`)."""
    mine = [r for r in records if r.get("status") == "ok" and side.matches(r)]
    ok = [r for r in mine if (r.get("selection") or {}).get("tested") is not False]  # lost on dev: no test
    sizes: dict[tuple, tuple[int, int]] = {}
    tied: dict[tuple, list[dict]] = {}
    if select:
        from sptbench.reports.selection import dev_ties, grid_sizes, group_of, select_by_dev

        ties = dev_ties(mine)
        ok = [r for r in select_by_dev(ok) if r.get("status") == "ok"]
        sizes = grid_sizes(mine, declared=not side.where)  # a config filter narrows the grid on purpose
        tied = {_cell(r): ties[group_of(r)] for r in ok if group_of(r) in ties}
    cells: dict[tuple, list[dict]] = {}
    for rec in latest_per_key(ok)[0]:
        cells.setdefault(_cell(rec), []).append(rec)
    out = {}
    several = _several_splits(cells)
    for cell, recs in cells.items():
        if len({without(record_key(r), "data_fingerprint") for r in recs}) > 1:
            raise SptbenchError(
                f"{side.label} has {len(recs)} configurations for {_cell_label(cell, several)}: narrow it "
                f"(e.g. {side.method}:key=value) or pick the dev-best one with --select-by-dev"
            )
        out[cell] = recs[0]
    return out, sizes, tied


def _cell(rec: dict) -> tuple:
    """A pairing cell: task, setting, backbone, seed and split source (one seed's LM-BFF split and its sampled split
    are two cells)."""
    p = rec["protocol"]
    return (rec["task"]["name"], setting_name(p["shots"], p["train_size"]), rec["backbone"]["id"], p["seed"],
            p["split_source"])


def _several_splits(cells: Iterable[tuple]) -> bool:
    """Whether these cells have more than one split source (their labels then say which: `_cell_label`)."""
    return len({cell[4] for cell in cells}) > 1


def _cell_label(cell: tuple, split: bool) -> str:
    """`task setting seed N`, with `(split S)` when `split`."""
    return f"{cell[0]} {cell[1]} seed {cell[3]}" + (f" (split {cell[4]})" if split else "")


def _score(rec: dict) -> float | None:
    s = cell_metric(rec)
    return s if s is not None and math.isfinite(s) else None


def _tie_notes(side: Side, common: list[tuple], cells: dict[tuple, dict], tied: dict[tuple, list[dict]],
               other: dict[tuple, dict], sign: int) -> list[str]:
    """How many of the compared cells `side` won by grid order among dev ties, and (where every tied configuration
    of those cells was tested) the mean difference had the last tied configuration won instead of the first."""
    cells_tied = [c for c in common if c in tied]
    if not cells_tied:
        return []
    note = (f"{side.label}: {len(cells_tied)} of {len(common)} cells tied on dev between configurations and were "
            f"decided by grid order (the first)")
    shifts = []
    for c in cells_tied:
        scores = [_score(r) for r in tied[c]]
        if all(s is not None for s in scores) and _score(other[c]) is not None:
            shifts.append(100 * sign * (scores[-1] - scores[0]))
    if shifts:
        note += (f"; with the last tied configuration instead, over the {len(shifts)} such cells whose tied "
                 f"configurations all have a test score, the overall mean difference moves by "
                 f"{sum(shifts) / len(common):+.2f}")
    return [note]


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
    (cells_a, sizes_a, tied_a), (cells_b, sizes_b, tied_b) = _cells(records, a, select), _cells(records, b, select)
    if tasks is not None:
        cells_a = {c: r for c, r in cells_a.items() if c[0] in tasks}
        cells_b = {c: r for c, r in cells_b.items() if c[0] in tasks}
    common = sorted(set(cells_a) & set(cells_b), key=lambda c: tuple(map(str, c)))
    if not common:
        raise SptbenchError(f"no (task, seed) cell has both {a.label} and {b.label}")
    diffs: dict[str, list[float]] = {}
    for cell in common:
        sa, sb = _score(cells_a[cell]), _score(cells_b[cell])
        if sa is not None and sb is not None:
            diffs.setdefault(cell[0], []).append(100 * (sa - sb))
    one_sided = sorted(set(cells_a) ^ set(cells_b), key=lambda c: tuple(map(str, c)))
    several = _several_splits([*cells_a, *cells_b])
    missing = [_cell_label(c, several) for c in one_sided]
    per_task = {task: blocked_stats({task: d}) for task, d in sorted(diffs.items())}
    overall = blocked_stats(dict(sorted(diffs.items())))
    partial = [note for side, cells, sizes in ((a, cells_a, sizes_a), (b, cells_b, sizes_b))
               for note in partial_grid_notes([cells[c] for c in common], sizes, lambda _, s=side: s.label)]
    ties = _tie_notes(a, common, cells_a, tied_a, cells_b, 1) + _tie_notes(b, common, cells_b, tied_b, cells_a, -1)
    return Comparison(a.label, b.label, per_task, overall, dict(sorted(diffs.items())), missing, partial, ties)


@dataclass
class Family:
    """A declared family of comparisons (a YAML file: `name`, optional `alpha`, `pairs: [[a, b], ...]`)."""

    name: str
    pairs: list[tuple[Side, Side]]
    alpha: float = ALPHA


def load_family(path: str) -> Family:
    """A family file, checked: a mapping with `pairs` (a non-empty list of [a, b] sides) and optional `name`, `alpha`
    (0 < alpha < 1); anything else is one error naming the file."""
    from sptbench.core import safe_yaml

    raw = safe_yaml.load_file(path, "comparison family")
    if not isinstance(raw, dict) or set(raw) - {"name", "alpha", "pairs"}:
        raise SptbenchError(f"{path}: a comparison family is a mapping of name, alpha and pairs")
    pairs = raw.get("pairs")
    if not isinstance(pairs, list) or not pairs or not all(
            isinstance(x, list) and len(x) == 2 and all(isinstance(s, str) for s in x) for x in pairs):
        raise SptbenchError(f"{path}: pairs must be a non-empty list of [a, b] method sides, e.g. [spt, lpt:layer=3]")
    alpha = raw.get("alpha", ALPHA)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 1:
        raise SptbenchError(f"{path}: alpha must be a number between 0 and 1, got {alpha!r}")
    name = raw.get("name", Path(path).stem)
    if not isinstance(name, str) or not name.strip():
        raise SptbenchError(f"{path}: name must be a non-empty string")
    sides = [(parse_side(a), parse_side(b)) for a, b in pairs]
    if len(set(sides)) < len(sides):
        raise SptbenchError(f"{path}: a pair is declared twice")
    return Family(name, sides, float(alpha))


def compare_family(records: Iterable[dict], pairs: list[tuple[Side, Side]], *, tasks: list[str] | None = None,
                   select: bool = False) -> tuple[list[Comparison], list[str]]:
    """Several comparisons declared together: each as `compare`, with Holm-adjusted sign-flip p-values across those
    the records hold. A pair whose sides are not both recorded is left out and named (second value), with the
    reason; none recorded at all is an error."""
    records = require_valid(records)
    comps, skipped = [], []
    for a, b in pairs:
        try:
            comps.append(compare(records, a, b, tasks=tasks, select=select))
        except SptbenchError as err:
            if len(pairs) == 1:
                raise
            skipped.append(f"{a.label} - {b.label} ({err})")
    if not comps:
        raise SptbenchError("no comparison of the family has records on both sides: " + "; ".join(skipped))
    for comp, p in zip(comps, holm([c.overall.p_sign_flip for c in comps]), strict=True):
        comp.p_holm, comp.family_size = p, len(comps)
    return comps, skipped


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:+.{digits}f}"


def _p(p: float | None) -> str:
    return "-" if p is None else f"{p:.3g}"


STATS_HEADERS = ["pairs", "mean diff", "95% CI (task-blocked t)", "sign-flip p", "W/T/L", "Wilcoxon p (Pratt)"]


def stats_cells(s: Blocked) -> list[str]:
    """A row's cells under STATS_HEADERS."""
    interval = "-" if s.low is None else f"[{s.low:+.2f}, {s.high:+.2f}]"
    return [str(s.n), _fmt(s.mean), interval, _p(s.p_sign_flip), f"{s.wins}/{s.ties}/{s.losses}", _p(s.p_wilcoxon)]


def power_note(s: Blocked, alpha: float = ALPHA, effects: tuple[float, ...] = (1.0, 2.0)) -> str:
    """The design's power: the within-task SD, the minimum detectable effect at 80 % power, and the pairs (and seeds
    per task) needed to detect each of `effects` points (same SD, spread evenly over the same tasks)."""
    if s.sd is None:
        return "power: no within-task replication (one seed per task), so no SD, interval or minimum detectable effect"
    e = mde(s.sd, s.se_factor, s.df, alpha)
    need = []
    for x in effects:
        n = pairs_needed(x, s.sd, s.tasks, alpha)
        need.append(f"{x:g} point(s): {n} ({math.ceil(n / s.tasks)} seeds per task)" if n else f"{x:g}: -")
    return (f"power (alpha {alpha:.3g}, two-sided, 80 %): within-task SD of the differences {s.sd:.2f} points over "
            f"{s.n} pairs in {s.tasks} task(s); minimum detectable effect {e:.2f} points; pairs needed to detect "
            + ", ".join(need))


ESTIMAND = ("estimand: the mean over these tasks of each task's expected difference (tasks fixed, seeds random); "
            "interval: t with task as a fixed block (df = pairs - tasks); sign-flip p: exact permutation test of the "
            "blocked mean (Monte-Carlo, 200,000 draws, above 20 pairs); ties counted exactly; Wilcoxon secondary, "
            "zero_method pratt (docs/statistics.md).")


def few_pairs_warning(comp: Comparison) -> str | None:
    """A warning when the comparison rests on fewer than MIN_PAIRS pairs (None otherwise)."""
    n = comp.overall.n
    if n >= MIN_PAIRS:
        return None
    return (f"warning: {comp.a} - {comp.b} rests on {n} pair(s), fewer than {MIN_PAIRS}: its interval and p-values "
            "are too wide or too unstable to support a claim; add seeds or tasks")


def _notes(comp: Comparison) -> str:
    notes = "".join(f"\n- {note}" for note in comp.partial + comp.ties)
    if comp.missing:
        notes += f"\n- cells only one side has (left out): {', '.join(comp.missing[:8])}" + \
                 (f" and {len(comp.missing) - 8} more" if len(comp.missing) > 8 else "")
    return notes


def render(comp: Comparison, effects: tuple[float, ...] = (1.0, 2.0)) -> str:
    """A Markdown table: one row per task and an overall row, with the estimand, the design's power and the notes."""
    from tabulate import tabulate

    rows = [[name, *stats_cells(s)] for name, s in [*comp.per_task.items(), ("**all**", comp.overall)]]
    head = f"{comp.a} - {comp.b}: paired test-score differences in points (a positive mean favours {comp.a})\n\n"
    if (warning := few_pairs_warning(comp)) is not None:
        head = f"**{warning}**\n\n" + head
    table = tabulate(rows, headers=["task", *STATS_HEADERS], tablefmt="github", disable_numparse=True)
    notes = f"\n\n- {ESTIMAND}\n- {power_note(comp.overall, effects=effects)}"
    return head + table + notes + _notes(comp) + "\n"


def render_family(comps: list[Comparison], name: str = "", alpha: float = ALPHA, skipped: list[str] = ()) -> str:
    """One row per comparison of a declared family: the overall numbers, the Holm-adjusted p, the SD and the
    minimum detectable effect at the family's per-comparison level alpha/m, and each task's mean difference."""
    from tabulate import tabulate

    m = len(comps)
    rows = []
    for c in comps:
        s = c.overall
        e = mde(s.sd, s.se_factor, s.df, alpha / m) if s.sd is not None else None
        per_task = ", ".join(f"{t} {st.mean:+.1f}" for t, st in c.per_task.items() if st.mean is not None)
        rows.append([f"{c.a} - {c.b}", *stats_cells(s)[:4], _p(c.p_holm), *stats_cells(s)[4:],
                     "-" if s.sd is None else f"{s.sd:.2f}", "-" if e is None else f"{e:.2f}", per_task])
    headers = ["comparison", *STATS_HEADERS[:4], "Holm p", *STATS_HEADERS[4:], "SD", "MDE", "per task (mean diff)"]
    table = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    title = f"family {name}: " if name else "family: "
    notes = [f"{title}{m} comparison(s), Holm-adjusted sign-flip p across them (family-wise alpha {alpha:g}); "
             f"a positive mean favours the first side; each side dev-selected per (task, seed) where it has a grid.",
             ESTIMAND,
             f"SD: within-task SD of the paired differences; MDE: the smallest true difference detected with 80 % "
             f"power at alpha/m = {alpha / m:.3g} (two-sided blocked t, noncentral t).",
             ]
    notes += [f"left out (not recorded): {s}" for s in skipped]
    notes += [f"**{w}**" for c in comps if (w := few_pairs_warning(c)) is not None]
    notes += list(dict.fromkeys(note for c in comps for note in c.partial + c.ties))  # a side's note once
    return table + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
