"""The test-once protocol of dev-selected grids (sptbench/reports/selection.py, sweep `test: selected`): selection never
reads test, losers are never tested, the winner's record says what it won over."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

import sptbench.data.tasks as tasks_mod
import sptbench.training.loop as train_mod
from sptbench.cli.main import main
from sptbench.records.io import read_records, validate_paths
from sptbench.reports.tables import build_table

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
LRS = [1e-3, 3e-2, 1e-1]


def write_sweep(tmp_path: Path, data_dir: Path, results: str) -> Path:
    raw = {
        "name": "tuned", "model": "tiny-bert", "data_dir": str(data_dir), "results_dir": str(tmp_path / results),
        "tasks": ["sst2"], "methods": ["head"], "shots": 4, "seeds": [13], "test": "selected",
        "train": {"max_steps": 4, "eval_every": 2, "batch_size": 4, "eval_batch_size": 128, "lr": LRS},
    }
    path = tmp_path / f"{results}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_sweep(tmp_path, data_dir, results: str, monkeypatch, shuffle_test: bool = False) -> tuple[list[dict], list]:
    """Run the sweep; returns its records and the sizes of every evaluation (dev 8, test 872)."""
    sizes = []
    real_eval = train_mod.evaluate

    def spy(model, encoded, spec, batch_size, pad_id=0):
        sizes.append(len(encoded))
        return real_eval(model, encoded, spec, batch_size, pad_id)

    monkeypatch.setattr(train_mod, "evaluate", spy)
    monkeypatch.setattr("sptbench.run.runner.evaluate", spy)
    if shuffle_test:
        real_load = tasks_mod.load_task

        def shuffled(*args, **kw):
            task = real_load(*args, **kw)
            labels = [row["label"] for row in task.test]
            random.Random(random.randrange(10**6)).shuffle(labels)
            task.test = [{**row, "label": label} for row, label in zip(task.test, labels, strict=True)]
            return task

        monkeypatch.setattr(tasks_mod, "load_task", shuffled)
        monkeypatch.setattr("sptbench.run.runner.load_task", shuffled)
    assert main(["sweep", str(write_sweep(tmp_path, data_dir, results)), "--quiet"]) == 0
    monkeypatch.undo()
    return read_records([tmp_path / results]), sizes


def test_only_the_dev_selected_configuration_is_tested_once(tmp_path, data_dir, monkeypatch, capsys):
    import sptbench.run.persist as persist

    loads, real_load = [], persist.load_trained
    monkeypatch.setattr(persist, "load_trained", lambda folder, quiet=False: loads.append(quiet) or
                        real_load(folder, quiet=quiet))
    records, sizes = run_sweep(tmp_path, data_dir, "results", monkeypatch)
    said = capsys.readouterr()
    assert loads == [True]  # the winner is loaded once for its test, and --quiet silences transformers' load bar
    n_test = records[0]["protocol"]["n_test"]
    assert sizes.count(n_test) == 1  # three configurations trained, one test evaluation
    untested = [r for r in records if r["selection"]["tested"] is False]
    [tested] = [r for r in records if r["selection"]["tested"] is True]
    assert len(untested) == 3 and all(not r["metrics"]["test"] for r in untested)
    best = max(untested, key=lambda r: (r["metrics"]["dev"]["score"], -r["sweep"]["config_index"]))
    sel = tested["selection"]
    assert sel["selected_run"] == best["run_id"] and sel["over"] == 3
    assert [c["dev_score"] for c in sel["candidates"]] == [r["metrics"]["dev"]["score"] for r in untested]
    assert tested["metrics"]["dev"] == best["metrics"]["dev"] and tested["metrics"]["test"]["accuracy"] > 0
    assert tested["training"] == best["training"]
    dev, test = best["metrics"]["dev"]["score"], tested["metrics"]["test"]["score"]
    assert (f"sweep config {best['sweep']['config_index']}, best dev {dev:.4f} of 3 configurations; "
            f"test {test:.4f}") in said.out + said.err
    assert not (tmp_path / "results" / "pending").exists() or not any((tmp_path / "results" / "pending").iterdir())
    assert validate_paths([tmp_path / "results"]) == []
    table = build_table(records)
    assert table.cells and any("not tested" in note for note in table.notes)
    # a second invocation has nothing left: no run, no test
    sizes.clear()
    assert main(["sweep", str(write_sweep(tmp_path, data_dir, "results")), "--quiet"]) == 0
    assert len(read_records([tmp_path / "results"])) == 4


def test_selection_does_not_change_when_test_labels_are_shuffled(tmp_path, data_dir, monkeypatch):
    plain, _ = run_sweep(tmp_path, data_dir, "plain", monkeypatch)
    shuffled, _ = run_sweep(tmp_path, data_dir, "shuffled", monkeypatch, shuffle_test=True)

    def winner(records):
        [tested] = [r for r in records if r["selection"]["tested"]]
        return tested["sweep"]["config_index"], tested["training"]["lr"], tested["metrics"]["dev"]

    assert winner(plain) == winner(shuffled)


def test_pending_states_are_not_tables(tmp_path):
    """A saved state's record.yaml under results/pending/ repeats a table's record: folder scans skip it."""
    from sptbench.records.io import append_record, validate_paths
    from tests.helpers import make_record

    rec = make_record(selection={"tested": False})
    rec["metrics"]["test"] = {}
    append_record(tmp_path / "v1" / "m" / "16shot.yaml", rec)
    pending = tmp_path / "pending" / rec["run_id"]
    pending.mkdir(parents=True)
    (pending / "record.yaml").write_text(yaml.safe_dump(rec, sort_keys=False))
    assert validate_paths([tmp_path]) == [] and len(read_records([tmp_path])) == 1


def test_select_within_tests_one_winner_per_value(tmp_path, data_dir, monkeypatch):
    """`select_within: {lpt: [layer]}`: each layer's dev-best learning rate is tested (the layer analysis); the
    dev-best layer among those is what `compare --select-by-dev` reads."""
    from sptbench.reports.compare import compare, parse_side

    raw = {
        "name": "layers", "model": "tiny-bert", "data_dir": str(data_dir), "results_dir": str(tmp_path / "r"),
        "tasks": ["sst2"], "methods": ["lpt", "head"], "shots": 4, "seeds": [13], "test": "selected",
        "train": {"max_steps": 2, "eval_every": 2, "batch_size": 4, "eval_batch_size": 128},
        "method_train": {"lpt": {"lr": [1e-3, 3e-2]}, "head": {"lr": [1e-2]}},
        "method_set": {"lpt": {"layer": [1, 2]}},
        "select_within": {"lpt": ["layer"]},
    }
    path = tmp_path / "layers.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["sweep", str(path), "--quiet"]) == 0
    records = read_records([tmp_path / "r"])
    tested = [r for r in records if r["selection"]["tested"] and r["method"]["name"] == "lpt"]
    assert sorted(r["method"]["config"]["layer"] for r in tested) == [1, 2]
    assert all(r["selection"]["over"] == 2 for r in tested)
    best = max(tested, key=lambda r: (r["metrics"]["dev"]["score"], -r["sweep"]["config_index"]))
    comp = compare(records, parse_side("lpt"), parse_side("head"), select=True)
    [diff] = [d for ds in comp.diffs.values() for d in ds]
    head = [r for r in records if r["method"]["name"] == "head" and r["selection"]["tested"]][0]
    assert diff == pytest.approx(100 * (best["metrics"]["test"]["score"] - head["metrics"]["test"]["score"]))
    with pytest.raises(Exception, match="configurations"):
        compare(records, parse_side("lpt"), parse_side("head"))  # two tested layers: say which, or select by dev


def test_each_group_is_tested_as_soon_as_it_is_complete(tmp_path, data_dir):
    """Seeds vary fastest: seed 13's group completes with the last configuration's seed-13 run, and is tested before
    seed 21's last run, so an interrupted sweep loses no finished group's test."""
    raw = {
        "name": "early", "model": "tiny-bert", "data_dir": str(data_dir), "results_dir": str(tmp_path / "r"),
        "tasks": ["sst2"], "methods": ["head"], "shots": 4, "seeds": [13, 21], "test": "selected",
        "train": {"max_steps": 2, "eval_every": 2, "batch_size": 4, "eval_batch_size": 128, "lr": [1e-3, 3e-2]},
    }
    path = tmp_path / "early.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["sweep", str(path), "--quiet"]) == 0
    order = [(r["protocol"]["seed"], r["selection"]["tested"]) for r in read_records([tmp_path / "r"])]
    assert order == [(13, False), (21, False), (13, False), (13, True), (21, False), (21, True)]


def test_parts_of_a_sweep_run_apart_and_each_tests_only_its_own_groups(tmp_path, data_dir, monkeypatch, capsys):
    """`sweep --methods` / `--tasks`: one file shared by processes; a part never tests another part's groups, even
    when they are complete (two processes would otherwise both test them)."""
    import sptbench.sweep.test_once as test_once_mod

    raw = {
        "name": "parts", "model": "tiny-bert", "data_dir": str(data_dir), "results_dir": str(tmp_path / "r"),
        "tasks": ["sst2"], "methods": ["head", "prompt_tuning"], "shots": 4, "seeds": [13], "test": "selected",
        "train": {"max_steps": 2, "eval_every": 2, "batch_size": 4, "eval_batch_size": 128, "lr": [1e-3, 3e-2]},
    }
    path = tmp_path / "parts.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))

    def tested(method: str) -> int:
        return sum(r["selection"]["tested"] for r in read_records([tmp_path / "r"]) if r["method"]["name"] == method)

    with monkeypatch.context() as m:  # prompt_tuning's part completes its group but stops before its test
        m.setattr(test_once_mod, "test_selected", lambda *a, **k: None)
        assert main(["sweep", str(path), "--methods", "prompt_tuning", "--quiet"]) == 0
    assert main(["sweep", str(path), "--methods", "head", "--quiet"]) == 0
    assert (tested("head"), tested("prompt_tuning")) == (1, 0)  # not the other part's complete group
    assert len([r for r in read_records([tmp_path / "r"]) if r["method"]["name"] == "prompt_tuning"]) == 2
    assert main(["sweep", str(path), "--methods", "prompt_tuning", "--quiet"]) == 0  # tests its own group only
    assert (tested("head"), tested("prompt_tuning")) == (1, 1)
    assert len(read_records([tmp_path / "r"])) == 6
    capsys.readouterr()
    assert main(["sweep", str(path), "--tasks", "sts2", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown task of sweep 'parts' 'sts2'" in err[0] and "sst2" in err[0]


def test_a_group_another_process_is_testing_is_left_to_it(tmp_path, data_dir, monkeypatch):
    """Processes sharing one sweep (sptbench/sweep/claims.py) can find the same group complete: only the one holding its
    claim tests it; the others leave it."""
    import sptbench.sweep.test_once as test_once_mod
    from sptbench.records.keys import canonical_json
    from sptbench.sweep.claims import claim, claim_name, claims_dir
    from sptbench.sweep.spec import load_sweep
    from sptbench.sweep.test_once import awaiting_test

    path = write_sweep(tmp_path, data_dir, "r")
    with monkeypatch.context() as m:  # every configuration recorded, the test not yet run
        m.setattr(test_once_mod, "test_selected", lambda *a, **k: None)
        assert main(["sweep", str(path), "--quiet"]) == 0
    [group] = awaiting_test(load_sweep(path))
    with claim(claims_dir(tmp_path / "r"), claim_name("test", canonical_json(list(group)))):
        assert main(["sweep", str(path), "--quiet"]) == 0
        assert not any(r["selection"]["tested"] for r in read_records([tmp_path / "r"]))
    assert main(["sweep", str(path), "--quiet"]) == 0
    assert sum(r["selection"]["tested"] for r in read_records([tmp_path / "r"])) == 1
