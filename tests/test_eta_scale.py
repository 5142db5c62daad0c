"""Honest ETAs (sptbench/sweep/eta_scale.py): runs nothing measured on their backbone are scaled from a bench file
(`--eta-from`) or other backbones' records by backbone size, step budget and method cost, and `sweep --dry-run` says
which figures are measured, which estimated and which default."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from sptbench.cli.main import main
from sptbench.core.errors import SptbenchError
from sptbench.core.run_schema import RunSpec
from sptbench.models.backbones import backbone_parameters
from sptbench.records.schema import example_record
from sptbench.sweep.eta_scale import Scaler, read_bench

STEPS, BATCH, EVERY = 40, 4, 10


def spec(method: str = "lora", model: str = "tiny-bert", **kw) -> RunSpec:
    return RunSpec(method=method, task="sst2", model=model, shots=16, split_source="lm-bff",
                   train_overrides={"max_steps": STEPS, "batch_size": BATCH, "eval_every": EVERY}, **kw)


def bench_doc(method: str, train_rate: float, eval_rate: float, cost: float, *, params: int = 2_000_000,
              device: str = "cpu (2 threads)", batch: int = 16) -> dict:
    return {"bench_version": 1, "method": {"name": method, "config": {}},
            "backbone": {"id": "ref-backbone", "family": "bert", "num_parameters": params},
            "shape": {"batch_size": batch, "seq_len": 128}, "frozen_layers": "dropout",
            "throughput": {"train_samples_per_s": train_rate, "eval_samples_per_s": eval_rate, "device": device,
                           "dtype": "fp32"},
            "ratios": {"train_vs_floor": cost}}


def write_bench(tmp_path: Path, docs: list[dict]) -> str:
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return str(path)


def record(method: str, backbone: str, params: int, *, train_s: float, eval_rate: float, device="cpu (2 threads)",
           frozen="dropout", n_dev=32, n_test=872) -> dict:
    rec = copy.deepcopy(example_record())
    rec["method"]["name"], rec["task"]["name"] = method, "sst2"
    rec["protocol"].update(shots=16, train_size=None, n_dev=n_dev, n_test=n_test)
    rec["backbone"].update(id=backbone, num_parameters=params)
    rec["training"] = {"max_steps": 100, "batch_size": 8, "eval_every": 20, "frozen_layers": frozen, "dtype": "fp32"}
    rec["time"] = {"wall_s": train_s + 5.0 + 2.0, "train_s": train_s, "eval_s": 5.0}
    rec["throughput"] = {"eval_samples_per_s": eval_rate, "device": device}
    return rec


def test_bench_speeds_scale_by_backbone_size_budget_and_eval_size(tmp_path):
    bench = read_bench([write_bench(tmp_path, [bench_doc("lora", 200.0, 500.0, 0.8)])])
    size = backbone_parameters("tiny-bert") / 2_000_000
    seconds, rule = Scaler([], bench, bench_name="bench b.yaml").estimate(spec())
    assert seconds == pytest.approx(STEPS * BATCH / 200.0 * size)  # no eval sizes known: training only
    assert rule == ("scaled from bench b.yaml, training only (eval size unknown): ref-backbone on cpu (2 threads) "
                    f"x{size:.3g} size")
    # dev and test sizes from records of the task in this setting (any backbone); a deferred test is not counted
    sizes = [record("adapter", "other", 10**6, train_s=1.0, eval_rate=1.0, n_dev=32, n_test=872, frozen="cache")]
    scaler = Scaler(sizes, bench)
    evals = STEPS // EVERY
    seconds, _ = scaler.estimate(spec())
    assert seconds == pytest.approx((STEPS * BATCH / 200.0 + (evals * 32 + 872) / 500.0) * size)
    seconds, _ = scaler.estimate(spec(defer_test=True))
    assert seconds == pytest.approx((STEPS * BATCH / 200.0 + evals * 32 / 500.0) * size)
    # the same bench on a larger backbone: proportionally longer
    large, _ = scaler.estimate(spec(model="roberta-large", defer_test=True))
    assert large / seconds == pytest.approx(backbone_parameters("roberta-large") / backbone_parameters("tiny-bert"))


def test_a_gpu_step_below_the_bench_batch_takes_the_bench_step_time(tmp_path):
    bench = read_bench([write_bench(tmp_path, [bench_doc("lora", 320.0, 1000.0, 0.8, device="NVIDIA H200",
                                                         batch=32)])])
    seconds, rule = Scaler([], bench).estimate(spec())
    size = backbone_parameters("tiny-bert") / 2_000_000
    assert seconds == pytest.approx(STEPS * 32 / 320.0 * size) and "batch 4 at the bench's batch-32 step time" in rule


def test_other_backbones_records_scale_by_size_on_this_device_and_mode():
    tiny = backbone_parameters("tiny-bert")
    here = record("lora", "minilm-l6", 4 * tiny, train_s=80.0, eval_rate=100.0)
    elsewhere = record("lora", "minilm-l6", 4 * tiny, train_s=8.0, eval_rate=1000.0, device="NVIDIA H100")
    cached = record("lora", "minilm-l6", 4 * tiny, train_s=1.0, eval_rate=1000.0, frozen="cache")
    seconds, rule = Scaler([elsewhere, cached, here], device="cpu (2 threads)").estimate(spec())
    per_example = 80.0 / (100 * 8)
    expected = (STEPS * BATCH * per_example + 2.0 + (STEPS // EVERY * 32 + 872) / 100.0) / 4
    assert seconds == pytest.approx(expected)
    assert rule == "scaled from recorded lora runs (task/setting): minilm-l6 on cpu (2 threads) x0.25 size"
    assert Scaler([cached]).estimate(spec()) is None  # another mode (frozen-layer cache) is not this run's speed


def test_method_cost_from_bench_ratios_scales_other_methods_recorded_on_this_backbone(tmp_path):
    """A method never run on this backbone: another method's records on it, times the bench's cost ratio, come
    before the bench's own speed (they measured this backbone, these inputs, this machine)."""
    bench = read_bench([write_bench(tmp_path, [bench_doc("adapter", 100.0, 500.0, 0.9),
                                               bench_doc("spt_darts", 60.0, 500.0, 0.45)])])
    params = backbone_parameters("tiny-bert")
    adapter = record("adapter", "tiny-bert", params, train_s=40.0, eval_rate=100.0)
    scaler = Scaler([adapter], bench, device="cpu (2 threads)", bench_name="bench b.yaml")
    seconds, rule = scaler.estimate(spec("spt_darts", defer_test=True))
    per_example = 40.0 / 800 * 0.9 / 0.45  # spt_darts's throughput over the floor is half adapter's
    assert seconds == pytest.approx(STEPS * BATCH * per_example + 2.0 + STEPS // EVERY * 32 / 100.0)
    assert rule == "scaled from recorded adapter x2 method cost (bench b.yaml): tiny-bert on cpu (2 threads) x1 size"
    # lora: in neither the records nor the bench: nothing honest to scale
    assert scaler.estimate(spec("lora")) is None
    # without records of this backbone, the bench's own speed of the method
    assert Scaler([], bench, bench_name="bench b.yaml").estimate(spec("spt_darts"))[1].startswith(
        "scaled from bench b.yaml, training only")


def test_bad_bench_files_are_one_line(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("a: 1\n")
    with pytest.raises(SptbenchError, match="no `sptbench bench` records"):
        read_bench([str(empty)])
    broken = write_bench(tmp_path, [{"bench_version": 1, "method": {"name": "lora"}}])
    with pytest.raises(SptbenchError, match="not a `sptbench bench` record"):
        read_bench([broken])


def test_dry_run_names_the_source_of_every_figure(tmp_path, data_dir, capsys):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "eta", "model": "tiny-bert", "tasks": ["sst2"], "methods": ["lora", "adapter"], "shots": 16,
        "split_source": "lm-bff", "seeds": [13], "results_dir": str(tmp_path / "results"),
        "train": {"max_steps": STEPS, "batch_size": BATCH, "eval_every": EVERY}}))
    args = ["sweep", str(sweep), "--dry-run", "--data-dir", str(data_dir)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "ETA 4m00s sequential (2 default)" in out and "  2 default at 120 s/run: nothing measured" in out
    bench = write_bench(tmp_path, [bench_doc("lora", 200.0, 500.0, 0.8)])
    assert main([*args, "--eta-from", bench]) == 0
    out = capsys.readouterr().out
    assert "(1 estimated, 1 default)" in out
    assert "  1 estimated scaled from bench bench.yaml: ref-backbone on cpu (2 threads) x" in out  # sizes from data
    assert main([*args, "--eta-from", str(tmp_path / "missing.yaml")]) == 2
