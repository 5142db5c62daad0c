"""What SPT's gates rank: the task's layers, or a bias of the search itself? (issue 35)

For the SPT runs of the given records, per search configuration (gate variant x learning rate x gate lr): the mean
final gate value α per layer over every (task, seed), and how often each layer came out on top. Then per task, how
much the α rankings agree (Kendall's W, 0 = no agreement, 1 = identical rankings; its mean under random rankings is
printed beside it):
- across seeds, one configuration at a time: does the search rank the layers the same way on different splits?
- across configurations, one seed at a time: does it rank them the same way on the same split whatever its settings?
- LPT's dev curves across seeds (the best dev score per layer over LPT's other settings), where the records have an
  LPT layer grid: does the layer oracle itself carry over from one split to another?
A ranking that agrees across seeds but not across configurations follows the search's settings, not the data. Dev
and search values only: no test score is read.

  python scripts/gate_bias.py results/tuned/v1/minilm-l6/16shot.yaml
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path

from scipy.stats import rankdata

from sptbench.records.io import read_records

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling script's reader of LPT's layer grid
from search_oracle import lpt_dev_curves  # noqa: E402


def kendall_w(rankings: list[list[float]]) -> float:
    """Kendall's coefficient of concordance of m rankings (rows) of the same n items (no tie correction)."""
    m, n = len(rankings), len(rankings[0])
    sums = [sum(col) for col in zip(*(rankdata(r) for r in rankings), strict=True)]
    mean = m * (n + 1) / 2
    return 12 * sum((s - mean) ** 2 for s in sums) / (m * m * (n**3 - n))


def null_w(m: int) -> float:
    """The mean of Kendall's W over m independent uniformly random rankings (of any number of items): 1/m."""
    return 1 / m


def search_config(rec: dict) -> str:
    c = rec["method"]["config"]
    return f"gate={c.get('gate')} lr={rec['training']['lr']:g} gate_lr={c.get('gate_lr'):g}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", help="records with SPT runs (and an LPT layer grid for the oracle row)")
    ap.add_argument("--method", default="spt", help="the searching method (default spt; spt_darts works too)")
    args = ap.parse_args(argv)
    records = [r for r in read_records(args.paths) if r.get("status") == "ok"]
    alphas: dict[str, dict[str, dict[int, list[float]]]] = defaultdict(lambda: defaultdict(dict))  # task/config/seed
    for r in records:
        if r["method"]["name"] == args.method and "alpha" in r.get("extra", {}):
            alphas[r["task"]["name"]][search_config(r)][r["protocol"]["seed"]] = r["extra"]["alpha"]
    lpt: dict[str, list[dict[int, float]]] = defaultdict(list)  # task -> its seeds' LPT dev curves
    for (task, _seed), curve in lpt_dev_curves(records).items():
        lpt[task].append(curve)
    by_config: dict[str, list[list[float]]] = defaultdict(list)
    for per_config in alphas.values():
        for config, per_seed in per_config.items():
            by_config[config] += per_seed.values()
    print(f"{args.method}: mean final α per layer, and how often each layer was on top (all tasks and seeds)")
    for config, runs in sorted(by_config.items()):
        mean = [statistics.mean(a[i] for a in runs) for i in range(len(runs[0]))]
        top = Counter(max(range(len(a)), key=a.__getitem__) for a in runs)
        print(f"  {config} ({len(runs)} runs): α " + " ".join(f"{x:.3f}" for x in mean)
              + "; on top: " + ", ".join(f"layer {k} x{v}" for k, v in sorted(top.items())))
    print("Kendall's W per task (random rankings: the value in brackets)")
    for task in sorted(alphas):
        per_config = alphas[task]
        across_seeds = [kendall_w(list(s.values())) for s in per_config.values() if len(s) >= 2]
        seeds = sorted({seed for s in per_config.values() for seed in s})
        across_configs = [kendall_w(rs) for rs in ([s[seed] for s in per_config.values() if seed in s]
                                                   for seed in seeds) if len(rs) >= 2]
        n = len(next(iter(next(iter(per_config.values())).values())))
        m_seeds = max((len(s) for s in per_config.values()), default=0)
        line = f"  {task}: α across seeds {statistics.median(across_seeds):.2f} [{null_w(m_seeds):.2f}]"
        if across_configs:
            line += (f"; α across {len(per_config)} configurations {statistics.median(across_configs):.2f} "
                     f"[{null_w(len(per_config)):.2f}]")
        curves = [[c[k] for k in sorted(c)] for c in lpt[task] if len(c) == n]
        if len(curves) >= 2:
            line += f"; LPT dev curve across {len(curves)} seeds {kendall_w(curves):.2f} [{null_w(len(curves)):.2f}]"
        print(line)


if __name__ == "__main__":
    main()
