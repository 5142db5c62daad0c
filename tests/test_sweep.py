"""`sptbench sweep` (sptbench/sweep/): grid expansion, strict validation before any run, resume, interruption,
dev-only selection, the submitit array, concurrent writers, and data-parallel training (train.py + runner.py)."""

from __future__ import annotations

import collections
import copy
import itertools
import multiprocessing as mp
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import sptbench.training.loop as train_mod
from sptbench.cli.main import main
from sptbench.core import run_schema as schema
from sptbench.core.errors import SptbenchError
from sptbench.records.io import read_records, read_table
from sptbench.records.keys import canonical_json, record_key
from sptbench.records.schema import example_record, validate_record
from sptbench.reports.selection import select_by_dev
from sptbench.sweep.claims import claim, claim_name, claims_dir
from sptbench.sweep.launch import run_local, submit
from sptbench.sweep.plan import plan, spec_key, spec_record
from sptbench.sweep.spec import load_sweep, parse_sweep
from tests.helpers import classifier_output, fresh_run_id

REPO = Path(__file__).resolve().parents[1]
FAST = {"max_steps": 4, "eval_every": 2, "batch_size": 4, "eval_batch_size": 128}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_sweep(tmp_path: Path, data_dir: Path, **kw) -> dict:
    """A 2-run sweep: head on RTE, 4-shot, tiny-bert, seeds 13 and 21."""
    raw = {
        "name": "tiny",
        "model": "tiny-bert",
        "data_dir": str(data_dir),
        "results_dir": str(tmp_path / "results"),
        "tasks": ["rte"],
        "methods": ["head"],
        "shots": 4,
        "seeds": [13, 21],
        "train": dict(FAST),
    }
    raw.update(kw)
    return raw


