"""Paired-comparison statistics for fixed tasks and random seeds (docs/statistics.md).

The estimand is the mean over the compared tasks of each task's expected paired difference a - b (tasks fixed, seeds
random): theta = (1/T) sum_t mu_t. It is estimated by the mean of the per-task mean differences; its interval is a
t-interval with the within-task (pooled) residual variance, df = N - T (the paired t-test with task as a fixed
block); its test is a sign-flip permutation test of the same statistic (exact up to 2^20 sign patterns, else
Monte-Carlo), valid without normality under the null of differences symmetric about 0. Wilcoxon (zero_method
"pratt", so exact ties stay in the ranking) is kept as a secondary column. Holm controls the family-wise error across
a declared family of comparisons; power and the minimum detectable effect come from the noncentral t distribution
of the same blocked test.

Holm is written out (five lines) rather than taken from statsmodels, which the suite does not otherwise need.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

EXACT_MAX_PAIRS = 20  # 2^20 sign patterns enumerate in well under a second
SIGN_FLIP_DRAWS = 200_000  # Monte-Carlo draws above that (the issue asks for >= 100k)
POWER = 0.8
ALPHA = 0.05
_EPS = 1e-9  # a flipped statistic equal to the observed one up to float rounding counts as "as extreme"


@dataclass
class Blocked:
    """The task-blocked analysis of one comparison (differences in points, a - b)."""

    n: int  # pairs
    tasks: int
    mean: float | None  # the blocked estimate: mean of per-task means
    low: float | None  # 95 % t-interval (None: no within-task replication, df = 0)
    high: float | None
    sd: float | None  # pooled within-task SD of the paired differences
    df: int
    se_factor: float  # SE = sd * se_factor
    p_sign_flip: float | None
    exact: bool  # the sign-flip p enumerates every pattern (else Monte-Carlo)
    wins: int
    ties: int
    losses: int
    p_wilcoxon: float | None  # two-sided, zero_method="pratt"; secondary


def _clean(diffs_by_task: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
    return {t: [float(d) for d in ds] for t, ds in diffs_by_task.items() if len(ds)}


def blocked_mean(diffs_by_task: Mapping[str, Sequence[float]]) -> float:
    groups = _clean(diffs_by_task)
    return sum(sum(ds) / len(ds) for ds in groups.values()) / len(groups)


def pooled_sd(diffs_by_task: Mapping[str, Sequence[float]]) -> tuple[float | None, int]:
    """The within-task residual SD of the differences and its degrees of freedom N - T (None when df = 0)."""
    groups = _clean(diffs_by_task)
    df = sum(len(ds) for ds in groups.values()) - len(groups)
    if df <= 0:
        return None, 0
    ss = sum(sum((d - sum(ds) / len(ds)) ** 2 for d in ds) for ds in groups.values())
    return math.sqrt(ss / df), df


def se_factor(sizes: Sequence[int]) -> float:
    """SE of the blocked mean per unit SD: sqrt(sum 1/n_t) / T (1/sqrt(N) for a balanced design)."""
    return math.sqrt(sum(1 / n for n in sizes)) / len(sizes)


def blocked_interval(diffs_by_task: Mapping[str, Sequence[float]], alpha: float = ALPHA):
    """(mean, low, high, sd, df): the blocked estimate and its t-interval (low/high None when df = 0)."""
    from scipy import stats

    groups = _clean(diffs_by_task)
    mean = blocked_mean(groups)
    sd, df = pooled_sd(groups)
    if sd is None:
        return mean, None, None, None, 0
    half = stats.t.ppf(1 - alpha / 2, df) * sd * se_factor([len(ds) for ds in groups.values()])
    return mean, mean - half, mean + half, sd, df


def sign_flip_p(diffs_by_task: Mapping[str, Sequence[float]], *, draws: int = SIGN_FLIP_DRAWS,
                seed: int = 0) -> tuple[float | None, bool]:
    """Two-sided p of the blocked mean under random sign flips of every pair (exact up to EXACT_MAX_PAIRS non-zero
    pairs, else `draws` seeded Monte-Carlo patterns, p = (1 + hits) / (1 + draws)). None when every difference is 0."""
    import numpy as np

    groups = _clean(diffs_by_task)
    weights = np.array([1 / (len(groups) * len(ds)) for ds in groups.values() for _ in ds])
    values = np.array([d for ds in groups.values() for d in ds])
    keep = values != 0  # a zero difference flips to itself
    terms = (weights * values)[keep]
    if terms.size == 0:
        return None, True
    observed = abs(terms.sum()) - _EPS
    if terms.size <= EXACT_MAX_PAIRS:
        patterns = (np.arange(2 ** terms.size)[:, None] >> np.arange(terms.size)) & 1
        stats = np.abs((1 - 2 * patterns) @ terms)
        return float(np.mean(stats >= observed)), True
    rng = np.random.default_rng(seed)
    hits, done = 0, 0
    while done < draws:
        size = min(20_000, draws - done)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(size, terms.size))
        hits += int(np.sum(np.abs(signs @ terms) >= observed))
        done += size
    return (1 + hits) / (1 + draws), False


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment (family-wise error), None entries left out of the family and returned as None."""
    present = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    out: list[float | None] = [None] * len(pvalues)
    running, m = 0.0, len(present)
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def power(effect: float, sd: float, factor: float, df: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided blocked t-test to detect a true difference `effect` (noncentral t)."""
    from scipy import stats

    if df <= 0 or sd <= 0:
        return float("nan")
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = effect / (sd * factor)
    value = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    return value if math.isfinite(value) else 1.0  # scipy's nct gives NaN far in the tail, where power is 1


def mde(sd: float, factor: float, df: int, alpha: float = ALPHA, target: float = POWER) -> float | None:
    """The smallest true difference the design detects with `target` power at `alpha` (None when df = 0)."""
    from scipy.optimize import brentq

    if df <= 0 or sd is None or sd <= 0:
        return None
    high = sd * factor
    while power(high, sd, factor, df, alpha) < target:
        high *= 2
    return float(brentq(lambda e: power(e, sd, factor, df, alpha) - target, 1e-9, high))


def pairs_needed(effect: float, sd: float, tasks: int, alpha: float = ALPHA, target: float = POWER,
                 limit: int = 100_000) -> int | None:
    """The fewest (task, seed) pairs, spread evenly over `tasks` tasks, that detect `effect` with `target` power."""
    if sd is None or sd <= 0 or effect <= 0:
        return None
    n = tasks + 1
    while n <= limit:
        if power(effect, sd, 1 / math.sqrt(n), n - tasks, alpha) >= target:
            return n
        n += 1 if n < 200 else max(1, n // 100)
    return None


def wins_ties_losses(diffs: Sequence[float]) -> tuple[int, int, int]:
    wins, ties = sum(d > 0 for d in diffs), sum(d == 0 for d in diffs)
    return wins, ties, len(diffs) - wins - ties


def wilcoxon_p(diffs: Sequence[float]) -> float | None:
    """Two-sided Wilcoxon signed-rank p with Pratt's zero handling (ties ranked, then dropped); None if undefined."""
    from scipy import stats

    if len(diffs) < 2 or not any(d != 0 for d in diffs):
        return None
    return float(stats.wilcoxon(diffs, zero_method="pratt").pvalue)


def blocked_stats(diffs_by_task: Mapping[str, Sequence[float]], *, alpha: float = ALPHA, seed: int = 0) -> Blocked:
    """Everything `sptbench compare` prints for one group of pairs (one task, or all tasks blocked by task)."""
    groups = _clean(diffs_by_task)
    flat = [d for ds in groups.values() for d in ds]
    if not flat:
        return Blocked(0, 0, None, None, None, None, 0, 0.0, None, True, 0, 0, 0, None)
    mean, low, high, sd, df = blocked_interval(groups, alpha)
    p, exact = sign_flip_p(groups, seed=seed)
    return Blocked(len(flat), len(groups), mean, low, high, sd, df, se_factor([len(ds) for ds in groups.values()]), p,
                   exact, *wins_ties_losses(flat), wilcoxon_p(flat))
