#!/usr/bin/env python
"""Print the numbers quoted in the README's Findings, recomputed from the records (nothing else is read).

    python scripts/findings_numbers.py results/v1/minilm-l6/n1000.yaml --tasks sst2 subj trec qnli mnli
    python scripts/findings_numbers.py results/v1/minilm-l6/16shot.yaml --tasks sst2 mpqa mr subj trec

Scores are test scores in % (the task's selection metric), means over the recorded seeds; only `status: ok` records.
Gate movement: |logit(final α) - gate_init| of each gate over what Adam could move it under the run's schedule
(gate_lr x the sum of the linear warmup/decay multipliers: about a step of gate_lr per step while a gradient keeps
its sign).
"""
from __future__ import annotations

import argparse
import functools
import math
import statistics
from collections import defaultdict

from sptbench.records.io import read_table

GATED = ("spt", "spt_darts")


@functools.cache
def schedule_sum(max_steps: int, warmup_ratio: float) -> float:
    """Sum of the learning-rate multipliers of sptbench.training.loop.build_optimizer's schedule over a run."""
    import torch

    from sptbench.training.loop import build_optimizer

    _, scheduler = build_optimizer([torch.nn.Parameter(torch.zeros(1))], 1.0, 0.0, max_steps, warmup_ratio)
    return sum(scheduler.lr_lambdas[0](step) for step in range(max_steps))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table")
    ap.add_argument("--tasks", nargs="+", required=True)
    args = ap.parse_args()
    runs = [r for r in read_table(args.table) if r["status"] == "ok" and r["task"]["name"] in args.tasks]

    score: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in runs:
        score[(r["method"]["name"], r["task"]["name"])].append(100 * r["metrics"]["test"]["score"])
    methods = sorted({m for m, _ in score})
    mean = {k: statistics.mean(v) for k, v in score.items()}
    std = {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in score.items()}

    print(f"{len(runs)} ok runs over {', '.join(args.tasks)}")
    print("\nmean over tasks, max std:")
    for m in sorted(methods, key=lambda m: -statistics.mean(mean[(m, t)] for t in args.tasks)):
        avg = statistics.mean(mean[(m, t)] for t in args.tasks)
        worst = max(args.tasks, key=lambda t: std[(m, t)])
        seeds = [len(score[(m, t)]) for t in args.tasks]
        print(f"  {m:14s} {avg:5.1f}   max std {std[(m, worst)]:4.1f} ({worst})   seeds per task {seeds}")

    print("\nbest mean per task:")
    for t in args.tasks:
        best = max(methods, key=lambda m: mean[(m, t)])
        print(f"  {t:5s} {best} {mean[(best, t)]:.1f}")

    def versus(a: str, b: str) -> None:
        d = {t: mean[(a, t)] - mean[(b, t)] for t in args.tasks}
        wins = [t for t in args.tasks if d[t] > 0]
        print(f"\n{a} vs {b}: {len(wins)} of {len(args.tasks)} ("
              + ", ".join(f"{t} {d[t]:+.1f}" for t in sorted(args.tasks, key=lambda t: -d[t])) + ")")

    for base in ("prompt_tuning", "p_tuning_v2", "lpt"):
        versus("spt", base)
    versus("spt_darts", "spt")

    # The chosen layer against LPT on the same task, and whether layer-0 runs have the lowest dev score.
    by_layer: dict[int, list[float]] = defaultdict(list)
    print("\nchosen layer (SPT / SPT-DARTS runs): test - LPT mean on the task")
    for t in args.tasks:
        gated = [r for r in runs if r["task"]["name"] == t and r["method"]["name"] in GATED]
        for r in gated:
            layer = r["extra"]["chosen_layers"][0]
            by_layer[layer].append(100 * r["metrics"]["test"]["score"] - mean[("lpt", t)])
        zero = [r for r in gated if r["extra"]["chosen_layers"][0] == 0]
        if zero:
            lowest_dev = min(r["metrics"]["dev"]["score"] for r in gated)
            print(f"  {t}: {len(zero)} layer-0 run(s); lowest dev score among them: "
                  f"{any(r['metrics']['dev']['score'] == lowest_dev for r in zero)}")
    for layer in sorted(by_layer):
        d = by_layer[layer]
        print(f"  layer {layer}: {len(d):2d} runs, mean {statistics.mean(d):+.1f}")

    print("\ngate movement (fraction of Adam's reach): mean over gates / most-moved gate, mean over runs")
    for m in GATED:
        of_method = [r for r in runs if r["method"]["name"] == m]
        if not of_method:
            continue
        avg, top, counts = [], [], defaultdict(int)
        for r in of_method:
            cfg, tr = r["method"]["config"], r["training"]
            reach = cfg["gate_lr"] * schedule_sum(cfg["search_steps"] or tr["max_steps"], tr["warmup_ratio"])
            moved = [abs(math.log(a / (1 - a)) - cfg["gate_init"]) / reach for a in r["extra"]["alpha"]]
            avg.append(statistics.mean(moved))
            top.append(max(moved))
            counts[r["extra"]["chosen_layers"][0]] += 1
        alphas = [a for r in of_method for a in r["extra"]["alpha"]]
        print(f"  {m:10s} {100 * statistics.mean(avg):5.1f} % / {100 * statistics.mean(top):5.1f} %"
              f"  ({len(avg)} runs; final α {min(alphas):.2f}-{max(alphas):.2f})")
        print(f"    chosen layers: {dict(sorted(counts.items()))}")


if __name__ == "__main__":
    main()