def write(tmp_path: Path, raw: dict, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------------------- expansion


@pytest.mark.parametrize(
    "name, runs",
    [("cpu-16shot", 270), ("cpu-1k", 105), ("paper-16shot", 450), ("paper-full", 400), ("cpu-16shot-tuned", 1350),
     ("cpu-1k-tuned", 216), ("mpnet-16shot", 99), ("powered-16shot", 1080), ("paper-16shot-deberta", 1250),
     # the paper's tables per backbone, with their learning-rate grids (5-8 s each to check every grid point)
     *(pytest.param(name, runs, marks=pytest.mark.slow) for name, runs in (
         ("paper-16shot-roberta", 1250), ("paper-16shot-gpt2", 1250), ("paper-full-roberta", 1200),
         ("paper-full-deberta", 1200), ("paper-full-gpt2", 1200)))],
)
def test_ready_sweeps_expand_to_their_counts(name, runs, data_dir):
    sweep = load_sweep(REPO / "sweeps" / f"{name}.yaml", overrides={"data_dir": str(data_dir)})
    specs = sweep.specs()
    assert len(specs) == runs
    assert len({spec_key(s) for s in specs}) == runs  # every run is a distinct experiment


def test_dry_run_counts_cpu_16shot_and_runs_nothing(tmp_path, data_dir, capsys, monkeypatch):
    monkeypatch.setattr("sptbench.run.runner.run", lambda spec: pytest.fail("a dry run ran something"))
    sweep_file = str(REPO / "sweeps" / "cpu-16shot.yaml")
    assert main(["sweep", sweep_file, "--dry-run", "--data-dir", str(data_dir), "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "270 runs: 0 done, 0 failed before" in out and "270 to run" in out
    assert "ETA 9h00m sequential" in out  # 270 x the 120 s default: nothing recorded yet


def test_grid_order_last_key_fastest_and_method_values_override_shared(tmp_path, data_dir):
    raw = tiny_sweep(
        tmp_path,
        data_dir,
        methods=["head", "prompt_tuning"],
        seeds=[13],
        train={**FAST, "lr": 0.5},
        method_train={"prompt_tuning": {"lr": [0.3, 0.1], "batch_size": [2, 4]}},
        method_set={"prompt_tuning": {"num_tokens": [5, 10]}},
    )
    sweep = parse_sweep(raw)
    assert [t["lr"] for _, t in sweep.configs["head"]] == [0.5]
    pt = sweep.configs["prompt_tuning"]
    assert len(pt) == 8
    # keys in order of first appearance (shared `train` first), the last one varying fastest
    assert [(s["num_tokens"], t["batch_size"], t["lr"]) for s, t in pt[:4]] == [
        (5, 2, 0.3),
        (5, 2, 0.1),
        (5, 4, 0.3),
        (5, 4, 0.1),
    ]
    assert pt[4][0] == {"num_tokens": 10}
    specs = [s for s in sweep.specs() if s.method == "prompt_tuning"]
    assert [s.sweep["config_index"] for s in specs] == list(range(8))
    assert specs[0].sweep == {"name": "tiny", "config_index": 0, "configs": 8}


def test_regimes_grid_over_shots_and_train_size(tmp_path, data_dir):
    sweep = parse_sweep(tiny_sweep(tmp_path, data_dir, shots=[4, 8], train_size=100))
    assert sweep.regimes == [(4, None), (8, None), (None, 100)]
    assert len(sweep.specs()) == 3 * 2
    full = parse_sweep(tiny_sweep(tmp_path, data_dir, shots=None))
    assert full.regimes == [(None, None)]


def test_split_source_list_runs_each_seed_once_per_source(tmp_path, data_dir, capsys, monkeypatch):
    """`split_source: [lm-bff, sample]` is an axis crossed with the seeds: every (task, method, config, seed) runs
    once per split source, each run's key holds its own source, and the plan header names both."""
    seeds = random.Random(random.randrange(10**6)).sample([13, 21, 42, 87, 100], 2)
    raw = tiny_sweep(tmp_path, data_dir, shots=16, seeds=seeds, split_source=["lm-bff", "sample"],
                     methods=["head", "lora"], method_train={"lora": {"lr": [1e-3, 1e-2]}})
    sweep = parse_sweep(raw)
    assert sweep.split_sources == ["lm-bff", "sample"]
    specs = sweep.specs()
    cell = lambda s: (s.task, s.method, s.sweep["config_index"], s.seed)  # noqa: E731
    assert len(specs) == (1 + 2) * 2 * 2
    assert collections.Counter(cell(s) for s in specs) == {c: 2 for c in {cell(s) for s in specs}}
    assert {(cell(s), s.split_source) for s in specs} == {(c, src) for c in map(cell, specs)
                                                           for src in ("lm-bff", "sample")}
    # grid order: configuration, then split source, then seed
    assert [(s.split_source, s.seed) for s in specs[:4]] == [(src, seed) for src in ("lm-bff", "sample")
                                                             for seed in seeds]
    keys = [dict(zip(schema.KEY_FIELDS, record_key(spec_record(s)), strict=True)) for s in specs]
    assert [k["split_source"] for k in keys] == [s.split_source for s in specs]
    assert len({spec_key(s) for s in specs}) == len(specs)  # two sources: two experiments per seed
    one = parse_sweep(tiny_sweep(tmp_path, data_dir, shots=16, seeds=seeds, split_source="lm-bff"))
    assert one.split_sources == ["lm-bff"] and [s.split_source for s in one.specs()] == ["lm-bff"] * 2
    monkeypatch.setattr("sptbench.run.runner.run", lambda spec: pytest.fail("a dry run ran something"))
    assert main(["sweep", str(write(tmp_path, raw)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 methods x 2 seeds x 2 split sources (lm-bff, sample) ->" in out and "12 runs: 0 done" in out
    assert main(["sweep", str(write(tmp_path, {**raw, "split_source": "lm-bff"})), "--dry-run"]) == 0
    assert "2 methods x 2 seeds (split lm-bff) ->" in capsys.readouterr().out


def test_split_source_list_with_lm_bff_needs_a_local_mirror(tmp_path, data_dir, monkeypatch):
    for var in ("SPTBENCH_DATA_PATH", "SPTBENCH_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    raw = tiny_sweep(tmp_path, data_dir, shots=16, split_source=["sample", "lm-bff"])
    del raw["data_dir"]
    with pytest.raises(SptbenchError, match="split_source 'lm-bff' reads the published splits from a local mirror"):
        parse_sweep(raw)
    assert parse_sweep({**raw, "split_source": ["sample"]}).split_sources == ["sample"]


# ---------------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "change, message",
    [
        ({"epochs": 3}, "unknown key in .* 'epochs'"),
        ({"tasks": []}, "tasks: empty grid"),
        ({"method_train": {"head": {"lr": []}}}, r"train \(for head\)\.lr: empty grid"),
        ({"method_set": {"head": {"x": [1, 2]}}}, "method_set.head: unknown --set key"),
        ({"method_train": {"lora": {"lr": 1e-3}}}, "names method 'lora', which is not in 'methods'"),
        ({"methods": ["head", "nope"]}, "unknown method in .* 'nope'"),
        ({"train": {"max_step": 5}}, "unknown training option 'max_step'"),
        ({"split_source": "lm-bff"}, "lm-bff' needs shots=16"),
        ({"split_source": ["sample", "lm-bff"]}, r"rte \(4shot, seed 13, split lm-bff\): split_source 'lm-bff' needs"),
        ({"split_source": ["lm-bff", "lmbff"]}, r"unknown split_source in .* 'lmbff'\. Did you mean 'lm-bff'\? "
                                                 "Choices: lm-bff, sample$"),
        ({"split_source": ["sample", 3]}, "unknown split_source in .* '3'. Choices: lm-bff, sample$"),
        ({"split_source": ["sample", "sample"]}, "split_source: 'sample' is listed twice"),
        ({"split_source": []}, "split_source: empty grid"),
        ({"split_source": "lmbff"}, "unknown split_source in .* 'lmbff'"),
        ({"slurm": {"queue": "gpu"}}, "unknown slurm option"),
        ({"launcher": "kubernetes"}, "unknown launcher 'kubernetes'"),
        ({"method_train": {"head": {"lr": "fast"}}}, "training options for head: 'lr' expects float, got 'fast'"),
        ({"method_train": {"head": 0.1}}, "method_train.head must be a mapping"),
        ({"seeds": [13, 13]}, "13 is listed twice"),
        ({"head": "prompt"}, "method 'head' works with --head linear"),
        ({"head": "lm"}, "unknown head 'lm'"),
        ({"head": []}, "head: empty grid"),
        ({"methods": ["lora"], "head": "prompt", "template": "nope"}, "unknown template of task 'rte' 'nope'"),
    ],
)
def test_bad_sweep_files_fail_with_one_line_before_any_run(tmp_path, data_dir, capsys, monkeypatch, change, message):
    monkeypatch.setattr("sptbench.run.runner.run", lambda spec: pytest.fail("a run started"))
    path = write(tmp_path, {**tiny_sweep(tmp_path, data_dir), **change})
    with pytest.raises(SptbenchError, match=message):
        load_sweep(path)
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sptbench: error:") and "\n" not in err


def test_missing_launcher_package_is_one_clear_error(tmp_path, data_dir, capsys, monkeypatch):
    monkeypatch.setattr("sptbench.run.runner.run", lambda spec: pytest.fail("a run started"))
    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` now raises ImportError
    path = write(tmp_path, tiny_sweep(tmp_path, data_dir))
    assert main(["sweep", str(path), "--launcher", "slurm"]) == 2
    err = capsys.readouterr().err.strip()
    assert "launcher 'slurm' needs the package 'submitit'" in err and "\n" not in err
    assert not (tmp_path / "results").exists()


# ---------------------------------------------------------------------------------------------------- resume


def test_resume_skips_recorded_runs_and_a_changed_budget_reruns(tmp_path, data_dir, capsys, monkeypatch):
    path = write(tmp_path, tiny_sweep(tmp_path, data_dir))
    assert main(["sweep", str(path), "--quiet"]) == 0
    records = read_records([tmp_path / "results"])
    assert len(records) == 2 and {r["protocol"]["seed"] for r in records} == {13, 21}
    assert all(r["sweep"]["name"] == "tiny" for r in records)
    capsys.readouterr()
    assert main(["sweep", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "2 runs: 2 done" in out and "0 to run" in out
    assert len(read_records([tmp_path / "results"])) == 2
    p = plan(load_sweep(path))
    assert (len(p.done), len(p.todo)) == (2, 0)
    assert p.eta_s == 0
    # a different budget is a different experiment; recorded times drive the ETA, the part outside evaluation
    # scaled by the training examples the new budget sees (3x the steps at the same batch size)
    changed_sweep = parse_sweep(tiny_sweep(tmp_path, data_dir, train={**FAST, "max_steps": 3 * FAST["max_steps"]}))
    changed = plan(changed_sweep)
    assert (len(changed.done), len(changed.todo)) == (0, 2)
    assert changed.eta_rules == {"method/task/backbone/setting": 2}
    expected = [r["time"]["eval_s"] + 3 * (r["time"]["wall_s"] - r["time"]["eval_s"]) for r in records]
    assert changed.eta_s == pytest.approx(sum(expected))
    assert changed.eta_s > sum(r["time"]["wall_s"] for r in records)
    # runs recorded on another device (a GPU, or the CPU at another thread count, as in parallel sweep parts) are
    # used only where none were recorded on the device these runs will use
    elsewhere = [{**r, "throughput": {**r["throughput"], "device": "cpu (99 threads)"},
                  "time": {**r["time"], "wall_s": 10 * r["time"]["wall_s"]}} for r in records]
    both = plan(changed_sweep, records + elsewhere)
    assert both.eta_s == pytest.approx(changed.eta_s) and both.eta_rules == changed.eta_rules
    other = plan(changed_sweep, elsewhere)
    assert other.eta_rules == {"method/task/backbone/setting (other devices)": 2}
    assert other.eta_s > 5 * changed.eta_s
    # an explicit device must match the recorded one (a local sweep asks for CUDA only where there is one)
    monkeypatch.setattr("sptbench.sweep.spec._check_local_device", lambda device: None)
    assert len(plan(parse_sweep(tiny_sweep(tmp_path, data_dir, device="cuda"))).todo) == 2


def test_eta_for_a_task_the_method_has_not_run_scales_by_the_task_factor():
    """A method with no run on a task is estimated from its runs on the others, times how much longer the other
    methods took on that task than on all tasks (same backbone and setting)."""
    from types import SimpleNamespace

    from sptbench.sweep.eta import estimate_s, wall_index

    rng = random.Random()
    base = {("a", "x"): rng.uniform(20, 60), ("a", "y"): rng.uniform(5, 20), ("b", "y"): rng.uniform(5, 40)}
    records = []
    for (method, task), wall in base.items():
        rec = copy.deepcopy(example_record())
        rec["method"]["name"], rec["task"]["name"] = method, task
        rec["time"] = {**rec["time"], "wall_s": wall, "eval_s": 0.0}
        records.append(rec)
    protocol = records[0]["protocol"]
    spec = SimpleNamespace(method="b", task="x", model=records[0]["backbone"]["id"], shots=protocol["shots"],
                           train_size=protocol["train_size"])
    factor = base[("a", "x")] / base[("a", "y")]  # a's time on x over its time on the other tasks
    seconds, rule = estimate_s(spec, wall_index(records))
    assert (seconds, rule) == (pytest.approx(base[("b", "y")] * factor), "method/backbone/setting x task factor")
    # no other method on the task: the method's own mean, unscaled
    seconds, rule = estimate_s(SimpleNamespace(**{**vars(spec), "task": "z"}), wall_index(records))
    assert (seconds, rule) == (pytest.approx(base[("b", "y")]), "method/backbone/setting")


def test_failed_runs_are_skipped_unless_retried(tmp_path, data_dir, capsys):
    sweep = parse_sweep(tiny_sweep(tmp_path, data_dir, seeds=[13]))
    rec = copy.deepcopy(example_record())
    spec = sweep.specs()[0]
    assert run_local([spec], progress=False) == ([], [])
    ok = read_records([tmp_path / "results"])[0]
    line = capsys.readouterr().err.strip().splitlines()[-1]  # one line per finished run, even without a bar
    score, wall = ok["metrics"]["test"]["score"], ok["time"]["wall_s"]
    assert line == f"[1/1] {spec.method}/{spec.task} {spec.shots}shot seed 13: test {score:.4f} ({wall:.0f} s)"
    failed = {**ok, "status": "failed", "error": "loss became nan", "run_id": rec["run_id"]}
    assert validate_record(failed) == []
    assert len(plan(sweep, [failed]).failed) == 1 and not plan(sweep, [failed]).todo
    assert len(plan(sweep, [failed], retry_failed=True).todo) == 1
    assert len(plan(sweep, [failed, ok]).done) == 1


def test_interrupted_run_leaves_no_record_and_the_sweep_resumes(tmp_path, data_dir, monkeypatch):
    sweep = parse_sweep(tiny_sweep(tmp_path, data_dir))
    calls = {"n": 0}
    real = train_mod.loss_on

    def interrupt_in_second_run(model, batch):
        calls["n"] += 1
        if calls["n"] == FAST["max_steps"] + 2:  # step 2 of the second run
            raise KeyboardInterrupt
        return real(model, batch)

    monkeypatch.setattr(train_mod, "loss_on", interrupt_in_second_run)
    with pytest.raises(KeyboardInterrupt):
        run_local(sweep.specs(), progress=False)
    (table,) = (tmp_path / "results").rglob("*.yaml")
    (rec,) = read_table(table)
    assert rec["protocol"]["seed"] == 13 and rec["outcome"]["steps_run"] == FAST["max_steps"]
    assert not [f for f in table.parent.iterdir() if f.name.endswith(".tmp")]  # no half-written temp file
    p = plan(sweep)
    assert (len(p.done), [s.seed for s in p.todo]) == (1, [21])


# ---------------------------------------------------------------------------------------------------- selection


def fixture_record(lr: float, dev: float, test: float, seed: int = 13, index: int | None = None, created: str = ""):
    rec = copy.deepcopy(example_record())
    rec["run_id"] = fresh_run_id()  # the strict pattern; distinct per record
    rec["created"] = created or rec["created"]
    rec["protocol"]["seed"] = seed
    rec["training"]["lr"] = lr
    rec["metrics"]["dev"] = {"accuracy": dev, "score": dev}
    rec["metrics"]["test"] = {"accuracy": test, "score": test}
    if index is not None:
        rec["sweep"] = {"name": "s", "config_index": index, "configs": 2}
    return rec


def test_select_by_dev_never_looks_at_test(tmp_path, capsys):
    records = [
        fixture_record(0.3, dev=0.80, test=0.60, seed=13),
        fixture_record(0.1, dev=0.70, test=0.90, seed=13),  # best on test, worse on dev: must lose
        fixture_record(0.3, dev=0.60, test=0.50, seed=21),
        fixture_record(0.1, dev=0.75, test=0.55, seed=21),
    ]
    chosen = select_by_dev(records)
    assert [(r["protocol"]["seed"], r["training"]["lr"]) for r in chosen] == [(13, 0.3), (21, 0.1)]
    table = tmp_path / "v1" / "roberta-large" / "16shot.yaml"
    table.parent.mkdir(parents=True)
    table.write_text("".join(yaml.safe_dump(r, sort_keys=False, explicit_start=True) for r in records))
    assert main(["table", str(table), "--select-by-dev", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert "57.5" in out.splitlines()[1]  # mean test of the dev-selected runs: (60 + 55) / 2, not (90 + 55) / 2


def test_a_dev_selected_table_has_one_row_per_method_and_says_what_won(tmp_path, capsys):
    """Winners with different method configs (LPT's layer chosen on dev) make one row, not one per config; a note
    counts the winning values; an incomplete group's runs are named as awaiting, not as lost."""
    rng = random.Random(20)
    records = []
    for seed in (13, 21, 42):
        for layer, lr in itertools.product((1, 4), (0.1, 0.3)):
            rec = fixture_record(lr, dev=rng.random(), test=rng.random(), seed=seed)
            rec["method"]["config"] = {**rec["method"]["config"], "layer": layer}
            records.append(rec)
    chosen = select_by_dev(records)
    table = tmp_path / "v1" / "roberta-large" / "16shot.yaml"
    table.parent.mkdir(parents=True)
    table.write_text("".join(yaml.safe_dump(r, sort_keys=False, explicit_start=True) for r in records))
    assert main(["table", str(table), "--select-by-dev"]) == 0
    out = capsys.readouterr().out
    method = records[0]["method"]["name"]
    rows = [line for line in out.splitlines() if line.startswith(f"| {method}")]
    assert len(rows) == 1
    mean = statistics.mean(100 * r["metrics"]["test"]["score"] for r in chosen)
    assert f"{mean:.1f}" in rows[0]
    layers = collections.Counter(r["method"]["config"]["layer"] for r in chosen)
    assert len(layers) > 1  # the seeded draw makes both layers win somewhere (what splits rows without selection)
    assert ", ".join(f"{v} x{n}" for v, n in sorted(layers.items(), key=lambda kv: (-kv[1], kv[0]))) in out
    assert "awaiting" not in out and "not tested" not in out
    # the same runs recorded untested by a test-once sweep whose groups are not complete: awaiting, not lost
    table.write_text("".join(yaml.safe_dump({**r, "selection": {"tested": False}}, sort_keys=False,
                                            explicit_start=True) for r in records[:2]) +
                     yaml.safe_dump(records[4], sort_keys=False, explicit_start=True))
    assert main(["table", str(table)]) == 0
    out = capsys.readouterr().out
    assert "2 run(s) not counted: their selection group is not complete yet" in out and "lost on dev" not in out


def test_select_by_dev_ties_go_to_grid_order_then_creation(tmp_path):
    # the later grid point was recorded first (array jobs finish in any order): grid order still wins the tie
    late = fixture_record(0.1, dev=0.7, test=0.9, index=1, created="2026-01-01T00:00:00+00:00")
    early = fixture_record(0.3, dev=0.7, test=0.5, index=0, created="2026-01-02T00:00:00+00:00")
    assert select_by_dev([late, early]) == [early]
    # without sweep info: the earliest created
    a = fixture_record(0.1, dev=0.7, test=0.9, created="2026-01-02T00:00:00+00:00")
    b = fixture_record(0.3, dev=0.7, test=0.5, created="2026-01-01T00:00:00+00:00")
    assert select_by_dev([a, b]) == [b]
    failed = {**fixture_record(0.03, dev=0.0, test=0.0), "status": "failed", "error": "nan"}
    assert select_by_dev([a, failed, b]) == [failed, b]  # failed runs pass through for the table's note


# ---------------------------------------------------------------------------------------------------- dispatch


@pytest.mark.slow  # each job is a fresh Python process importing torch + transformers: ~45 s on 2 busy cores
def test_submitit_local_executor_runs_a_two_run_array(tmp_path, data_dir):
    pytest.importorskip("submitit")
    sweep = parse_sweep(tiny_sweep(tmp_path, data_dir))
    jobs = submit(sweep.specs(), folder=tmp_path / "logs" / "%j", cluster="local", name="t", time_min=5)
    assert len(jobs) == 2
    results = [job.result() for job in jobs]
    assert [r["status"] for r in results] == ["ok", "ok"]
    records = read_records([tmp_path / "results"])
    assert sorted(r["run_id"] for r in records) == sorted(r["run_id"] for r in results)
    assert len(plan(sweep).todo) == 0


def test_slurm_launcher_through_submitit_debug_executor(tmp_path, data_dir, capsys):
    """The CLI's slurm path end to end (options, array, summary), in this process via submitit's debug executor."""
    pytest.importorskip("submitit")
    path = write(tmp_path, tiny_sweep(tmp_path, data_dir, slurm={"time": 5, "partition": "gpu", "gpus": 0}))
    code = main(["sweep", str(path), "--launcher", "slurm", "--cluster", "debug", "--mem", "4", "--quiet",
                 "--log-dir", str(tmp_path / "logs")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "submitted 2 jobs" in out and "ran 2: 2 ok, 0 failed" in out
    assert len(read_records([tmp_path / "results"])) == 2


def _concurrent_run(args):
    spec, threads = args
    torch.set_num_threads(threads)
    from sptbench.run.runner import run

    return run(spec).record["run_id"]


def test_four_concurrent_writers_lose_no_record(tmp_path, data_dir):
    sweep = parse_sweep(tiny_sweep(tmp_path, data_dir, seeds=[13, 21, 42, 87], train={**FAST, "max_steps": 2}))
    ctx = mp.get_context("fork")  # no re-import per worker; torch's thread pools are fork-safe
    with ctx.Pool(4) as pool:
        run_ids = pool.map(_concurrent_run, [(s, 1) for s in sweep.specs()])
    (table,) = (tmp_path / "results").rglob("*.yaml")
    records = read_table(table)
    assert sorted(r["run_id"] for r in records) == sorted(run_ids) and len(records) == 4
    assert all(validate_record(r) == [] for r in records)
    assert {r["protocol"]["seed"] for r in records} == {13, 21, 42, 87}


def test_a_claim_is_exclusive_and_ends_with_its_process(tmp_path):
    folder = tmp_path / "claims"
    with claim(folder, "run-a") as first, claim(folder, "run-a") as second, claim(folder, "run-b") as other:
        assert (first, second, other) == (True, False, True)
    assert not list(folder.iterdir())  # removed when done
    holder = subprocess.Popen(  # another process holds the claim, then is killed without releasing it
        [sys.executable, "-c", "import sys, time; from sptbench.sweep.claims import claim\n"
         f"with claim({str(folder)!r}, 'run-a'):\n    print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with claim(folder, "run-a") as mine:
            assert mine is False
    finally:
        holder.kill()
        holder.wait()
    with claim(folder, "run-a") as mine:  # no stale claim after a crash
        assert mine is True


def test_a_file_system_without_locks_works_alone_and_says_so_once(tmp_path, monkeypatch, capsys):
    import errno

    import sptbench.sweep.claims as claims_mod

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(claims_mod.fcntl, "flock", no_locks)
    claims_mod._warn_once.cache_clear()
    for _ in range(2):
        with claim(tmp_path, "run-a") as first, claim(tmp_path, "run-a") as second:
            assert (first, second) == (True, True)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: cannot lock files in {tmp_path} ({os.strerror(errno.ENOLCK)}): sweep processes "
                   "sharing it will not share runs"]


def test_sweep_processes_given_the_same_runs_share_them(tmp_path, data_dir, capsys):
    sweep = parse_sweep(tiny_sweep(tmp_path, data_dir))
    p = plan(sweep)
    first, second = p.todo
    name = claim_name("run", canonical_json(list(spec_key(first))))
    with claim(claims_dir(sweep.results_dir), name):  # another process is running the first run
        failures, skipped = run_local(p.todo, progress=False, seen=p.seen)
    assert (failures, skipped) == ([], [first])
    err = capsys.readouterr().err
    assert "[1/2] skipped: head/rte 4shot seed 13: another sweep process is running it" in err
    assert [r["protocol"]["seed"] for r in read_records([tmp_path / "results"])] == [21]
    # a process planned before that run was recorded: runs the first, skips the one recorded since it planned
    failures, skipped = run_local(p.todo, progress=False, seen=p.seen)
    assert (failures, skipped) == ([], [second])
    err = capsys.readouterr().err
    assert "[2/2] skipped: head/rte 4shot seed 21: another sweep process recorded it meanwhile" in err
    assert sorted(r["protocol"]["seed"] for r in read_records([tmp_path / "results"])) == [13, 21]
    assert not list(claims_dir(sweep.results_dir).iterdir())


def _sweep_main(path: str) -> int:
    return main(["sweep", path, "--quiet"])


def test_two_processes_on_one_sweep_run_each_run_once_and_test_each_group_once(tmp_path, data_dir):
    raw = tiny_sweep(tmp_path, data_dir, test="selected", train={**FAST, "max_steps": 2, "lr": [1e-3, 3e-2]})
    path = str(write(tmp_path, raw))
    with mp.get_context("fork").Pool(2) as pool:
        assert pool.map(_sweep_main, [path, path]) == [0, 0]
    records = read_records([tmp_path / "results"])
    untested = [r for r in records if not r["selection"]["tested"]]
    tested = [r for r in records if r["selection"]["tested"]]
    assert sorted((r["protocol"]["seed"], r["training"]["lr"]) for r in untested) == [
        (13, 1e-3), (13, 3e-2), (21, 1e-3), (21, 3e-2)]
    assert sorted(r["protocol"]["seed"] for r in tested) == [13, 21]


# ---------------------------------------------------------------------------------------------------- data parallel


class Toy(torch.nn.Module):
    """A dropout-free classifier: data-parallel training must then equal single-process training to rounding."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(50, 8)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None):
        m = attention_mask.unsqueeze(-1).float()
        return classifier_output(self.head((self.emb(input_ids) * m).sum(1) / m.sum(1)), labels)


def _toy_data():
    g = torch.Generator().manual_seed(1)
    rows = []
    for i in range(23):
        n = int(torch.randint(2, 9, (1,), generator=g))
        rows.append({"input_ids": torch.randint(1, 50, (n,), generator=g).tolist(), "label": i % 2})
    return rows[:17], rows[17:]


def _toy_train():
    from sptbench.data.specs import load_spec

    model = Toy()
    train, dev = _toy_data()
    tcfg = train_mod.TrainConfig(max_steps=6, batch_size=5, eval_every=3, lr=0.05, seed=3)  # 5 = shards of 3 + 2
    res = train_mod.train(model, train, dev, load_spec("sst2"), tcfg, progress=False)
    return model, res


def _toy_rank(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model, res = _toy_train()
        torch.save({"state": model.state_dict(), "history": res.history, "samples": res.samples_seen}, f"{out}{rank}")
    finally:
        dist.destroy_process_group()


def test_data_parallel_step_equals_single_process(tmp_path):
    single, res = _toy_train()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_toy_rank, args=(r, port, str(tmp_path / "rank"))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}", weights_only=True)
        for name, tensor in single.state_dict().items():
            torch.testing.assert_close(got["state"][name], tensor, atol=1e-6, rtol=1e-5)
        assert got["samples"] == res.samples_seen  # the global batch counts, once
        assert [h["dev_score"] for h in got["history"]] == [h["dev_score"] for h in res.history]
        assert [h["train_loss"] for h in got["history"]] == pytest.approx([h["train_loss"] for h in res.history])


@pytest.mark.slow
def test_accelerate_launch_two_processes_writes_one_matching_record(tmp_path, data_dir):
    if shutil.which("accelerate") is None:
        pytest.skip("accelerate CLI not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["--method", "head", "--task", "rte", "--shots", "16", "--model", "tiny-bert", "--max-steps", "6",
            "--eval-every", "3", "--data-dir", str(data_dir), "--quiet", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", str(port),
              "-m", "sptbench.cli", "run"]
    dp = subprocess.run([*launch, *args, "--results-dir", str(tmp_path / "dp")], env=env, capture_output=True,
                        text=True, timeout=300)
    assert dp.returncode == 0, dp.stderr[-2000:]
    assert main(["run", *args, "--results-dir", str(tmp_path / "sp")]) == 0
    (two,) = read_records([tmp_path / "dp"])  # exactly one record: rank 0's
    (one,) = read_records([tmp_path / "sp"])
    assert two["throughput"]["num_processes"] == 2 and "num_processes" not in one["throughput"]
    assert two["training"] == one["training"]  # the same experiment (same key but the fingerprint-free parts)
    for split in ("dev", "test"):
        assert two["metrics"][split]["score"] == pytest.approx(one["metrics"][split]["score"], abs=0.05)
    losses = lambda rec: [h["train_loss"] for h in rec["outcome"]["history"]]  # noqa: E731
    assert losses(two) == pytest.approx(losses(one), abs=0.02)  # dropout masks differ per shard: not bit-equal
    assert two["throughput"]["train_samples_per_s"] > 0



def test_head_axis_expands_and_matches_records_on_it(tmp_path, data_dir):
    from sptbench.records.keys import record_key
    from sptbench.sweep.plan import record_plan_key

    raw = tiny_sweep(tmp_path, data_dir, methods=["lora"], head=["linear", "prompt"],
                     prompt_loss=["label_words", "vocab"])
    sweep = parse_sweep(raw)
    assert sweep.heads == [("linear", None, None), ("prompt", "label_words", None), ("prompt", "vocab", None)]
    specs = sweep.specs()
    assert len(specs) == 6 and [s.head for s in specs[:3:2]] == ["linear", "prompt"]
    prompt_spec = next(s for s in specs if s.prompt_loss == "vocab")
    rec = example_record()
    rec["head"] = {"kind": "prompt", "loss": "vocab", "template_name": "default",
                   "template": "<s1> ? <mask> , <s2>", "label_words": ["Yes", "No"]}
    key = spec_key(prompt_spec)
    assert key[-2] == record_plan_key(rec)[-2]  # the head, as the record will hold it
    assert len(record_key(rec)) == len(key) + 2  # + the data fingerprint and the pooling (matched apart)
