"""Tests for sptbench/records/io.py: naming, validation, atomic concurrent appends, malformed tables, migration."""

from __future__ import annotations

import multiprocessing
import os
import re
from pathlib import Path

import pytest
import yaml

from sptbench.core.errors import SptbenchError
from sptbench.records.build import new_run_id
from sptbench.records.io import (
    append_record,
    find_record,
    read_records,
    read_table,
    record_table_path,
    safe_backbone_name,
    table_path,
    validate_paths,
)
from sptbench.records.keys import record_key, setting_name
from sptbench.records.migrate import MIGRATIONS, migrate
from sptbench.records.schema import SCHEMA_VERSION, example_record, validate_record
from tests.helpers import make_record

# ---------------------------------------------------------------------------------------------------- naming


def test_setting_name():
    assert setting_name(16, None) == "16shot"
    assert setting_name(None, 1000) == "n1000"
    assert setting_name(None, None) == "full"
    with pytest.raises(SptbenchError, match="not both"):
        setting_name(16, 1000)
    with pytest.raises(SptbenchError, match="positive"):
        setting_name(0, None)


def test_new_run_id_format_and_unique():
    ids = {new_run_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(r"\d{8}T\d{6}-[0-9a-f]{6}", i) for i in ids)


@pytest.mark.parametrize(
    "backbone_id", ["roberta-large", "org/name", "/abs/models/mini", "../../etc", "..", "a/../../b", "C:\\x\\y", "~"]
)
def test_table_path_stays_inside_results_dir(tmp_path, backbone_id):
    path = table_path(tmp_path, backbone_id, "16shot")
    assert path.resolve().parent.parent == (tmp_path / "v1").resolve()
    assert path.name == "16shot.yaml"
    assert path.parent.name not in (".", "..", "")


def test_safe_backbone_names():
    assert safe_backbone_name("roberta-large") == "roberta-large"
    assert safe_backbone_name("org/name") == "org--name"
    local_a, local_b = safe_backbone_name("/a/models/mini"), safe_backbone_name("/b/models/mini")
    assert local_a.startswith("mini-") and local_a != local_b
    with pytest.raises(SptbenchError):
        table_path("results", "roberta-large", "../evil")


def test_record_table_path():
    rec = make_record(protocol__shots=None, protocol__train_size=1000, protocol__split_source="sample")
    assert record_table_path("r", rec) == Path("r/v1/roberta-large/n1000.yaml")


# ---------------------------------------------------------------------------------------------------- validation


def test_example_record_is_valid():
    assert validate_record(example_record()) == []
    assert validate_record(make_record()) == []


def test_validate_record_reports_each_problem():
    rec = make_record()
    del rec["task"]["version"]
    rec["protocol"]["seed"] = "13"
    rec["outcome"]["steps_run"] = True  # a bool is not an int
    rec["status"] = "done"
    problems = validate_record(rec)
    text = "\n".join(problems)
    assert "missing field 'task.version'" in text
    assert "'protocol.seed' must be int" in text
    assert "'outcome.steps_run' must be int" in text
    assert "'status' must be one of" in text


def test_validate_record_rejects_non_plain_values():
    class Float64(float):
        pass

    rec = make_record(metrics__test={"accuracy": Float64(0.5)})
    assert any("not plain data" in p for p in validate_record(rec))


def test_failed_record_may_leave_results_null_but_must_say_why():
    rec = make_record(status="failed", error="out of memory", metrics=None, params=None, throughput=None)
    assert validate_record(rec) == []
    rec["error"] = None
    assert any("say why" in p for p in validate_record(rec))
    ok_with_error = make_record(error="boom")
    assert any("error: null" in p for p in validate_record(ok_with_error))


def test_shots_and_train_size_are_exclusive():
    assert any("exclusive" in p for p in validate_record(make_record(protocol__train_size=100)))


# ---------------------------------------------------------------------------------------------------- append / read


def test_append_then_read_round_trip(tmp_path):
    path = tmp_path / "v1" / "roberta-large" / "16shot.yaml"
    recs = [make_record(protocol__seed=s) for s in (13, 21, 42)]
    for rec in recs:
        append_record(path, rec)
    assert read_table(path) == recs
    assert path.read_text().count("\n---\n") == 2 and path.read_text().startswith("---\n")


