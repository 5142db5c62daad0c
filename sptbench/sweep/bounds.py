"""A sweep file's grid, counted before it is built: a grid of 10^6 points is refused in milliseconds, not planned
for minutes; and a grid axis that repeats a value (which would plan the same run twice) is refused."""

from __future__ import annotations

import math
from typing import Any

from sptbench.core.errors import SptbenchError
from sptbench.records.keys import canonical_json

# A sweep's runs at most: ~15x the largest sweep here (~1,300 runs); at seconds per run for the
# smallest, more would be months of compute; checking and planning them costs ~1 ms each (20 s at the limit)
MAX_RUNS = 20_000


def axis_length(value: Any) -> int:
    """How many values one grid key gives: a list's length, else 1."""
    return len(value) if isinstance(value, list) else 1


def mapping_points(mapping: Any) -> int:
    """The points of one `{key: value or [values]}` grid mapping (1 when it is not a mapping: parsing reports it)."""
    if not isinstance(mapping, dict):
        return 1
    return math.prod(axis_length(v) for v in mapping.values())


def check_grid_size(raw: dict, methods: list[str], fixed: int, where: str) -> None:
    """Refuse a sweep of more than MAX_RUNS runs, counted from the file: `fixed` is the product of the axes shared
    by every method (regimes, tasks, heads, seeds); per method, its `method_set` points x its training points."""
    shared_train = raw.get("train") if isinstance(raw.get("train"), dict) else {}
    per_train = raw.get("method_train") if isinstance(raw.get("method_train"), dict) else {}
    per_set = raw.get("method_set") if isinstance(raw.get("method_set"), dict) else {}
    total = 0
    for m in methods:
        train = {**shared_train, **(per_train.get(m) if isinstance(per_train.get(m), dict) else {})}
        total += mapping_points(per_set.get(m)) * mapping_points(train) * fixed
    if total > MAX_RUNS:
        raise SptbenchError(f"{where}: the grid has {total:,} runs, more than the limit of {MAX_RUNS:,}; split it "
                            "into several sweep files")


def check_distinct(values: list, where: str) -> None:
    """A grid axis lists each value once (1e-3 and 0.001 are one value)."""
    seen: dict[str, Any] = {}
    for value in values:
        key = canonical_json(value)
        if key in seen:
            raise SptbenchError(f"{where}: {value!r} is listed twice (the same runs would be planned twice)")
        seen[key] = value
