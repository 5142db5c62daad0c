"""The value shapes of a sweep file's keys: a value or a grid (a list), a grid of option mappings, positive integers,
distinct names, and per-method option mappings; each bad value is one line naming its key."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

from sptbench.core.errors import SptbenchError
from sptbench.sweep.bounds import check_distinct


def as_values(raw: Any, where: str) -> list:
    """A scalar or a non-empty list of values (a list is a grid)."""
    if isinstance(raw, list):
        if not raw:
            raise SptbenchError(f"{where}: empty grid (an empty list); give at least one value")
        check_distinct(raw, where)
        return list(raw)
    return [raw]


def as_grid(mapping: Any, where: str) -> list[dict]:
    """Every combination of a `{key: value or [values]}` mapping, in grid order (the last key varies fastest)."""
    if mapping is None:
        return [{}]
    if not isinstance(mapping, dict):
        raise SptbenchError(f"{where} must be a mapping of option -> value or [values], got {type(mapping).__name__}")
    axes = [[(key, v) for v in as_values(value, f"{where}.{key}")] for key, value in mapping.items()]
    return [dict(combo) for combo in itertools.product(*axes)]


def positive_ints(raw: Any, where: str, allow_none: bool = False) -> list:
    values = as_values(raw, where)
    for v in values:
        if v is None and allow_none:
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise SptbenchError(f"{where}: expected positive integers, got {v!r}")
    return values


def distinct_names(raw: Any, where: str) -> list[str]:
    values = as_values(raw, where)
    bad = [v for v in values if not isinstance(v, str)]
    if bad:
        raise SptbenchError(f"{where}: expected names, got {bad[0]!r}")
    dup = [v for v, n in Counter(values).items() if n > 1]
    if dup:
        raise SptbenchError(f"{where}: '{dup[0]}' is listed twice")
    return values


def per_method(raw: Any, key: str, methods: list[str], where: str, kind: str = "mapping") -> dict[str, Any]:
    """A `{method: options}` mapping over the sweep's methods; `kind` says what each method's options are."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SptbenchError(f"{where}: '{key}' must be a mapping of method -> options")
    extra = [m for m in raw if m not in methods]
    if extra:
        names = ", ".join(methods)
        raise SptbenchError(f"{where}: {key} names method '{extra[0]}', which is not in 'methods' ({names})")
    for m, options in raw.items():
        if kind == "mapping" and options is not None and not isinstance(options, dict):
            raise SptbenchError(f"{where}: {key}.{m} must be a mapping of option -> value or [values]")
        if kind == "list" and not isinstance(options, list):
            raise SptbenchError(f"{where}: {key}.{m} must be a list of grid keys")
    return raw
