"""Dev selection over hyper-parameter grids, next to the tables that report it. Pure: records in, records out.

`select_by_dev(records)`: per method, task, seed and setting keep the configuration best on dev (tables, compare).

The test-once protocol (a sweep with `test: selected`, docs/sweeps.md): every grid point trains with dev
selection and is recorded *untested* (`selection.tested: false`; its best-on-dev trained state saved under
`<results>/pending/<run id>/`); when every configuration of a group (method, task, seed, setting) is recorded,
`sweep/test_once.py` picks the dev-best one, evaluates it on test once and appends its record again, tested, saying what
it won over; the saved states of the group are then removed. Test never decides anything: it is read once, for the
winner only.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable

from sptbench.records.keys import canonical_json, head_of, latest_per_key
from sptbench.records.schema import require_valid


def group_of(rec: dict) -> tuple:
    """The comparison group of a run: method, task (and version), seed, backbone, head and data regime."""
    p = rec["protocol"]
    return (
        rec["method"]["name"],
        rec["task"]["name"],
        rec["task"]["version"],
        p["seed"],
        rec["backbone"]["id"],
        p["shots"],
        p["train_size"],
        p["split_source"],
        canonical_json(head_of(rec)),
    )


def grid_position(rec: dict) -> float:
    index = (rec.get("sweep") or {}).get("config_index")
    return float(index) if isinstance(index, int) and not isinstance(index, bool) else float("inf")


def is_untested(rec: dict) -> bool:
    return (rec.get("selection") or {}).get("tested") is False


def dev_rank(rec: dict) -> tuple[float, float]:
    """How a configuration ranks on dev, smaller is better: the dev score (higher first), then the dev loss (lower
    first) where the record has one; records written before dev loss was recorded tie there, and grid order decides
    (docs/statistics.md)."""
    dev = (rec.get("metrics") or {}).get("dev") or {}
    score, loss = dev.get("score"), dev.get("loss")
    score = float(score) if isinstance(score, int | float) and not isinstance(score, bool) else float("-inf")
    loss = float(loss) if isinstance(loss, int | float) and not isinstance(loss, bool) else math.inf
    return -score, loss


def dev_ties(records: Iterable[dict]) -> dict[tuple, list[dict]]:
    """Per selection group whose dev-best configuration is tied on dev (same score and, where recorded, same loss)
    with others: the tied configurations' records (latest per configuration), in grid order. A group absent here
    was decided on dev alone."""
    groups: dict[tuple, list[dict]] = {}
    for rec in latest_per_key([r for r in require_valid(records) if r.get("status") == "ok"])[0]:
        groups.setdefault(group_of(rec), []).append(rec)
    out = {}
    for group, recs in groups.items():
        best = min(dev_rank(r) for r in recs)
        tied = sorted((r for r in recs if dev_rank(r) == best), key=lambda r: (grid_position(r), str(r.get("created"))))
        if len(tied) > 1:
            out[group] = tied
    return out


def _dev_best(records: list[dict]) -> tuple[dict[tuple, dict], Counter, Counter]:
    """Per selection group (`group_of`): its dev-best ok record (the latest of each configuration), how many
    configurations it has, and how many its sweep declared (`sweep.group_configs` or `sweep.configs` of its records;
    0 outside sweeps)."""
    best: dict[tuple, tuple[tuple, dict]] = {}
    sizes: Counter = Counter()
    declared: Counter = Counter()
    for position, rec in enumerate(latest_per_key([r for r in records if r.get("status") == "ok"])[0]):
        rank = (*dev_rank(rec), grid_position(rec), str(rec.get("created", "")), position)  # smaller is better
        group = group_of(rec)
        sizes[group] += 1
        grid = rec.get("sweep") or {}
        n = grid.get("group_configs") or grid.get("configs")
        if isinstance(n, int) and not isinstance(n, bool):
            declared[group] = max(declared[group], n)
        if group not in best or rank < best[group][0]:
            best[group] = (rank, rec)
    return {group: rec for group, (_, rec) in best.items()}, sizes, declared


def dev_selection(records: Iterable[dict], *, declared: bool = True) -> tuple[list[dict], dict[tuple, tuple[int, int]]]:
    """`select_by_dev` and `grid_sizes` of the same records, in one pass over them."""
    records = require_valid(records)
    best, sizes, grids = _dev_best(records)
    keep = {id(rec) for rec in best.values()}  # by identity: `_dev_best` returns the input's own dicts
    winners = [rec for rec in records if id(rec) in keep or rec.get("status") != "ok"]
    return winners, _sizes(sizes, grids, declared)


def _sizes(sizes: Counter, grids: Counter, declared: bool) -> dict[tuple, tuple[int, int]]:
    return {group: (n, grids[group] if declared else 0) for group, n in sizes.items()}


def select_by_dev(records: Iterable[dict]) -> list[dict]:
    """Per method, task, seed and setting (backbone, head, shots/train size, split source), keep the ok run of the
    configuration with the best dev `score` (never the test score). Ties go to the lower dev loss where recorded,
    then to the first configuration in grid order (the sweep's `config_index`), then the earliest `created`. A
    configuration run twice counts once (its latest record, as in tables; a tested record of the test-once protocol
    is later than its untested one). Failed records
    pass through unchanged (tables count them); the input order is kept."""
    return dev_selection(records)[0]


def grid_sizes(records: Iterable[dict], *, declared: bool = True) -> dict[tuple, tuple[int, int]]:
    """Per selection group (`group_of`) of `records`: how many configurations are recorded, and how many its sweep
    declared (0 outside sweeps, or when not `declared`: records already narrowed to part of their grid)."""
    _, sizes, grids = _dev_best(require_valid(records))
    return _sizes(sizes, grids, declared)


def partial_grid_notes(winners: Iterable[dict], sizes: dict[tuple, tuple[int, int]],
                       label: Callable[[dict], str] = lambda rec: rec["method"]["name"]) -> list[str]:
    """One line per method (`label`) some of whose dev-selected runs were chosen over a grid not fully recorded yet
    (a sweep in progress): fewer configurations than their sweep declared, or than another group of the method
    has. Those winners may still change."""
    per_method: dict[str, list[tuple[int, int]]] = {}
    for rec in winners:
        if (size := sizes.get(group_of(rec))) is not None:
            per_method.setdefault(label(rec), []).append(size)
    notes = []
    for name, pairs in sorted(per_method.items()):
        full = max(max(n for n, _ in pairs), max(d for _, d in pairs))
        short = [n for n, d in pairs if n < full]
        if short:
            notes.append(f"{name}: {len(short)} of {len(pairs)} dev selections ran over an incomplete grid (as few "
                         f"as {min(short)} of {full} configurations recorded): those winners may still change")
    return notes


def selection_group(rec: dict) -> tuple:
    """The group a configuration is tested for under the test-once protocol: its comparison group, split further by
    the sweep's `select_within` values (`sweep.group`)."""
    return group_of(rec), (rec.get("sweep") or {}).get("group")