def test_append_refuses_invalid_record_and_duplicate_run_id(tmp_path):
    path = tmp_path / "t.yaml"
    with pytest.raises(SptbenchError, match="invalid record"):
        append_record(path, make_record(task={"name": "sst2"}))
    assert not path.exists()
    rec = make_record()
    append_record(path, rec)
    with pytest.raises(SptbenchError, match="already in this table"):
        append_record(path, rec)
    assert len(read_table(path)) == 1


def _append_many(path: str, worker: int, count: int) -> None:
    """Child process: append `count` records to one table."""
    for i in range(count):
        append_record(path, make_record(run_id=f"20260101T{worker:06d}-{i:06x}", protocol__seed=i))


def test_concurrent_appends_lose_nothing(tmp_path):
    path = str(tmp_path / "shared.yaml")
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    procs = [ctx.Process(target=_append_many, args=(path, w, 20)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    ids = [r["run_id"] for r in read_table(path)]
    assert sorted(ids) == sorted(f"20260101T{w:06d}-{i:06x}" for w in range(2) for i in range(20))
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


MALFORMED = """\
---
schema_version: 1
run_id: a
status: ok
method:
  name: spt
   config: {}
task: {name: sst2, version: 1}
"""


def test_malformed_table_names_file_and_line_and_stays_identical(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(MALFORMED)
    before = path.read_bytes()
    with pytest.raises(SptbenchError) as err:
        read_table(path)
    match = re.search(rf"{re.escape(str(path))}:(\d+): ", str(err.value))
    assert match and 6 <= int(match.group(1)) <= 8, str(err.value)
    with pytest.raises(SptbenchError, match=re.escape(str(path))):
        append_record(path, make_record())
    assert path.read_bytes() == before


@pytest.mark.parametrize("error, raised", [(KeyboardInterrupt(), KeyboardInterrupt),
                                           (OSError(28, "No space left on device"), SptbenchError)])
def test_interrupted_write_leaves_old_table(tmp_path, monkeypatch, error, raised):
    """Half the record is written, then the write fails: the table is cut back to what it was."""
    path = tmp_path / "t.yaml"
    append_record(path, make_record())
    before = path.read_bytes()
    real_write = os.write

    def half_then_fail(fd, data):
        real_write(fd, data[: len(data) // 2])
        raise error

    monkeypatch.setattr(os, "write", half_then_fail)
    with pytest.raises(raised):
        append_record(path, make_record())
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".") and not f.name.endswith(".lock")] == []


def test_non_mapping_document_is_an_error(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("---\n- a\n- b\n")
    with pytest.raises(SptbenchError, match=r"t\.yaml:2: a record must be a mapping"):
        read_table(path)


def test_read_records_recurses_sorted_and_find_record(tmp_path):
    a, b = make_record(run_id="20260101T000000-aaaaaa"), make_record(run_id="20260101T000000-bbbbbb")
    append_record(tmp_path / "v1" / "z" / "16shot.yaml", b)
    append_record(tmp_path / "v1" / "a" / "16shot.yaml", a)
    assert [r["run_id"] for r in read_records([tmp_path])] == [a["run_id"], b["run_id"]]
    assert find_record([tmp_path], b["run_id"]) == b
    assert find_record([tmp_path], "20260101T000000-bb") == b
    with pytest.raises(SptbenchError, match="ambiguous"):
        find_record([tmp_path], "20260101T000000")
    with pytest.raises(SptbenchError, match="no record"):
        find_record([tmp_path], "nope")
    with pytest.raises(SptbenchError, match="no such file"):
        read_records([tmp_path / "missing"])


def test_validate_paths_reports_file_and_line(tmp_path):
    path = tmp_path / "t.yaml"
    good, bad = make_record(), make_record()
    bad["protocol"]["seed"] = "x"
    path.write_text(yaml.safe_dump(good, explicit_start=True) + yaml.safe_dump(bad, explicit_start=True))
    second_doc_line = path.read_text().splitlines().index("---", 1) + 2  # the first key of document 2
    broken = tmp_path / "sub" / "broken.yaml"
    broken.parent.mkdir()
    broken.write_text(MALFORMED)
    problems = validate_paths([tmp_path])
    assert f"{path}:{second_doc_line}: field 'protocol.seed' must be int, got str 'x'" in problems
    assert any(p.startswith(f"{broken}:") for p in problems)
    assert len(problems) == 2


def test_validate_paths_flags_duplicate_run_ids(tmp_path):
    rec = make_record()
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text(yaml.safe_dump(rec, explicit_start=True))
    assert any("duplicate run_id" in p for p in validate_paths([tmp_path]))


# ---------------------------------------------------------------------------------------------------- migration


def schema0(rec: dict) -> dict:
    """The schema-0 layout of a schema-1 record with accuracy as its only metric (see docs/records.md)."""
    old = {k: v for k, v in rec.items() if k not in ("schema_version", "method", "params", "metrics")}
    old["method"], old["method_config"] = rec["method"]["name"], rec["method"]["config"]
    old.update({f"params_{k}": v for k, v in rec["params"].items()})
    old["accuracy"], old["dev_accuracy"] = rec["metrics"]["test"]["accuracy"], rec["metrics"]["dev"]["accuracy"]
    return old


def test_migration_round_trip(tmp_path):
    assert set(MIGRATIONS) == set(range(SCHEMA_VERSION))
    current = make_record()
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(schema0(current), explicit_start=True, sort_keys=False))
    (migrated,) = read_table(path)
    assert migrated == current
    assert list(migrated) == list(current)  # schema order, as if freshly written
    assert validate_paths([path]) == []
    append_record(path, make_record())  # a table may mix schema versions; both read as current
    assert [r["schema_version"] for r in read_table(path)] == [1, 1]


def test_migrate_refuses_newer_schema_and_does_not_mutate():
    with pytest.raises(SptbenchError, match="newer"):
        migrate({"schema_version": SCHEMA_VERSION + 1})
    old = schema0(make_record())
    snapshot = yaml.safe_dump(old)
    migrate(old)
    assert yaml.safe_dump(old) == snapshot


# ---------------------------------------------------------------------------------------------------- keys


def test_record_key():
    a = make_record(method__config={"x": 1, "y": 2})
    b = make_record(method__config={"y": 2, "x": 1})  # different run id, metrics, order: same experiment
    assert record_key(a) == record_key(b)
    assert record_key(a) != record_key(make_record(protocol__seed=21))
    assert record_key(a) != record_key(make_record(task__version=2))
    assert record_key(a) != record_key(make_record(training__lr=0.1))
    assert record_key(a) != record_key(make_record(data__fingerprint="other"))
    assert record_key(a) != record_key(make_record(backbone__pooling="mean"))  # `--pooling` moves numbers


def test_runs_differing_only_in_pooling_are_two_rows():
    from sptbench.reports.tables import build_table

    records = [make_record(backbone__pooling=pooling, protocol__seed=seed) for pooling in ("cls", "mean")
               for seed in (13, 21)]
    table = build_table(records)
    assert len(table.rows) == 2 and all(cell.n == 2 for cell in table.cells.values())


def test_failed_record_as_the_runner_writes_it_is_valid():
    rec = make_record(status="failed", error="loss is nan at step 3", params={}, outcome__best_step=None)
    rec["metrics"] = {"selection_metric": "accuracy", "dev": {}, "test": {}}
    rec["throughput"].update(train_samples_per_s=None, train_tokens_per_s=None, eval_samples_per_s=None)
    assert validate_record(rec) == []
    rec["params"] = {"trainable": "many"}  # what a failed run does fill in is still type-checked
    assert validate_record(rec) == ["field 'params.trainable' must be int, got str 'many'"]


def test_records_predating_a_training_option_read_with_its_old_value(tmp_path):
    """Options added later (lr_schedule, head_dropout, ...) default to what older runs did, so an old record and a
    new run of the same configuration share a key; a run with another value does not."""
    from dataclasses import asdict

    from sptbench.records.migrate import LEGACY_TRAINING
    from sptbench.training.loop import STOCK_SETTINGS, TrainConfig

    defaults = {k: v for k, v in asdict(TrainConfig()).items() if k != "seed"}
    assert {k: defaults[k] for k in LEGACY_TRAINING} == LEGACY_TRAINING  # the old behaviour is still the default
    new = make_record(training={**defaults, "device": "cpu", "dtype": "fp32"})
    old = make_record(training={k: v for k, v in new["training"].items() if k not in LEGACY_TRAINING})
    path = tmp_path / "t.yaml"
    for rec in (old, new):
        append_record(path, rec)
    old_read, new_read = read_table(path)
    assert old_read["training"] == new_read["training"]
    assert record_key(old_read) == record_key(new_read)
    for key, value in STOCK_SETTINGS.items():
        if key in LEGACY_TRAINING:
            assert record_key(make_record(training={**new["training"], key: value})) != record_key(new_read)


def test_legacy_method_config_is_what_the_configs_default_to():
    """A record written before a config field existed reads with that field's default, which is what it ran."""
    from dataclasses import asdict

    from sptbench.methods.registry import build_config, get_method
    from sptbench.records.migrate import LEGACY_METHOD_CONFIG

    for name, fields in LEGACY_METHOD_CONFIG.items():
        defaults = asdict(build_config(get_method(name)))
        assert {k: defaults[k] for k in fields} == fields
        old = make_record(method__name=name, method__config={"num_tokens": 10})
        (read,) = [migrate(old)]
        assert read["method"]["config"] == {"num_tokens": 10, **fields}


def test_head_section_defaults_to_linear_and_is_part_of_the_key():
    from sptbench.records.keys import head_of, key_label

    old = example_record()  # records from before the prompt head have no `head`
    assert "head" not in old and validate_record(old) == [] and head_of(old) == {"kind": "linear"}
    linear = {**example_record(), "head": {"kind": "linear"}}
    prompt = {**example_record(), "head": {"kind": "prompt", "loss": "vocab", "template_name": "default",
                                           "template": "<s1> It was <mask> .", "label_words": ["terrible", "great"]}}
    assert validate_record(linear) == [] and validate_record(prompt) == []
    assert record_key(old) == record_key(linear) != record_key(prompt)
    assert key_label(record_key(prompt)).endswith("prompt head")
    bad = {**prompt, "head": {"kind": "prompt", "loss": "mse"}}
    problems = validate_record(bad)
    assert any("head.loss" in p for p in problems) and any("head.template" in p for p in problems)


def test_folders_hold_other_kinds_of_yaml_beside_tables(tmp_path):
    """`sptbench bench` records and the stock loop's output live under results/ too: folder scans leave them to their
    own readers; the repository's own results/ validates."""
    table = tmp_path / "v1" / "m" / "16shot.yaml"
    append_record(table, make_record())
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "cpu.yaml").write_text("---\nbench_version: 1\nmethod: {name: head}\n")
    (tmp_path / "stock_loop.yaml").write_text("---\nscript: scripts/stock_loop.py\ntest_accuracy: 0.5\n")
    assert validate_paths([tmp_path]) == [] and len(read_records([tmp_path])) == 1
    assert validate_paths([tmp_path / "bench" / "cpu.yaml"])  # named explicitly, a file is read as a table
    repo_results = Path(__file__).resolve().parents[1] / "results"
    assert validate_paths([repo_results]) == []


@pytest.mark.parametrize("sweep, why", [("oops", "must be a mapping, got str"), ([1], "must be a mapping, got list"),
                                        ({"config_index": "2"}, "sweep.config_index' must be a non-negative"),
                                        ({"configs": -1}, "sweep.configs' must be a non-negative"),
                                        ({"group_configs": True}, "sweep.group_configs' must be a non-negative")])
def test_a_malformed_sweep_section_is_invalid_not_a_crash_of_dev_selection(tmp_path, capsys, sweep, why):
    """The `sweep` section that dev selection and the test-once protocol read is checked like the rest."""
    from sptbench.cli.main import main
    from sptbench.records.schema import validate_record
    from tests.helpers import make_record

    rec = make_record()
    rec["sweep"] = sweep
    assert any(why in p for p in validate_record(rec))
    table = tmp_path / "v1" / "m" / "16shot.yaml"
    table.parent.mkdir(parents=True)
    table.write_text(yaml.safe_dump(rec, sort_keys=False), encoding="utf-8")
    assert main(["table", str(tmp_path), "--select-by-dev"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "field 'sweep" in err[0]
