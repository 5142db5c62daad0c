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


# ---------------------------------------------------------------------------------------------------- item 2: outputs


@pytest.fixture(scope="module")
def lora_model():
    import sptbench

    return sptbench.build_model("lora", "tiny-bert", num_labels=2, rank=2, seed=0)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_save_refuses_a_saved_run_unless_asked_and_replaces_both_files_or_neither(lora_model, tmp_path, monkeypatch):
    import sptbench
    import sptbench.run.persist as persist

    folder = tmp_path / "m"
    sptbench.save(lora_model, folder)
    first = _files(folder)
    assert set(first) == {"trained.safetensors", "model.yaml"}
    with pytest.raises(SptbenchError, match="already holds a saved run .*overwrite"):
        sptbench.save(lora_model, folder)
    assert _files(folder) == first
    for p in lora_model.parameters():  # another state: the replacement must differ from the first save
        if p.requires_grad:
            p.data.add_(1.0)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(persist, "write_text_atomic", fail)  # the weights are written, then the manifest fails
    with pytest.raises(SptbenchError, match="No space left on device"):
        sptbench.save(lora_model, folder, overwrite=True)
    monkeypatch.undo()
    assert _files(folder) == first and sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp left behind
    sptbench.save(lora_model, folder, overwrite=True)
    second = _files(folder)
    assert second["trained.safetensors"] != first["trained.safetensors"] and set(second) == set(first)
    (folder / "model.yaml").chmod(0o444)  # a write-protected file of the saved run: refused, not half replaced
    with pytest.raises(SptbenchError, match="model.yaml is read-only"):
        sptbench.save(lora_model, folder, overwrite=True)
    assert _files(folder) == second
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SptbenchError, match="holds other files"):
        sptbench.save(lora_model, tmp_path / "other", overwrite=True)
    assert _files(tmp_path / "other") == {"notes.txt": b"mine"}


