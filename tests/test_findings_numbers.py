"""scripts/findings_numbers.py: the README Findings' numbers, recomputed from records."""

from __future__ import annotations

import importlib.util
import math
import random
import statistics
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import make_record

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "findings_numbers.py"
spec = importlib.util.spec_from_file_location("findings_numbers", SCRIPT)
findings = importlib.util.module_from_spec(spec)
spec.loader.exec_module(findings)

METHODS = ("prompt_tuning", "p_tuning_v2", "lpt", "spt", "spt_darts")
TASKS = ("sst2", "trec")


def _record(method: str, task: str, seed: int, test: float, rng: random.Random) -> dict:
    gated = method in findings.GATED
    rec = make_record(
        method={"name": method, "config": {"gate_lr": 0.01, "gate_init": 0.0, "search_steps": None} if gated else {}},
        task__name=task,
        protocol__seed=seed,
        training={"max_steps": 100, "warmup_ratio": 0.06},
    )
    rec["metrics"] = {"selection_metric": "accuracy", "dev": {"score": rng.random()}, "test": {"score": test}}
    if gated:
        alpha = [round(rng.uniform(0.3, 0.7), 6) for _ in range(6)]
        rec["extra"] = {"alpha": alpha, "chosen_layers": [rng.randrange(6)]}
    return rec


def test_schedule_sum_matches_the_training_schedule():
    import torch

    from sptbench.training.loop import build_optimizer

    param = torch.nn.Parameter(torch.zeros(1))
    opt, sched = build_optimizer([param], 1.0, 0.0, 50, 0.1)
    seen = 0.0
    for _ in range(50):
        seen += opt.param_groups[0]["lr"]
        param.grad = torch.zeros(1)
        opt.step()
        sched.step()
    assert findings.schedule_sum(50, 0.1) == pytest.approx(seen)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_win_counts_layers_and_gate_movement(tmp_path, capsys, monkeypatch, seed):
    rng = random.Random(seed)
    scores = {(m, t): [rng.uniform(0.4, 0.9) for _ in range(3)] for m in METHODS for t in TASKS}
    runs = [_record(m, t, s, scores[(m, t)][i], rng) for (m, t) in scores for i, s in enumerate((13, 21, 42))]
    for rec in runs[:: len(runs) // 4]:  # some gated runs chose the input layer, whatever the draw
        if rec["method"]["name"] in findings.GATED:
            rec["extra"]["chosen_layers"] = [0]
    runs.append(make_record(status="failed", task__name="sst2"))  # never counted
    table = tmp_path / "n1000.yaml"
    table.write_text(yaml.safe_dump_all(runs, sort_keys=False), encoding="utf-8")

    monkeypatch.setattr(sys, "argv", ["findings_numbers", str(table), "--tasks", *TASKS])
    findings.main()
    out = capsys.readouterr().out

    assert out.startswith(f"{len(runs) - 1} ok runs")
    mean = {k: statistics.mean(v) for k, v in scores.items()}
    for base in ("prompt_tuning", "p_tuning_v2", "lpt"):
        wins = sum(mean[("spt", t)] > mean[(base, t)] for t in TASKS)
        assert f"spt vs {base}: {wins} of {len(TASKS)}" in out

    gated = [r for r in runs if r["method"]["name"] == "spt"]
    reach = 0.01 * findings.schedule_sum(100, 0.06)
    moved = [[abs(math.log(a / (1 - a))) / reach for a in r["extra"]["alpha"]] for r in gated]
    avg = 100 * statistics.mean(statistics.mean(m) for m in moved)
    assert f"{'spt':10s} {avg:5.1f} %" in out

    layer0 = [r for r in runs if r["method"]["name"] in findings.GATED and r["extra"]["chosen_layers"] == [0]]
    assert layer0
    delta = statistics.mean(100 * r["metrics"]["test"]["score"] - 100 * mean[("lpt", r["task"]["name"])]
                            for r in layer0)
    assert f"layer 0: {len(layer0):2d} runs, mean {delta:+.1f}" in out
