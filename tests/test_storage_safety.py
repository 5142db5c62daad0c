"""Issue 38, items 1, 2, 3 and 5: paths from records and specs never leave their root, nothing replaces a results
table or a saved run unless asked, a saved run loads only against what it was trained on, and appends cost what the
new record costs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

from sptbench.core.errors import SptbenchError
from sptbench.records.io import append_record, dump_record, record_table_path, validate_paths
from tests.helpers import make_record
from tests.helpers import run_cli as cli

# ---------------------------------------------------------------------------------------------------- item 1: paths


class _Audit:
    """Every path a file-system audit event names while `on` (open, listdir, scandir, remove, rmtree, rename...)."""

    paths: list[str] = []
    on = False
    installed = False

    @classmethod
    def hook(cls, event: str, args: tuple) -> None:
        if cls.on and (event in ("open", "shutil.rmtree", "shutil.copyfile") or event.startswith("os.")) and args:
            if isinstance(args[0], (str, bytes, os.PathLike)):
                cls.paths.append(os.fsdecode(args[0]))

    @classmethod
    def start(cls) -> None:
        if not cls.installed:
            sys.addaudithook(cls.hook)
            cls.installed = True
        cls.paths, cls.on = [], True


def _tree(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under `root` with its mtime and (files) content: what a write or delete would change."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
    return out


def _selected_sweep(tmp_path: Path, data_dir: Path) -> Path:
    raw = {"name": "tuned", "model": "tiny-bert", "data_dir": str(data_dir), "results_dir": str(tmp_path / "results"),
           "tasks": ["sst2"], "methods": ["head"], "shots": 4, "seeds": [13], "test": "selected",
           "train": {"max_steps": 2, "lr": [1e-3, 3e-2]}}
    path = tmp_path / "results" / "sweep.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _untested(index: int, run_id: str) -> dict:
    rec = make_record(method={"name": "head", "config": {}}, selection={"tested": False},
                      sweep={"name": "tuned", "config_index": index}, protocol__shots=4, protocol__seed=13,
                      training__lr=[1e-3, 3e-2][index])
    rec["run_id"] = run_id
    rec["metrics"]["test"] = {}
    rec["metrics"]["dev"] = {"accuracy": 0.9 - index / 10, "score": 0.9 - index / 10}  # the traversal id wins
    return rec


def test_a_foreign_run_id_makes_the_sweep_touch_nothing_outside_the_results(tmp_path, data_dir):
    """A `test: selected` table whose dev-best record says `run_id: ../../victim`: the sweep refuses it in one line
    and reads, writes or deletes nothing outside the results folder (the pending state path was built from it)."""
    from sptbench.sweep.spec import load_sweep
    from sptbench.sweep.test_once import run_pending_tests

    sweep_file = _selected_sweep(tmp_path, data_dir)
    victim = tmp_path / "victim"  # results/pending/../../victim
    victim.mkdir()
    (tmp_path / "results" / "pending").mkdir()
    (victim / "trained.safetensors").write_bytes(b"not yours")
    (victim / "record.yaml").write_text("precious: true\n")
    bad = _untested(0, "../../victim")
    good = _untested(1, "20260101T000000-abcdef")
    table = record_table_path(tmp_path / "results", good)
    table.parent.mkdir(parents=True)
    table.write_text(dump_record(bad) + dump_record(good))
    sweep = load_sweep(sweep_file)
    before = _tree(tmp_path)
    _Audit.start()
    try:
        with pytest.raises(SptbenchError, match=r"run_id '\.\./\.\./victim' is not of the form"):
            run_pending_tests(sweep, quiet=True)
    finally:
        _Audit.on = False
    assert _tree(victim) == {"record.yaml": before["victim/record.yaml"],
                             "trained.safetensors": before["victim/trained.safetensors"]}
    results = (tmp_path / "results").resolve()
    touched = [p for p in _Audit.paths if Path(p).is_absolute() and Path(p).resolve().is_relative_to(tmp_path)
               and not Path(p).resolve().is_relative_to(results)]
    assert touched == [], touched
    assert any("run_id '../../victim' is not of the form" in p for p in validate_paths([tmp_path / "results"]))


def test_validate_refuses_a_run_id_outside_the_pattern(tmp_path, capsys):
    append_record(tmp_path / "t.yaml", make_record())
    with open(tmp_path / "t.yaml", "a") as f:
        f.write(dump_record(make_record(run_id="x/../y")))
    code, out, err = cli(["validate", str(tmp_path)], capsys)
    assert code != 0 and "run_id 'x/../y' is not of the form" in out + err
    with pytest.raises(SptbenchError, match="invalid record"):
        append_record(tmp_path / "u.yaml", make_record(run_id="../../victim"))


def test_pending_states_stay_under_the_results_folder(tmp_path):
    from sptbench.run.persist import pending_dir

    run_id = "20260101T000000-abcdef"
    assert pending_dir(tmp_path, run_id) == (tmp_path / "pending" / run_id).resolve()
    (tmp_path / "pending").symlink_to(tmp_path.parent)  # a pending folder that leads out of the results
    with pytest.raises(SptbenchError, match="leaves its folder"):
        pending_dir(tmp_path, run_id)
    with pytest.raises(SptbenchError, match="run_id"):
        pending_dir(tmp_path / "x", "..")


def test_a_task_named_dot_dot_reads_nothing_outside_the_data_dir(tmp_path, monkeypatch, mirror):
    """A spec file `...yaml` names the task '..': its data would be read from the data dir's parent."""
    from sptbench.data.specs import load_spec
    from sptbench.data.tasks import load_task

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "tasks" / "rte.yaml").read_text())
    (tasks / "...yaml").write_text(yaml.safe_dump({**spec, "name": ".."}, sort_keys=False))
    monkeypatch.setenv("SPTBENCH_TASKS_PATH", str(tasks))
    with pytest.raises(SptbenchError, match="task '..' is not a plain name"):
        load_spec("..")
    with pytest.raises(SptbenchError, match="task '..' is not a plain name"):
        load_task("..", data_dir=mirror, shots=4)
