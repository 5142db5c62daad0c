"""User tasks with their own data (issue 37 item 4): `hub` optional, a spec's own `data` folder and few-shot splits,
the data search path (`--data-dir A:B`, $SPTBENCH_DATA_PATH), empty texts counted or refused (`--strict-data`)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from sptbench.core.errors import SptbenchError
from sptbench.core.run_schema import KEY_FIELDS, RunSpec
from sptbench.data import tasks
from sptbench.data.specs import load_spec

SPEC = """name: {name}
version: 1
text_columns: [sentence]
labels: [negative, positive]
metrics: [accuracy]
selection_metric: accuracy
max_length: 64
mirror: {{train: train.jsonl, test: test.jsonl}}
"""
SPLITS = """lm_bff: {dir: splits, format: tsv, header: true, shots: 4, seeds: [1, 2], columns: {sentence: sentence},
         label_column: label, labels: {"0": negative, "1": positive}}
"""


@pytest.fixture(autouse=True)
def _no_env_data(monkeypatch):
    """No data folder from the environment: each test says where its data is."""
    for name in ("SPTBENCH_DATA_DIR", "SPTBENCH_DATA_PATH", "SPTBENCH_TASKS_PATH"):
        monkeypatch.delenv(name, raising=False)


def _rows(n: int, seed: int, tag: str) -> list[dict]:
    rng = random.Random(seed)
    return [{"sentence": f"{tag} {i} " + " ".join(rng.choice("abcdefgh") * 3 for _ in range(4)),
             "label": ("negative", "positive")[i % 2]} for i in range(n)]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _task(folder: Path, name: str, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(SPEC.format(name=name) + extra, encoding="utf-8")
    return folder


def _use_tasks(monkeypatch, folder: Path) -> None:
    monkeypatch.setenv("SPTBENCH_TASKS_PATH", str(folder))


def test_local_task_reads_its_own_folder_and_splits_without_hub_or_data_dir(tmp_path, monkeypatch):
    specs = _task(tmp_path / "my-tasks", "cr", "data: cr-data\n" + SPLITS)
    _write_jsonl(specs / "cr-data" / "train.jsonl", _rows(40, 1, "pool"))
    _write_jsonl(specs / "cr-data" / "test.jsonl", _rows(10, 2, "test"))
    for seed in (1, 2):
        split = specs / "cr-data" / "splits" / f"4-{seed}"
        split.mkdir(parents=True)
        for part, n in (("train", 8), ("dev", 8)):
            rows = _rows(n, seed * 10 + n, f"{part}{seed}")
            lines = ["sentence\tlabel", *(f"{r['sentence']}\t{int(r['label'] == 'positive')}" for r in rows)]
            (split / f"{part}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _use_tasks(monkeypatch, specs)
    spec = load_spec("cr")
    assert spec.hub is None and spec.data_folder == (specs / "cr-data").resolve()
    data = tasks.load_task("cr", shots=4, seed=2, split_source="lm-bff")
    assert [r["sentence"] for r in data.train][:1] == [_rows(8, 28, "train2")[0]["sentence"]]
    assert len(data.train) == len(data.dev) == 8 and len(data.test) == 10
    assert data.location.startswith(str(specs / "cr-data")) and "splits/4-2" in data.location
    sampled = tasks.load_task("cr", shots=3, seed=5)  # the sampled protocol reads the same folder
    assert len(sampled.train) == 6 and sampled.fingerprint != data.fingerprint
    with pytest.raises(SptbenchError, match=r"seeds 1, 2 only, not seed 13"):
        tasks.load_task("cr", shots=4, seed=13, split_source="lm-bff")
    with pytest.raises(SptbenchError, match=r"needs shots=4"):
        tasks.load_task("cr", shots=16, seed=1, split_source="lm-bff")


def test_local_only_task_without_a_data_folder_says_so(tmp_path, monkeypatch):
    _use_tasks(monkeypatch, _task(tmp_path / "t", "local"))
    with pytest.raises(SptbenchError, match=r"task 'local' is local-only .*--data-dir") as err:
        tasks.load_task("local", shots=2)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("data", ["../outside", "/abs/data", "a/../../b", "link"])
def test_a_data_folder_never_leaves_the_spec_folder(tmp_path, monkeypatch, data):
    (tmp_path / "outside").mkdir()
    specs = _task(tmp_path / "t", "evil", f"data: {data}\n")
    (specs / "link").symlink_to(tmp_path / "outside")
    _use_tasks(monkeypatch, specs)
    with pytest.raises(SptbenchError, match=r"field 'data'"):
        load_spec("evil")


def test_data_search_path_first_folder_holding_the_task_wins(tmp_path, monkeypatch):
    _use_tasks(monkeypatch, _task(tmp_path / "t", "mine"))
    a, b = tmp_path / "a", tmp_path / "b"
    for root, tag in ((a, "from-a"), (b, "from-b")):
        _write_jsonl(root / "mine" / "train.jsonl", _rows(20, 3, tag))
        _write_jsonl(root / "mine" / "test.jsonl", _rows(4, 4, tag))
    (b / "other").mkdir()
    both = f"{a}{os.pathsep}{b}"
    assert tasks.load_task("mine", data_dir=both, shots=2).test[0]["sentence"].startswith("from-a")
    assert tasks.load_task("mine", data_dir=f"{b}{os.pathsep}{a}", shots=2).location == str(b / "mine")
    (a / "mine" / "train.jsonl").unlink()  # a no longer holds the task: b does
    assert tasks.load_task("mine", data_dir=both, shots=2).location == str(b / "mine")
    monkeypatch.setenv("SPTBENCH_DATA_PATH", str(tmp_path / "nowhere") + os.pathsep + str(a))
    with pytest.raises(SptbenchError, match="data dir .*nowhere.* does not exist"):
        tasks.load_task("mine", shots=2)
    monkeypatch.setenv("SPTBENCH_DATA_PATH", str(a))
    monkeypatch.setenv("SPTBENCH_DATA_DIR", str(b))  # the path's folders first, then $SPTBENCH_DATA_DIR
    assert tasks.load_task("mine", shots=2).location == str(b / "mine")
    with pytest.raises(SptbenchError, match=r"no data folder holds mine/train.jsonl; searched: .*/a, .*/b/other$"):
        tasks.load_task("mine", data_dir=f"{a}{os.pathsep}{b / 'other'}", shots=2)


def test_empty_texts_are_counted_in_the_notes_or_refused_when_strict(tmp_path, monkeypatch):
    specs = _task(tmp_path / "t", "holes", "data: d\n")
    pool = _rows(30, 5, "pool")
    for i in (3, 17):
        pool[i]["sentence"] = " " if i == 3 else ""
    _write_jsonl(specs / "d" / "train.jsonl", pool)
    _write_jsonl(specs / "d" / "test.jsonl", _rows(6, 6, "test"))
    _use_tasks(monkeypatch, specs)
    data = tasks.load_task("holes", shots=4, seed=1)
    train_file = specs.resolve() / "d" / "train.jsonl"
    (note,) = [n for n in data.notes if n.startswith("empty texts")]
    assert f"2 row(s) of {train_file} have an empty text (first: {train_file}:4)" in note
    assert len(data.train) == 8  # kept as given: the same rows as without the check
    assert data.fingerprint == tasks.load_task("holes", shots=4, seed=1).fingerprint
    with pytest.raises(SptbenchError, match=rf"^{train_file}:4: empty text \(2 row\(s\) .*--strict-data"):
        tasks.load_task("holes", shots=4, seed=1, strict_data=True)
    pool[3]["sentence"], pool[17]["sentence"] = "filled", "in"
    _write_jsonl(specs / "d" / "train.jsonl", pool)
    clean = tasks.load_task("holes", shots=4, seed=1, strict_data=True)
    assert not [n for n in clean.notes if n.startswith("empty texts")]


def test_strict_data_can_change_no_number_so_it_is_not_in_the_record_key():
    import dataclasses

    (field,) = [f for f in dataclasses.fields(RunSpec) if f.name == "strict_data"]
    assert field.metadata["key"] is None and "same rows" in field.metadata["not_in_key"]
    assert "strict_data" not in KEY_FIELDS and field.metadata["sweep"] == ("strict_data",)


def test_run_and_sweep_accept_strict_data_and_a_data_path(tmp_path, monkeypatch, data_dir):
    from sptbench.cli.main import build_parser
    from sptbench.sweep.spec import parse_sweep

    args = build_parser().parse_args(["run", "--method", "head", "--task", "sst2", "--strict-data"])
    assert args.strict_data is True
    raw = {"tasks": ["sst2"], "methods": ["head"], "seeds": [13], "shots": 16, "split_source": "lm-bff",
           "model": "tiny-bert", "strict_data": True, "data_dir": f"{tmp_path}{os.pathsep}{data_dir}"}
    sweep = parse_sweep(raw, "s.yaml")
    assert sweep.strict_data and sweep.specs()[0].strict_data
    assert sweep.data_dir == f"{tmp_path.resolve()}{os.pathsep}{data_dir.resolve()}"
    with pytest.raises(SptbenchError, match="'strict_data' must be true or false"):
        parse_sweep({**raw, "strict_data": "yes"}, "s.yaml")


def test_a_run_records_the_empty_text_note_and_strict_data_refuses_before_training(tmp_path, monkeypatch, capsys,
                                                                                   one_thread):
    from sptbench.records.io import read_records
    from tests.helpers import run_cli

    specs = _task(tmp_path / "t", "holes", "data: d\n")
    pool = _rows(24, 7, "pool")
    pool[5]["sentence"] = ""
    _write_jsonl(specs / "d" / "train.jsonl", pool)
    _write_jsonl(specs / "d" / "test.jsonl", _rows(6, 8, "test"))
    argv = ["run", "--method", "head", "--task", "holes", "--shots", "4", "--model", "tiny-bert", "--tasks-dir",
            str(specs), "--results-dir", str(tmp_path / "r"), "--max-steps", "2", "--eval-every", "2", "--quiet"]
    code, _, err = run_cli([*argv, "--strict-data"], capsys)
    assert code == 2 and "train.jsonl:6: empty text (1 row(s)" in err and not (tmp_path / "r").exists()
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    (rec,) = read_records([tmp_path / "r"])
    assert [n for n in rec["data"]["notes"] if n.startswith("empty texts: 1 row(s) of ")]
    assert rec["data"]["location"] == str((specs / "d").resolve())
