"""`sptbench bench` (sptbench/run/bench.py) on tiny-bert: the YAML record, the floor and its ratios, errors; and the
`roberta-large-random` backbone alias scripts/gpu_check.sh benches (sizes checked without building it)."""

from __future__ import annotations

import pytest
import torch
import yaml

from sptbench.cli.main import main
from sptbench.core.errors import SptbenchError
from sptbench.methods.registry import load_methods
from sptbench.models.backbones import RANDOM_CONFIGS, load_backbone
from sptbench.records.schema import FIELD_NAMES as _SCHEMA
from sptbench.run.bench import Shape, add_input_gradient, bench, synthetic_batch
from sptbench.run.provenance import hardware_id

TINY = ["--model", "tiny-bert", "--batch", "2", "--seq-len", "16", "--steps", "2", "--warmup", "1"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_bench_all_methods_writes_records_with_run_throughput_keys_and_floor_ratios(tmp_path, capsys):
    out = tmp_path / "bench" / "tiny.yaml"
    assert main(["bench", "--method", "all", *TINY, "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    records = list(yaml.safe_load_all(out.read_text()))
    assert [r["method"]["name"] for r in records] == [n for n, m in load_methods().items() if "linear" in m.heads]
    for rec in records:
        # the run records' throughput section, with the optional `hardware` (older run records lack it)
        assert set(rec["throughput"]) == set(_SCHEMA["throughput"]) | {"hardware"}
        assert rec["throughput"]["hardware"] == hardware_id(torch.device("cpu"))
        t, floor = rec["throughput"], rec["floor"]
        assert t["train_samples_per_s"] > 0 and t["eval_samples_per_s"] > 0 and t["peak_memory_mb"] > 0
        assert t["train_tokens_per_s"] == pytest.approx(t["train_samples_per_s"] * 16, rel=1e-3)  # full length
        assert rec["ratios"]["train_vs_floor"] == pytest.approx(t["train_samples_per_s"] / floor["train_samples_per_s"],
                                                                rel=1e-3)
        assert rec["ratios"]["eval_vs_floor"] == pytest.approx(t["eval_samples_per_s"] / floor["eval_samples_per_s"],
                                                               rel=1e-3)
        assert rec["shape"] == {"batch_size": 2, "seq_len": 16, "steps": 2, "warmup": 1}
        assert rec["backbone"]["id"] == "tiny-bert" and rec["throughput"]["dtype"] == "fp32"
        assert rec["params"]["backbone"] == rec["backbone"]["num_parameters"]
    assert all(r["floor"] == records[0]["floor"] for r in records)  # one floor for all, in the same process
    floor = records[0]["floor"]  # measured before and after the methods; the ratios use the faster
    assert len(floor["measurements"]["train_samples_per_s"]) == 2
    assert floor["train_samples_per_s"] == max(floor["measurements"]["train_samples_per_s"])
    assert floor["eval_samples_per_s"] == max(floor["measurements"]["eval_samples_per_s"])
    assert all(r["frozen_layers"] == "dropout" for r in records)
    assert "floor (frozen fwd+bwd / fwd)" in printed and "train/floor" in printed
    finetune = next(r for r in records if r["method"]["name"] == "finetune")
    assert finetune["params"]["trainable"] == finetune["params"]["backbone"]


def test_floor_backpropagates_through_every_layer_and_nothing_trains_but_the_shift():
    torch.manual_seed(0)
    model, _, _ = load_backbone("tiny-bert", 2)
    model.freeze_backbone()
    assert model.first_trainable_layer() == len(model.layers)  # the head alone: the backbone runs without autograd
    shift = add_input_gradient(model)
    assert model.first_trainable_layer() == 0
    batch = synthetic_batch(Shape(batch=2, seq_len=8), 30522, torch.device("cpu"))
    model.train()
    loss = model(batch["input_ids"], batch["attention_mask"]).logits.sum()
    loss.backward()
    assert shift.grad is not None and shift.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.backbone.named_parameters() if not n.endswith("bench_shift"))


def test_bench_one_method_with_set_and_bf16(tmp_path):
    records = bench(["prompt_tuning"], "tiny-bert", Shape(batch=2, seq_len=8, steps=1, warmup=0), device="cpu",
                    dtype="bf16", overrides={"num_tokens": 3})
    (rec,) = records
    assert rec["method"]["config"]["num_tokens"] == 3 and rec["throughput"]["dtype"] == "bf16"
    assert rec["params"]["trainable"] == 3 * 32


def test_bench_frozen_layers_cache_is_recorded_and_fills_the_cache(monkeypatch):
    seen = []
    original = bench.__globals__["measure"]

    def spy(model, *args, **kw):
        got = original(model, *args, **kw)
        seen.append((model.frozen_mode, len(model.frozen_cache)))
        return got

    monkeypatch.setitem(bench.__globals__, "measure", spy)
    (rec,) = bench(["lpt"], "tiny-bert", Shape(batch=3, seq_len=8, steps=2, warmup=1), device="cpu",
                   frozen_layers="cache")
    assert rec["frozen_layers"] == "cache"
    # floor (no frozen layers: nothing cached), lpt at the middle layer (the 3 examples cached), floor again
    assert seen == [("dropout", 0), ("cache", 3), ("dropout", 0)]
    with pytest.raises(SptbenchError, match="unknown frozen layers mode 'frozen'. Choices: dropout, eval, cache"):
        bench(["lpt"], "tiny-bert", Shape(batch=1, seq_len=4, steps=1, warmup=0), device="cpu", frozen_layers="frozen")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "nope"], "unknown method 'nope'"),
        (["--method", "all", "--set", "num_tokens=3"], "--set applies to one method"),
        (["--method", "head", "--seq-len", "4000"], "too long for tiny-bert"),
        (["--method", "head", "--steps", "0"], "--steps: must be a positive integer"),
        (["--method", "prompt_tuning", "--set", "bogus=1"], "unknown --set key"),
    ],
)
def test_bench_user_errors_are_one_line(args, message, capsys):
    assert main(["bench", *args, "--model", "tiny-bert", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SptbenchError, match="no CUDA device"):
        bench(["head"], "tiny-bert", Shape(batch=1, seq_len=4, steps=1, warmup=0), device="cuda")


def test_roberta_large_random_has_roberta_large_sizes():
    from transformers import AutoModel

    config = RANDOM_CONFIGS["roberta-large-random"](30522)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (1024, 24, 16)
    assert (config.intermediate_size, config.vocab_size, config.max_position_embeddings) == (4096, 50265, 514)
    with torch.device("meta"):  # no memory, no init time
        backbone = AutoModel.from_config(config)
    assert sum(p.numel() for p in backbone.parameters()) == 355_359_744  # roberta-large's count


def test_bench_prompt_head_skips_what_trains_nothing(capsys):
    assert main(["bench", "--method", "all", *TINY, "--device", "cpu", "--head", "prompt"]) == 0
    out = capsys.readouterr()
    rows = [line.split("|")[1].strip() for line in out.out.splitlines() if line.startswith("| ")][1:]
    assert "head" not in rows and "zero_shot" not in rows and {"lora", "prompt_tuning", "spt"} <= set(rows)
    assert "(prompt head)" in out.out and "skipped head" in out.err
