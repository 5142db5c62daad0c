"""How often SPT's searched layers rank above LPT's median layer on dev (the layer oracle of issue 35).

For every (task, seed) of the given records that has an LPT layer grid: LPT's dev score per layer (the best over its
other settings, e.g. learning rates), then for every SPT / SPT-DARTS run there whether each chosen layer's LPT dev
score is above the median over the layers; against the rate a uniformly random layer would give. Dev only: no test
score is read.

  python scripts/search_oracle.py results/tuned/v1/minilm-l6/16shot.yaml
  python scripts/search_oracle.py NEW_SPT_RUNS.yaml --oracle results/tuned/v1/minilm-l6/16shot.yaml
  python scripts/search_oracle.py results/v1/mpnet-base/16shot.yaml --pool-seeds

With --pool-seeds the oracle of a task is its LPT dev curve averaged over the seeds (the task-level layer preference,
which a search could learn; a single seed's curve also holds that seed's split and initialisation, which it cannot).
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

from sptbench.records.io import read_records


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", help="records of the searches (and of the LPT grid, without --oracle)")
    ap.add_argument("--oracle", nargs="+", help="records of the LPT layer grid (default: the same records)")
    ap.add_argument("--pool-seeds", action="store_true", help="oracle: each task's LPT dev curve averaged over seeds")
    args = ap.parse_args(argv)
    records = [r for r in read_records(args.paths) if r.get("status") == "ok"]
    oracle = [r for r in read_records(args.oracle) if r.get("status") == "ok"] if args.oracle else records
    lpt = lpt_dev_curves(oracle)
    if args.pool_seeds:
        lpt = pooled_over_seeds(lpt)
    for method in ("spt", "spt_darts"):
        per_task: dict[str, list[tuple[int, float]]] = defaultdict(list)
        seps = []
        for r in records:
            cell = (r["task"]["name"], None if args.pool_seeds else r["protocol"]["seed"])
            chosen = (r.get("extra") or {}).get("chosen_layers")
            if r["method"]["name"] != method or cell not in lpt or not chosen or len(lpt[cell]) < 3:
                continue
            scores = lpt[cell]
            median = statistics.median(scores.values())
            above = sum(s > median for s in scores.values()) / len(scores)
            for layer in chosen:
                if layer in scores:
                    per_task[cell[0]].append((scores[layer] > median, above))
            alpha = sorted((r.get("extra") or {}).get("alpha") or [], reverse=True)
            k = (r.get("extra") or {}).get("top_k") or 1
            if len(alpha) > k:
                seps.append(alpha[k - 1] - alpha[k])
        if not per_task:
            continue
        print(f"{method}: chosen layers above LPT's median layer on dev (rate; a random layer's rate)")
        for task, hits in sorted(per_task.items()):
            rate = sum(h for h, _ in hits) / len(hits)
            chance = sum(c for _, c in hits) / len(hits)
            print(f"  {task:6} {rate:.2f} of {len(hits)} choices; random {chance:.2f}")
        allhits = [h for hs in per_task.values() for h in hs]
        print(f"  all    {sum(h for h, _ in allhits) / len(allhits):.2f} of {len(allhits)}; random "
              f"{sum(c for _, c in allhits) / len(allhits):.2f}; median separation {statistics.median(seps):.4f}")


def lpt_dev_curves(records: list[dict]) -> dict[tuple, dict[int, float]]:
    """(task, seed) -> layer -> LPT's best dev score there over its other settings (e.g. learning rates)."""
    lpt: dict[tuple, dict[int, float]] = defaultdict(dict)
    for r in records:
        if r["method"]["name"] == "lpt" and r["method"]["config"].get("layer") is not None:
            cell = (r["task"]["name"], r["protocol"]["seed"])
            layer, dev = r["method"]["config"]["layer"], r["metrics"]["dev"]["score"]
            lpt[cell][layer] = max(dev, lpt[cell].get(layer, float("-inf")))
    return lpt


def pooled_over_seeds(lpt: dict[tuple, dict[int, float]]) -> dict[tuple, dict[int, float]]:
    """(task, None) -> layer -> mean dev score over the seeds whose grid has that layer."""
    pooled: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (task, _seed), scores in lpt.items():
        for layer, dev in scores.items():
            pooled[(task, None)][layer].append(dev)
    return {cell: {layer: statistics.mean(v) for layer, v in scores.items()} for cell, scores in pooled.items()}


if __name__ == "__main__":
    main()
