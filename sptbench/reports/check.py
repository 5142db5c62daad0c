"""Regression check: compare fresh runs with a reference table, key by key, metric by metric, inside a band.

Band: a metric passes when |fresh - reference| <= max(abs_tol, std_k x the sample std of that metric over the
reference seeds of the same configuration); with neither given, abs_tol = 1e-6. A move outside the band fails in
either direction: CPU runs are deterministic, so an unexplained rise means something changed as surely as a drop
(accept it by regenerating the reference). Missing keys and failed fresh runs fail; extra keys warn.

Determinism holds on one kind of processor only: another CPU model or instruction set flips a few predictions of a
short run. With `hardware_tol`, a pair whose `throughput.hardware` differs (or is unknown on either side) gets the
band max(band, hardware_tol) and is listed in the report; without it every pair is held to the band alike.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from tabulate import tabulate

from sptbench.core.errors import SptbenchError
from sptbench.records.keys import KEY_FIELDS, key_hash, key_label, record_key, seed_group
from sptbench.records.schema import require_valid

DEFAULT_ABS_TOL = 1e-6
_EPS = 1e-12  # float noise: a move exactly at the band edge is inside
SPLITS = ("dev", "test")


@dataclass
class Comparison:
    """One metric of one key: reference value, fresh value (None when the fresh run lacks it) and the band."""

    label: str
    metric: str  # "dev.accuracy", "test.f1", ...
    reference: float
    fresh: float | None
    band: float

    @property
    def delta(self) -> float | None:
        return None if self.fresh is None else self.fresh - self.reference

    @property
    def verdict(self) -> str:
        """ok, down, up (both outside the band, both fail) or missing metric."""
        if self.delta is None:
            return "missing metric"
        if abs(self.delta) <= self.band + _EPS:
            return "ok"
        return "down" if self.delta < 0 else "up"


@dataclass
class CheckResult:
    """What the check compared and everything that did not match."""

    comparisons: list[Comparison] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # reference keys with no fresh run: fail
    failed: list[str] = field(default_factory=list)  # reference keys whose fresh run failed: fail
    extra: list[str] = field(default_factory=list)  # fresh keys not in the reference: warn
    mismatches: list[str] = field(default_factory=list)  # why a missing key did not match (task version, config)
    warnings: list[str] = field(default_factory=list)
    abs_tol: float | None = None
    std_k: float | None = None
    hardware_tol: float | None = None
    cross_hardware: list[str] = field(default_factory=list)  # runs compared at the hardware band (report)
    hardware_pairs: set[tuple[str, str]] = field(default_factory=set)  # (reference's, fresh run's) processor

    @property
    def moved(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.verdict != "ok"]

    @property
    def ok(self) -> bool:
        """True when every reference key ran and every metric stayed inside the band."""
        return not (self.moved or self.missing or self.failed)


def _latest_by_key(records: Iterable[dict], what: str, warnings: list[str]) -> dict[tuple, dict]:
    """Successful records by key; duplicates resolved to the latest `created`, with a warning."""
    by_key: dict[tuple, dict] = {}
    dupes = 0
    for rec in records:
        if rec.get("status") != "ok":
            continue
        key = record_key(rec)
        if key in by_key:
            dupes += 1
            if str(rec.get("created", "")) < str(by_key[key].get("created", "")):
                continue
        by_key[key] = rec
    if dupes:
        warnings.append(f"{dupes} duplicate {what} run(s): the latest by 'created' was used")
    return by_key


def _labels(keys: Iterable[tuple]) -> dict[tuple, str]:
    """Readable labels; keys whose labels collide (differ only in configs or data) get a short hash."""
    keys = list(keys)
    counts = Counter(key_label(k) for k in keys)
    return {k: key_label(k) + (f" [{key_hash(k)}]" if counts[key_label(k)] > 1 else "") for k in keys}


def _numeric_metrics(rec: dict) -> dict[str, float]:
    """A record's dev and test metrics as {"dev.accuracy": value, ...} (numbers only)."""
    metrics = rec.get("metrics") or {}
    out = {}
    for split in SPLITS:
        for name, value in (metrics.get(split) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"{split}.{name}"] = float(value)
    return out


def _reference_stds(reference: dict[tuple, dict]) -> dict[tuple, dict[str, float]]:
    """Sample std of every metric over the seeds of each reference configuration (0 for a single seed)."""
    values: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for key, rec in reference.items():
        for metric, value in _numeric_metrics(rec).items():
            values[seed_group(key)][metric].append(value)
    return {
        group: {m: statistics.stdev(v) if len(v) > 1 else 0.0 for m, v in metrics.items()}
        for group, metrics in values.items()
    }


def _key_diff(a: tuple, b: tuple) -> list[str]:
    """The KEY_FIELDS in which two keys differ."""
    return [name for name, x, y in zip(KEY_FIELDS, a, b, strict=True) if x != y]


def _explain_missing(key: tuple, candidates: list[tuple], label: str) -> str | None:
    """Why a reference key found no fresh run: the closest unmatched fresh key and the fields it differs in."""
    same_run = {"method", "task", "seed"}  # a candidate must be the same method, task and seed to explain anything
    diffs = sorted((d for c in candidates if not same_run & set(d := _key_diff(key, c))), key=len)
    if not diffs:
        return None
    diff = diffs[0]
    if "task_version" in diff:
        return f"{label}: task version mismatch (the closest fresh run differs in: {', '.join(diff)})"
    return f"{label}: the closest fresh run differs in: {', '.join(diff)}"


def _band(abs_tol: float | None, std_k: float | None, std: float) -> float:
    """The allowed |move| of one metric: max(abs_tol, std_k x reference std)."""
    return max(abs_tol or 0.0, (std_k or 0.0) * std)