def test_a_full_disk_while_saving_weights_is_one_line(lora_model, tmp_path, monkeypatch):
    import safetensors.torch

    import sptbench

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(SptbenchError, match="cannot write .*trained.safetensors: No space left on device"):
        sptbench.save(lora_model, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_outputs_refuse_results_tables_and_saved_runs(lora_model, tmp_path, capsys, monkeypatch):
    import sptbench
    import sptbench.cli.bench as bench_cli

    table = tmp_path / "t.yaml"
    for _ in range(3):
        append_record(table, make_record())
    saved = sptbench.save(lora_model, tmp_path / "saved")
    before = {p: p.read_bytes() for p in (table, saved / "model.yaml", saved / "trained.safetensors")}
    monkeypatch.setattr(bench_cli, "bench", lambda *a, **k: pytest.fail("bench measured before --out was checked"))
    cases = [(["bench", "--method", "head", "--model", "tiny-bert", "--out", str(table)], "is a results table"),
             (["bench", "--method", "head", "--model", "tiny-bert", "--out", str(saved / "model.yaml")],
              "is part of a saved run"),
             (["bench", "--method", "head", "--out", str(table / "x.yaml")], "is not a folder"),
             (["table", str(table), "--out", str(saved / "model.yaml")], "is part of a saved run"),
             (["plot", "gates", str(table), "--out", str(saved / "trained.safetensors")], "is part of a saved run")]
    for argv, needle in cases:
        code, _, err = cli(argv, capsys)
        assert code == 2 and needle in err and err.count("\n") == 1, (argv, err)
    assert {p: p.read_bytes() for p in before} == before


def test_save_dir_inside_the_results_is_refused_before_training(mirror, tmp_path, capsys, monkeypatch):
    import sptbench.run.runner as runner_mod

    monkeypatch.setattr(runner_mod, "train", lambda *a, **k: pytest.fail("training started"))
    results = tmp_path / "results"
    argv = ["run", "--method", "head", "--task", "rte", "--shots", "4", "--model", "tiny-bert", "--data-dir",
            str(mirror), "--results-dir", str(results), "--quiet", "--save-dir", str(results / "saved")]
    code, _, err = cli(argv, capsys)
    assert code == 2 and "is inside --results-dir" in err and err.count("\n") == 1, err
    assert not (results / "saved").exists()


@pytest.mark.parametrize("mask", [0o077, 0o022, 0o002])
def test_files_honour_the_umask_and_keep_their_mode(lora_model, tmp_path, mask):
    import sptbench
    from sptbench.records.io import write_text_atomic

    old = os.umask(mask)
    try:
        append_record(tmp_path / "t.yaml", make_record())
        write_text_atomic(tmp_path / "out.md", "x")
        saved = sptbench.save(lora_model, tmp_path / "saved")
    finally:
        os.umask(old)
    for path in (tmp_path / "t.yaml", tmp_path / "out.md", saved / "model.yaml", saved / "trained.safetensors"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path
    assert saved.stat().st_mode & 0o777 == 0o777 & ~mask
    (tmp_path / "out.md").chmod(0o640)
    write_text_atomic(tmp_path / "out.md", "y")
    append_record(tmp_path / "t.yaml", make_record())
    assert (tmp_path / "out.md").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "t.yaml").stat().st_mode & 0o777 == 0o666 & ~mask


# ---------------------------------------------------------------------------------------------------- item 3: loads


def _edit_yaml(path: Path, edit) -> None:
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture(scope="module")
def prompt_save(tmp_path_factory):
    import sptbench

    model = sptbench.build_model("prompt_tuning", "tiny-bert", head="prompt", task="sst2", num_tokens=2, seed=0)
    return sptbench.save(model, tmp_path_factory.mktemp("prompt") / "m")


def _set(path: str, value):
    def edit(data):
        *parents, leaf = path.split(".")
        for part in parents:
            data = data[part]
        data[leaf] = value
    return edit


@pytest.mark.parametrize("edit, needle", [
    (_set("backbone.id", "tiny-roberta"), "backbone.weights_sha256: 'tiny-roberta' has weights sha256"),
    (_set("backbone.weights_sha256", "0" * 64), "backbone.weights_sha256 is '0000"),
    (_set("backbone.pooling", "mean"), "backbone.pooling is 'mean', but trained.safetensors was trained with 'cls'"),
    (_set("task", {"name": "mr"}), "task.name is 'mr', but trained.safetensors was trained with 'sst2'"),
    (_set("head.template", "default2"), "head is"),
    (_set("num_labels", 2.0), "num_labels must be a positive integer, got 2.0"),
    (_set("num_labels", True), "num_labels must be a positive integer, got True"),
    (_set("num_labels", 3), "num_labels is 3, but trained.safetensors was trained with 2"),
])
def test_an_edited_model_yaml_does_not_load(prompt_save, tmp_path, edit, needle):
    import shutil

    import sptbench

    folder = tmp_path / "m"
    shutil.copytree(prompt_save, folder)
    _edit_yaml(folder / "model.yaml", edit)
    with pytest.raises(SptbenchError, match="model.yaml") as err:
        sptbench.load(folder)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("edit, needle", [
    (_set("backbone.id", "tiny-roberta"), "backbone.weights_sha256: 'tiny-roberta' has weights sha256"),
    (_set("backbone.pooling", "mean"), "backbone.pooling is 'mean'"),
    (_set("task.name", "qnli"), "task.name is 'qnli', but trained.safetensors was trained with 'rte'"),
])
def test_an_edited_saved_record_does_not_load(saved_runs, tmp_path, edit, needle):
    import shutil

    from sptbench.run.persist import load_trained

    folder = tmp_path / "run"
    shutil.copytree(saved_runs["lora"][0], folder)
    _edit_yaml(folder / "record.yaml", edit)
    with pytest.raises(SptbenchError, match="record.yaml") as err:
        load_trained(folder)
    assert needle in str(err.value)


def test_weights_saved_before_their_metadata_still_load_but_not_on_another_backbone(saved_runs, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from sptbench.run.persist import load_trained, read_trained_on

    folder = tmp_path / "run"
    shutil.copytree(saved_runs["lora"][0], folder)
    assert read_trained_on(folder / "trained.safetensors")["task.labels"] == ["entailment", "not_entailment"]
    save_file(load_file(folder / "trained.safetensors"), folder / "trained.safetensors")  # no metadata: older save
    assert read_trained_on(folder / "trained.safetensors") is None
    load_trained(folder)
    _edit_yaml(folder / "record.yaml", _set("backbone.id", "tiny-roberta"))
    with pytest.raises(SptbenchError, match="backbone.weights_sha256"):
        load_trained(folder)


# ---------------------------------------------------------------------------------------------------- item 5: appends


def test_an_append_reads_the_tail_not_the_table(tmp_path, monkeypatch):
    """100 records in the table: the append parses its last record only, whatever the table holds before it."""
    import sptbench.records.io as io_mod
    from sptbench.records.io import check_appendable, read_table

    path = tmp_path / "t.yaml"
    path.write_text(dump_record(make_record()) * 99 + dump_record(make_record()))
    parsed: list[int] = []
    real = io_mod._load_documents
    monkeypatch.setattr(io_mod, "_load_documents", lambda p, text: parsed.append(len(text)) or real(p, text))
    check_appendable(path)
    append_record(path, make_record())
    one = len(dump_record(make_record()))
    assert parsed and max(parsed) < 2 * one, parsed
    monkeypatch.undo()
    assert len(read_table(path)) == 101


def test_a_malformed_tail_is_refused_with_its_true_line(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("".join(dump_record(make_record()) for _ in range(3)) + "---\nrun_id: [unclosed\n")
    from sptbench.records.io import read_table

    before = path.read_bytes()
    with pytest.raises(SptbenchError, match=r"t\.yaml:\d+: malformed YAML") as whole:
        read_table(path)
    with pytest.raises(SptbenchError) as tail:
        append_record(path, make_record())
    assert str(tail.value) == str(whole.value) and path.read_bytes() == before


def test_an_interrupted_append_is_invisible_and_undone_by_the_next(tmp_path):
    """What kill -9 in the middle of an append leaves: the journal and half a record (and, from older versions, a
    hidden temp file). Readers see the table as it was; the next append cuts it back, cleans up and appends."""
    from sptbench.records.io import read_table

    path = tmp_path / "t.yaml"
    first = make_record()
    append_record(path, first)
    size = path.stat().st_size
    (tmp_path / ".t.yaml.append").write_text(f"{size}\n")
    with open(path, "ab") as f:
        f.write(dump_record(make_record()).encode()[:300])
    (tmp_path / ".t.yaml.abc123.tmp").write_bytes(b"x" * 4096)
    assert [r["run_id"] for r in read_table(path)] == [first["run_id"]]
    second = make_record()
    append_record(path, second)
    assert [r["run_id"] for r in read_table(path)] == [first["run_id"], second["run_id"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".t.yaml.lock", "t.yaml"]
    assert validate_paths([path]) == []


KILLED_APPENDS = """
import sys
from sptbench.records.build import new_run_id
from sptbench.records.io import append_record
from tests.helpers import make_record
path = sys.argv[1]
for i in range(10**6):
    append_record(path, make_record(run_id=new_run_id()))
    print(i, flush=True)
"""


def _killed(argv: list[str], after: float, cwd: Path, **kw) -> str:
    """Run `argv`, kill -9 it `after` seconds in; returns what it printed."""
    import signal
    import subprocess
    import time

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = cwd / "stdout.txt"
    with open(out, "w") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd, **kw)
        time.sleep(after)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return out.read_text()


def _assert_whole_records(path: Path, before: bytes) -> list[dict]:
    """The table as readers see it: the old bytes unchanged, then whole, valid records only."""
    from sptbench.records.io import read_table
    from sptbench.records.schema import validate_record

    records = read_table(path) if path.exists() else []
    seen = path.read_bytes()[: len(before)] if path.exists() else b""
    assert seen == before
    assert all(validate_record(r) == [] for r in records)
    return records


def test_kill_9_during_appends_leaves_only_finished_records(tmp_path):
    import random

    rng = random.Random()
    path = tmp_path / "t.yaml"
    path.write_text("".join(dump_record(make_record()) for _ in range(5)))
    for _ in range(2):
        before = path.read_bytes()
        n_before = len(_assert_whole_records(path, before))
        printed = _killed([sys.executable, "-c", KILLED_APPENDS, str(path)], rng.uniform(0.4, 0.8), tmp_path)
        finished = len(printed.split())
        records = _assert_whole_records(path, before)
        assert len(records) - n_before in (finished, finished + 1)  # killed between the append and its print
        append_record(path, make_record())  # undoes a half append, if any, and leaves no temp file
        assert validate_paths([path]) == []
        assert not [p for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".append"))]


@pytest.mark.slow
def test_kill_9_during_a_run_and_a_sweep_leaves_the_table_whole(tmp_path, mirror):
    """`sptbench run` and `sptbench sweep` (tiny-bert) killed at random moments: every table holds its old records
    and whole, valid ones after them; the sweep then resumes to exactly its runs."""
    import random

    from sptbench.records.io import read_records

    rng = random.Random()
    results = tmp_path / "results"
    run = [sys.executable, "-m", "sptbench.cli", "run", "--method", "head", "--task", "rte", "--shots", "4",
           "--model", "tiny-bert", "--data-dir", str(mirror), "--results-dir", str(results), "--max-steps", "2",
           "--eval-every", "2", "--batch-size", "4", "--quiet"]
    table = results / "v1" / "tiny-bert" / "4shot.yaml"
    for after in sorted(rng.uniform(2, 25) for _ in range(3)):
        before = table.read_bytes() if table.exists() else b""
        n_before = len(_assert_whole_records(table, before))
        printed = _killed(run, after, tmp_path)
        assert len(_assert_whole_records(table, before)) - n_before in ((1,) if "-> " in printed else (0, 1))
    sweep = {"name": "k", "model": "tiny-bert", "data_dir": str(mirror), "results_dir": str(tmp_path / "sw"),
             "tasks": ["rte"], "methods": ["head"], "shots": 4, "seeds": [13, 21, 42],
             "train": {"max_steps": 2, "eval_every": 2, "batch_size": 4}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    argv = [sys.executable, "-m", "sptbench.cli", "sweep", str(tmp_path / "sweep.yaml"), "--quiet"]
    swept = tmp_path / "sw" / "v1" / "tiny-bert" / "4shot.yaml"
    for after in sorted(rng.uniform(3, 30) for _ in range(2)):
        before = swept.read_bytes() if swept.exists() else b""
        _killed(argv, after, tmp_path)
        _assert_whole_records(swept, before)
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run(argv, env=env, cwd=tmp_path, check=True, capture_output=True, timeout=600)
    records = read_records([tmp_path / "sw"])
    assert sorted(r["protocol"]["seed"] for r in records) == [13, 21, 42]
    assert validate_paths([tmp_path / "sw"]) == []


BAD_RUNS = [
    ["run", "--method", "lorra", "--task", "rte"],
    ["run", "--method", "head", "--task", "rte", "--seed", "-1"],
    ["run", "--method", "head", "--task", "rte", "--set", "x=1"],
    ["run", "--method", "head", "--task", "rte", "--model", "tiny-bert", "--lr", "-1"],
    ["run", "--method", "head", "--task", "..", "--model", "tiny-bert"],
    ["run", "--method", "head", "--task", "rte", "--model", "tiny-bert", "--results-dir", "README.md"],
    ["run", "--method", "head", "--task", "rte", "--model", "tiny-bert", "--results-dir", "r", "--save-dir", "r/s"],
]


def test_bad_run_options_are_reported_before_any_heavy_import():
    """`sptbench run` checks its options, table and save folder before torch, transformers or peft load."""
    import json
    import subprocess

    from tests.test_lazy_imports import HEAVY, PROBE, REPO

    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(HEAVY), json.dumps(BAD_RUNS)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert "Traceback" not in out.stderr, out.stderr
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["argv"] for r in results] == BAD_RUNS
    for r in results:
        assert r["code"] == 2 and r["heavy"] == [], r


def test_what_a_killed_save_leaves_is_cleaned_or_put_back(lora_model, tmp_path):
    """kill -9 while writing (a half-written hidden folder) or between the two renames (the old run moved aside):
    the next save removes the first and puts the second back before deciding anything."""
    import sptbench

    folder = sptbench.save(lora_model, tmp_path / "m")
    first = _files(folder)
    (tmp_path / ".m.save-abc").mkdir()
    (tmp_path / ".m.save-abc" / "trained.safetensors").write_bytes(b"half")
    (tmp_path / ".m.old-def").mkdir()
    folder.rename(tmp_path / ".m.old-def" / "run")
    with pytest.raises(SptbenchError, match="already holds a saved run"):
        sptbench.save(lora_model, folder)
    assert _files(folder) == first and sorted(p.name for p in tmp_path.iterdir()) == ["m"]
