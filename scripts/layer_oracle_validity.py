"""Is LPT's per-layer dev score a valid yardstick for SPT's layer choice (issue 35)? Three numbers per task.

From the LPT layer grids of the given records (per layer, the configuration best on dev, e.g. over learning rates):
  * within a (task, seed): Spearman's rho between the layers' dev scores and their test scores (does dev rank the
    trained prompts as test does?) and the test gain of the dev-best layer over the mean layer;
  * across seeds of one task: the mean pairwise rho of the layers' test curves (is "the best layer" a property of
    the task, which a search could learn, or of one seed's split and initialisation?);
  * a Friedman test of the layer effect on test over the seeds (blocks) and the share of the layer-by-seed variance
    that the layer main effect explains.
Test scores are read to *evaluate the yardstick*, never to choose a configuration or a layer.

  python scripts/layer_oracle_validity.py results/v1/mpnet-base/16shot.yaml
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from collections import defaultdict

from scipy.stats import friedmanchisquare, spearmanr

from sptbench.records.io import read_records


def layer_grids(paths: list[str]) -> dict[tuple, dict[int, tuple[float, float]]]:
    """(backbone, task, regime, seed) -> layer -> (dev, test) of the dev-best LPT configuration at that layer."""
    grids: dict[tuple, dict[int, tuple[float, float]]] = defaultdict(dict)
    for r in read_records(paths):
        cfg = r["method"]["config"]
        test = (r.get("metrics") or {}).get("test")
        if r.get("status") != "ok" or r["method"]["name"] != "lpt" or cfg.get("layer") is None or not test:
            continue
        p = r["protocol"]
        key = (r["backbone"]["id"], r["task"]["name"], p.get("shots") or p.get("train_size"), p["seed"])
        dev, layer = r["metrics"]["dev"]["score"], cfg["layer"]
        if layer not in grids[key] or dev > grids[key][layer][0]:
            grids[key][layer] = (dev, test["score"])
    return {k: v for k, v in grids.items() if len(v) >= 4}


def summarise(grids: dict[tuple, dict[int, tuple[float, float]]]) -> None:
    by_task: dict[tuple, list[dict[int, tuple[float, float]]]] = defaultdict(list)
    for key, grid in sorted(grids.items()):
        by_task[key[:3]].append(grid)
    print("backbone/task/regime     seeds  rho(dev,test) within seed  dev-best gain  rho(test) across seeds  "
          "layer share  Friedman p")
    for task, seeds in by_task.items():
        layers = sorted(set.intersection(*(set(g) for g in seeds)))
        within = [spearmanr([g[lay][0] for lay in layers], [g[lay][1] for lay in layers]).statistic for g in seeds]
        gains = [100 * (g[max(layers, key=lambda lay: (g[lay][0], -lay))][1]
                        - statistics.mean(g[lay][1] for lay in layers)) for g in seeds]
        across = [spearmanr([a[lay][1] for lay in layers], [b[lay][1] for lay in layers]).statistic
                  for a, b in itertools.combinations(seeds, 2)]
        share, p = float("nan"), float("nan")
        if len(seeds) >= 3:
            table = [[g[lay][1] for lay in layers] for g in seeds]  # seeds x layers
            p = friedmanchisquare(*zip(*table, strict=True)).pvalue
            share = layer_share(table)
        name = "/".join(str(x) for x in task)
        print(f"{name:24} {len(seeds):5}  {statistics.median(within):+26.2f}  {statistics.mean(gains):+12.2f}  "
              f"{statistics.mean(across) if across else float('nan'):+22.2f}  {share:11.2f}  {p:10.3f}")


def layer_share(table: list[list[float]]) -> float:
    """The share of the seed-centred variance of a seeds x layers table that the layer means explain."""
    centred = [[x - statistics.mean(row) for x in row] for row in table]
    total = sum(x * x for row in centred for x in row)
    col = [statistics.mean(c) for c in zip(*centred, strict=True)]
    return len(table) * sum(c * c for c in col) / total if total else float("nan")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", help="records holding LPT layer grids with test scores")
    summarise(layer_grids(ap.parse_args(argv).paths))


if __name__ == "__main__":
    main()
