"""Cluster-safe records (records/runfiles.py, records/merge.py, sweep/launch.py): records as files of their own,
`sptbench merge` folding them into the tables idempotently and refusing conflicts, and array jobs that claim their
runs so that two launchers given the same runs run each once."""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest

from sptbench.cli.main import main
from sptbench.core.errors import SptbenchError
from sptbench.records.build import new_run_id
from sptbench.records.io import append_record, read_records, read_table, record_table_path
from sptbench.records.merge import merge_runs
from sptbench.records.runfiles import run_file_path, run_files, write_run_file
from tests.helpers import make_record

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: no oversubscribed cores


def _records(n: int, seed: int = 13) -> list[dict]:
    return [make_record(protocol__seed=seed + i) for i in range(n)]


def test_a_run_file_sits_beside_its_table_and_is_never_overwritten(tmp_path):
    rec = make_record()
    path = write_run_file(tmp_path, rec)
    assert path == run_file_path(tmp_path, rec)
    assert path.parent == record_table_path(tmp_path, rec).parent / "runs" and path.name == f"{rec['run_id']}.yaml"
    assert read_table(path) == [rec]
    assert read_records([tmp_path]) == [rec]  # readers of the results folder see it before it is merged
    with pytest.raises(SptbenchError, match="already exists"):
        write_run_file(tmp_path, rec)
    with pytest.raises(SptbenchError, match="invalid record"):
        write_run_file(tmp_path, {**make_record(), "status": "maybe"})


def test_merge_folds_run_files_into_their_table_idempotently(tmp_path):
    old = make_record(protocol__seed=1)
    table = record_table_path(tmp_path, old)
    append_record(table, old)
    recs = _records(3)
    for rec in recs:
        write_run_file(tmp_path, rec)
    report = merge_runs(tmp_path, keep=True)
    assert (report.added, report.already) == (3, 0) and report.tables == {str(table): 3}
    ids = [r["run_id"] for r in read_table(table)]
    assert ids[0] == old["run_id"] and ids[1:] == sorted(r["run_id"] for r in recs)  # run files in name order
    kept = sorted(table.parent.glob("runs/*.yaml.merged"))
    assert len(kept) == 3 and run_files(tmp_path) == [] and len(read_records([tmp_path])) == 4  # not read twice
    for path in kept:  # the same files merged again: still one record each; the files go
        path.rename(path.with_name(path.name.removesuffix(".merged")))
    again = merge_runs(tmp_path)
    assert (again.added, again.already, again.removed) == (0, 3, 3)
    assert len(read_table(table)) == 4 and run_files(tmp_path) == []
    assert merge_runs(tmp_path).added == 0 and len(read_table(table)) == 4


def test_a_conflicting_duplicate_names_both_files_and_merges_nothing(tmp_path):
    rec, other = _records(2)
    table = record_table_path(tmp_path, rec)
    append_record(table, rec)
    changed = {**rec, "metrics": {**rec["metrics"], "test": {"accuracy": 0.123}}}
    write_run_file(tmp_path, other)
    path = write_run_file(tmp_path, changed)
    with pytest.raises(SptbenchError) as err:
        merge_runs(tmp_path)
    assert str(table) in str(err.value) and str(path) in str(err.value) and rec["run_id"] in str(err.value)
    assert read_table(table) == [rec] and len(run_files(tmp_path)) == 2  # nothing written, nothing removed


def test_two_run_files_with_one_run_id_but_different_records_conflict(tmp_path):
    rec = make_record()
    first = write_run_file(tmp_path, rec)
    copy = first.with_name("copy.yaml")
    copy.write_text(first.read_text().replace(str(rec["metrics"]["test"]["accuracy"]), "0.111"))
    with pytest.raises(SptbenchError, match="different contents") as err:
        merge_runs(tmp_path)
    assert str(first) in str(err.value) and str(copy) in str(err.value)
    copy.write_text(first.read_text())  # an identical copy is the same record: merged once
    assert merge_runs(tmp_path).added == 1 and len(read_table(record_table_path(tmp_path, rec))) == 1