def check(
    fresh_records: Iterable[dict],
    reference_records: Iterable[dict],
    *,
    abs_tol: float | None = None,
    std_k: float | None = None,
    hardware_tol: float | None = None,
) -> CheckResult:
    """Compare fresh runs with reference runs per key and metric; see the module docstring for the band rules."""
    if abs_tol is None and std_k is None:
        abs_tol = DEFAULT_ABS_TOL
    if any(tol is not None and tol < 0 for tol in (abs_tol, std_k, hardware_tol)):
        raise SptbenchError("--abs-tol, --std-k and --hardware-tol must not be negative")
    fresh_records, reference_records = require_valid(fresh_records), require_valid(reference_records)
    result = CheckResult(abs_tol=abs_tol, std_k=std_k, hardware_tol=hardware_tol)
    reference = _latest_by_key(reference_records, "reference", result.warnings)
    fresh = _latest_by_key(fresh_records, "fresh", result.warnings)
    if not reference:
        raise SptbenchError("the reference holds no successful runs to check against")
    ref_failed = sum(r.get("status") != "ok" for r in reference_records)
    if ref_failed:
        result.warnings.append(f"{ref_failed} failed reference run(s) ignored")
    fresh_failed = {record_key(r) for r in fresh_records if r.get("status") != "ok"}
    labels = _labels(set(reference) | set(fresh) | fresh_failed)
    stds = _reference_stds(reference)
    unmatched = [k for k in fresh if k not in reference]
    for key, ref in reference.items():
        if key not in fresh:
            (result.failed if key in fresh_failed else result.missing).append(labels[key])
            if key not in fresh_failed and (why := _explain_missing(key, unmatched, labels[key])):
                result.mismatches.append(why)
            continue
        _compare(result, labels[key], ref, fresh[key], stds[seed_group(key)])
    result.extra = [labels[k] for k in unmatched]
    return result


def hardware_of(rec: dict) -> str | None:
    """The processor a record was computed on (`throughput.hardware`; None in records from before it was kept)."""
    return (rec.get("throughput") or {}).get("hardware")


def _compare(result: CheckResult, label: str, ref: dict, new: dict, stds: dict[str, float]) -> None:
    """Add one comparison per reference metric; fresh-only metrics become warnings."""
    ref_metrics, new_metrics = _numeric_metrics(ref), _numeric_metrics(new)
    ref_hw, new_hw = hardware_of(ref), hardware_of(new)
    cross = result.hardware_tol is not None and (ref_hw is None or ref_hw != new_hw)
    if cross:
        result.cross_hardware.append(label)
        unknown = "an unrecorded processor"
        result.hardware_pairs.add((ref_hw or unknown, new_hw or unknown))
    for metric, value in ref_metrics.items():
        band = _band(result.abs_tol, result.std_k, stds.get(metric, 0.0))
        if cross:
            band = max(band, result.hardware_tol)
        result.comparisons.append(Comparison(label, metric, value, new_metrics.get(metric), band))
    extra = sorted(set(new_metrics) - set(ref_metrics))
    if extra:
        result.warnings.append(f"{label}: metrics not in the reference: {', '.join(extra)}")


def _band_text(result: CheckResult) -> str:
    parts = []
    if result.abs_tol is not None:
        parts.append(f"abs_tol={result.abs_tol:g}")
    if result.std_k is not None:
        parts.append(f"{result.std_k:g} x std over reference seeds")
    text = f"|change| <= max({', '.join(parts)})" if len(parts) > 1 else f"|change| <= {parts[0]}"
    if result.cross_hardware:
        text += f"; {len(result.cross_hardware)} run(s) on other hardware: <= {result.hardware_tol:g}"
    return text


def _moved_table(moved: list[Comparison]) -> str:
    rows = [
        [
            c.label,
            c.metric,
            f"{c.reference:.4f}",
            "–" if c.fresh is None else f"{c.fresh:.4f}",
            "–" if c.delta is None else f"{c.delta:+.4f}",
            f"{c.band:.2g}",
            c.verdict,
        ]
        for c in moved
    ]
    headers = ["run", "metric", "reference", "fresh", "change", "band", "verdict"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _listing(title: str, items: list[str]) -> list[str]:
    return [f"{title} ({len(items)}):"] + [f"  {item}" for item in items] if items else []


def format_result(result: CheckResult) -> str:
    """A report: the metrics that moved (table), missing/failed/extra keys, hints, warnings and a verdict line."""
    lines = []
    if result.moved:
        lines += [_moved_table(result.moved), ""]
    lines += _listing("missing: in the reference, no fresh run", result.missing)
    lines += _listing("failed: the fresh run failed", result.failed)
    lines += _listing("why not matched", result.mismatches)
    lines += _listing("extra: fresh runs not in the reference (warning)", result.extra)
    if result.cross_hardware:
        pairs = "; ".join(f"reference on {ref}, fresh on {new}" for ref, new in sorted(result.hardware_pairs))
        lines += _listing(
            f"other hardware ({pairs}): compared at the band {result.hardware_tol:g}, not exactly (warning; "
            "regenerate the reference on this machine for an exact check)",
            result.cross_hardware,
        )
    lines += _listing("warnings", result.warnings)
    runs = len({c.label for c in result.comparisons})
    summary = f"compared {len(result.comparisons)} metrics of {runs} runs; band {_band_text(result)}"
    if result.ok:
        return "\n".join(lines + [f"check OK: {summary}"])
    fails = [f"{len(result.moved)} metric(s) outside the band"] if result.moved else []
    fails += [f"{len(result.missing)} missing key(s)"] if result.missing else []
    fails += [f"{len(result.failed)} failed run(s)"] if result.failed else []
    return "\n".join(lines + [f"check FAILED: {', '.join(fails)}; {summary}"])
