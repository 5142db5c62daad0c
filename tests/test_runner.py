"""The runner on real data: a complete record, deterministic metrics, selection on dev only, failed runs recorded."""

from __future__ import annotations

import pytest
import torch

import sptbench.training.loop as train_mod
from sptbench.core.errors import SptbenchError
from sptbench.records.io import read_table
from sptbench.records.schema import validate_record
from sptbench.run.provenance import hardware_id
from sptbench.run.runner import RunSpec, run

FAST = {"max_steps": 6, "eval_every": 3, "batch_size": 4}


def spec(tmp_path, data_dir, **kw) -> RunSpec:
    base = dict(method="head", task="rte", shots=4, seed=13, model="tiny-bert", data_dir=str(data_dir),
                results_dir=str(tmp_path), train_overrides=dict(FAST), progress=False)
    base.update(kw)
    return RunSpec(**base)


def test_run_appends_a_complete_record_and_is_deterministic(tmp_path, data_dir):
    first = run(spec(tmp_path, data_dir))
    second = run(spec(tmp_path, data_dir))
    records = read_table(first.table)
    assert len(records) == 2 and first.table == second.table
    rec = records[0]
    assert validate_record(rec) == []
    assert rec["status"] == "ok" and rec["method"]["name"] == "head"
    assert (rec["task"]["name"], rec["task"]["version"]) == ("rte", 2) and rec["head"] == {"kind": "linear"}
    assert rec["protocol"]["n_train"] == 8 and rec["protocol"]["n_dev"] == 8 and rec["protocol"]["n_test"] == 277
    assert rec["data"]["source"] == "mirror" and len(rec["data"]["fingerprint"]) == 64
    assert rec["params"]["trainable"] == 0 and rec["params"]["trainable_with_head"] == 32 * 2 + 2
    assert rec["throughput"]["train_samples_per_s"] > 0 and rec["throughput"]["eval_samples_per_s"] > 0
    assert rec["versions"]["torch"] == torch.__version__
    assert rec["throughput"]["hardware"] == hardware_id(torch.device("cpu"))  # what `check --hardware-tol` compares
    assert rec["training"]["max_steps"] == 6 and rec["training"]["lr"] == 1e-2  # the method's default lr
    assert records[0]["metrics"]["dev"] == records[1]["metrics"]["dev"]
    assert records[0]["metrics"]["test"] == records[1]["metrics"]["test"]
    assert records[0]["run_id"] != records[1]["run_id"]


def test_selection_reads_dev_only_and_test_once(tmp_path, data_dir, monkeypatch):
    seen = []
    real = train_mod.evaluate

    def spy(model, encoded, spec_, batch_size, pad_id=0):
        seen.append(len(encoded))
        return real(model, encoded, spec_, batch_size, pad_id)

    monkeypatch.setattr(train_mod, "evaluate", spy)
    monkeypatch.setattr("sptbench.run.runner.evaluate", spy)
    out = run(spec(tmp_path, data_dir))
    n_dev, n_test = out.record["protocol"]["n_dev"], out.record["protocol"]["n_test"]
    assert seen[:-1] == [n_dev] * 2  # evaluations at steps 3 and 6 during training: dev only
    assert seen[-1] == n_test and seen.count(n_test) == 1


def test_non_finite_loss_is_recorded_as_failed(tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr(train_mod, "loss_on", lambda model, batch: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(SptbenchError, match="recorded as failed"):
        run(spec(tmp_path, data_dir))
    (rec,) = read_table(next(tmp_path.rglob("*.yaml")))
    assert rec["status"] == "failed" and "nan" in rec["error"]


def test_interrupted_run_leaves_no_record(tmp_path, data_dir, monkeypatch):
    def interrupted(model, batch):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "loss_on", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(spec(tmp_path, data_dir))
    assert not list(tmp_path.rglob("*.yaml"))


def test_save_and_reload_gives_identical_logits(tmp_path, data_dir):
    from sptbench.run.persist import load_trained

    out = run(spec(tmp_path / "r", data_dir, method="finetune", save_dir=str(tmp_path / "saved")))
    model, _ = load_trained(tmp_path / "saved")
    batch = {"input_ids": torch.randint(1000, 5000, (3, 9)), "attention_mask": torch.ones(3, 9, dtype=torch.long)}
    with torch.no_grad():
        torch.testing.assert_close(model(**batch), out.model.eval()(**batch))


def test_saved_spt_run_rebuilds_its_chosen_layers(tmp_path, data_dir):
    from sptbench.run.persist import load_trained

    out = run(spec(tmp_path / "r", data_dir, method="spt", save_dir=str(tmp_path / "saved"),
                   method_overrides={"top_k": 2}))
    chosen = out.record["extra"]["chosen_layers"]
    assert len(chosen) == 2 and out.record["extra"]["final_config"]["layers"] == chosen
    model, _ = load_trained(tmp_path / "saved")
    batch = {"input_ids": torch.randint(1000, 5000, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    with torch.no_grad():
        torch.testing.assert_close(model(**batch), out.model.eval()(**batch))


def test_git_dirty_means_the_code_differs_not_the_results(tmp_path):
    import subprocess

    from sptbench.run.provenance import git_state

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "sptbench").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "sptbench" / "m.py").write_text("x = 1\n")
    (tmp_path / "results" / "t.yaml").write_text("---\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    read = git_state.__wrapped__  # uncached: the cached one is read once per process
    (tmp_path / "results" / "t.yaml").write_text("---\nmore: 1\n")  # runs appending records
    (tmp_path / "notes.txt").write_text("scratch\n")
    assert read(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "sptbench" / "m.py").write_text("x = 2\n")
    assert read(tmp_path) == {"commit": head, "dirty": True}
    # read once per process: a long sweep's later records claim the code it imported, not a later commit
    first = git_state(tmp_path)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "later")
    assert git_state(tmp_path) == first != read(tmp_path)