def test_merge_command(tmp_path, capsys):
    for rec in _records(2):
        write_run_file(tmp_path, rec)
    assert main(["merge", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "merged 2 record(s), 0 already in their table; 2 run file(s) removed" in out, out
    assert main(["merge", str(tmp_path)]) == 0 and "merged 0 record(s)" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------- launchers


def _fake_run(spec):
    """A run that takes a moment and writes the record its spec would (matching its plan key) as a run file."""
    from types import SimpleNamespace

    from sptbench.sweep.plan import spec_record

    time.sleep(0.3)
    planned = spec_record(spec)
    rec = make_record(method=planned["method"], head=planned["head"], training={**planned["training"], "device": "cpu"})
    rec["task"].update(planned["task"])
    rec["protocol"].update(planned["protocol"])
    rec["backbone"]["id"] = spec.model
    rec["run_id"] = new_run_id()  # a real id: forked processes share the helpers' seeded id sequence
    assert spec.record_to == "file" and spec.checkpoint_every == 2  # what an array job runs with
    write_run_file(spec.results_dir, rec)
    return SimpleNamespace(record=rec)


def _launcher(args) -> list[dict]:
    specs, seen = args
    from sptbench.sweep.launch import RunJob, cluster_spec

    job = RunJob(seen)
    return [job(cluster_spec(spec)) for spec in specs]


def test_two_concurrent_array_launchers_run_each_run_once(tmp_path, data_dir, monkeypatch):
    """Two arrays over the same runs (a resubmission while the first runs), as two processes: each run once."""
    from sptbench.sweep.plan import plan
    from sptbench.sweep.spec import parse_sweep
    from tests.test_sweep import tiny_sweep

    sweep = parse_sweep(tiny_sweep(tmp_path, data_dir, seeds=[13, 21, 42, 87]))
    monkeypatch.setattr("sptbench.run.runner.run", _fake_run)
    p = plan(sweep)
    with mp.get_context("fork").Pool(2) as pool:
        a, b = pool.map(_launcher, [(p.todo, p.seen), (p.todo, p.seen)])
    statuses = sorted(x["status"] for x in a + b)
    assert statuses == ["ok"] * 4 + ["skipped"] * 4, a + b
    records = read_records([tmp_path / "results"])
    assert sorted(r["protocol"]["seed"] for r in records) == [13, 21, 42, 87]
    assert len(plan(sweep).todo) == 0  # the unmerged run files count as done
    assert merge_runs(sweep.results_dir).added == 4 and len(plan(sweep).todo) == 0


def test_a_requeued_job_is_the_same_run():
    from sptbench.sweep.launch import RunJob

    pytest.importorskip("submitit")
    job = RunJob(frozenset({"x"}))
    again = job.checkpoint("the spec")
    assert again.args == ("the spec",) and again.function.seen == frozenset({"x"})


@pytest.mark.slow  # each job is a fresh Python process importing torch + transformers
def test_two_submitit_local_arrays_run_each_run_once_and_merge(tmp_path, data_dir):
    pytest.importorskip("submitit")
    from sptbench.sweep.launch import submit
    from sptbench.sweep.plan import plan
    from sptbench.sweep.spec import parse_sweep
    from tests.test_sweep import tiny_sweep

    sweep = parse_sweep(tiny_sweep(tmp_path, data_dir))
    p = plan(sweep)
    first = submit(p.todo, folder=tmp_path / "logs" / "%j", cluster="local", name="a", time_min=5, seen=p.seen)
    second = submit(p.todo, folder=tmp_path / "logs" / "%j", cluster="local", name="b", time_min=5, seen=p.seen)
    results = [job.result() for job in first + second]
    assert sorted(r["status"] for r in results).count("ok") == 2
    assert len(read_records([tmp_path / "results"])) == 2
    assert merge_runs(sweep.results_dir).added == 2 and len(plan(sweep).todo) == 0


def test_a_sweep_gives_its_runs_the_long_run_and_record_options(tmp_path, data_dir):
    from sptbench.sweep.launch import cluster_spec
    from sptbench.sweep.spec import parse_sweep
    from tests.test_sweep import tiny_sweep

    sweep = parse_sweep(tiny_sweep(tmp_path, data_dir, checkpoint_every=5, record_to="table",
                                   gradient_checkpointing=True, logger="none"))
    spec = sweep.specs()[0]
    assert (spec.checkpoint_every, spec.record_to, spec.gradient_checkpointing) == (5, "table", True)
    assert (cluster_spec(spec).checkpoint_every, cluster_spec(spec).record_to) == (5, "table")  # the file wins
    plain = parse_sweep(tiny_sweep(tmp_path, data_dir)).specs()[0]
    assert (plain.checkpoint_every, plain.record_to) == (None, None)
    assert (cluster_spec(plain).checkpoint_every, cluster_spec(plain).record_to) == (2, "file")  # eval_every 2
    for key, bad in (("checkpoint_every", 0), ("checkpoint_every", "5"), ("record_to", "cloud"),
                     ("gradient_checkpointing", "yes")):
        with pytest.raises(SptbenchError, match=key):
            parse_sweep(tiny_sweep(tmp_path, data_dir, **{key: bad}))


def test_a_run_with_record_to_file_writes_its_own_file(tmp_path, data_dir):
    from sptbench.run.runner import RunSpec, run

    spec = RunSpec(method="head", task="rte", shots=4, seed=13, model="tiny-bert", data_dir=str(data_dir),
                   results_dir=str(tmp_path), train_overrides={"max_steps": 2, "eval_every": 2, "batch_size": 4},
                   progress=False, record_to="file")
    out = run(spec)
    assert out.table == run_file_path(tmp_path, out.record) and read_table(out.table) == [out.record]
    assert not record_table_path(tmp_path, out.record).exists()  # the shared table is not touched
    assert merge_runs(tmp_path).added == 1 and read_table(record_table_path(tmp_path, out.record)) == [out.record]
