"""The declared run schema (core/run_schema.py): every field that can move a recorded number is in the record key,
and runs that differ in one key field are distinct rows for `table` and distinct plan entries for `sweep`."""

from __future__ import annotations

import dataclasses
import json

import pytest

from sptbench.core import run_schema as schema
from sptbench.core.run_schema import KEY_FIELDS, RunSpec, TrainConfig
from sptbench.records.keys import latest_per_key, record_key
from tests.helpers import make_record

# For every RunSpec field in the key: (the base spec's other fields, value a, value b). A new key field without an
# entry here fails test_every_key_field_changes_the_plan_key.
VARIANTS = {
    "method": ({}, "lora", "adapter"),
    "task": ({}, "sst2", "mr"),
    "seed": ({}, 13, 21),
    "shots": ({}, None, 16),
    "train_size": ({}, None, 100),
    "split_source": ({"shots": 16}, "sample", "lm-bff"),
    "model": ({}, "tiny-bert", "tiny-roberta"),
    "revision": ({"model": "org/some-model"}, None, "0123abcd"),
    "head": ({"model": "tiny-roberta"}, "linear", "prompt"),
    "prompt_loss": ({"head": "prompt"}, "label_words", "vocab"),
    "template": ({"head": "prompt", "task": "trec"}, "default", "causal"),
    "method_overrides": ({"method": "lora"}, {}, {"rank": 4}),
    "train_overrides": ({}, {}, {"lr": 0.1}),
    "dtype": ({}, "fp32", "bf16"),
}
# matched beside the plan key (sweep/plan.py): pooling None means the backbone's default; device `auto` means any
MATCHED_APART = {"pooling", "device"}


def _spec(**kw) -> RunSpec:
    return RunSpec(**{"method": "lora", "task": "sst2", "model": "tiny-bert", **kw})


def test_every_field_is_in_the_key_or_says_why_not():
    for cls in (RunSpec, TrainConfig):
        for f in dataclasses.fields(cls):
            key, why = f.metadata.get("key"), f.metadata.get("not_in_key")
            assert (key is None) != (why is None), f"{cls.__name__}.{f.name}: declare key= or not_in_key="
            assert key is None or key in KEY_FIELDS, f"{cls.__name__}.{f.name}: no key component '{key}'"
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"


def test_every_key_component_is_fed_by_a_field_or_the_data():
    fed = {f.metadata.get("key") for cls in (RunSpec, TrainConfig) for f in dataclasses.fields(cls)}
    # the task's version comes with the task, the fingerprint with the data it loads
    assert set(KEY_FIELDS) - fed == {"task_version", "data_fingerprint"}


def test_every_training_option_is_in_the_recorded_training_section():
    from sptbench.run.runner import training_section

    section = training_section(TrainConfig(), "cpu", "fp32")
    for f in dataclasses.fields(TrainConfig):
        if f.name != "seed":  # the run's seed, keyed as the protocol's
            assert f.name in section, f.name
    changed = training_section(TrainConfig(max_grad_norm=None, sampler="torch"), "cpu", "fp32")
    assert record_key(make_record(training=section)) != record_key(make_record(training=changed))


@pytest.mark.parametrize(
    "name", sorted(f.name for f in dataclasses.fields(RunSpec) if f.metadata["key"] and f.name not in MATCHED_APART)
)
def test_every_key_field_changes_the_plan_key(name):
    from sptbench.sweep.plan import spec_key

    assert name in VARIANTS, f"add a VARIANTS entry for the new key field '{name}'"
    base, a, b = VARIANTS[name]
    assert spec_key(_spec(**base, **{name: a})) != spec_key(_spec(**base, **{name: b}))
    assert spec_key(_spec(**base, **{name: a})) == spec_key(_spec(**base, **{name: a}))


@pytest.mark.parametrize("component", KEY_FIELDS)
def test_records_differing_in_one_key_field_are_both_kept(component):
    """`table`, `check` and `compare` keep the latest record per key: two runs differing only in one key component
    must not be taken for one experiment run twice."""
    a = make_record()
    b = json.loads(json.dumps(a))
    b["run_id"] = a["run_id"] + "b"
    where = {
        "method": ("method", "name", "adapter"),
        "method_config": ("method", "config", {"r": 4}),
        "task": ("task", "name", "mr"),
        "task_version": ("task", "version", 9),
        "shots": ("protocol", "shots", 8),
        "train_size": ("protocol", "train_size", 100),
        "split_source": ("protocol", "split_source", "other"),
        "seed": ("protocol", "seed", 99),
        "backbone": ("backbone", "id", "other"),
        "pooling": ("backbone", "pooling", "cls" if a["backbone"]["pooling"] != "cls" else "mean"),
        "data_fingerprint": ("data", "fingerprint", "f" * 16),
        "training": ("training", "lr", 0.123),
    }
    if component == "head":
        b["head"] = {"kind": "prompt", "loss": "vocab", "template": "t", "label_words": ["a", "b"]}
    else:
        section, leaf, value = where[component]
        b[section][leaf] = value
    assert [k for k, x, y in zip(KEY_FIELDS, record_key(a), record_key(b), strict=True) if x != y] == [component]
    kept, replaced = latest_per_key([a, b])
    assert len(kept) == 2 and replaced == []
    # a record with the same key is a rerun: the later one is kept
    c = json.loads(json.dumps(a))
    c["run_id"], c["created"] = a["run_id"] + "c", "2099-01-01T00:00:00+00:00"
    kept, replaced = latest_per_key([a, c])
    assert [r["run_id"] for r in kept] == [c["run_id"]] and replaced == [a["run_id"]]


def test_poolings_are_distinct_table_rows():
    from sptbench.reports.tables import build_table

    recs = [make_record(protocol__seed=s, backbone__pooling=p) for s in (13, 21) for p in ("cls", "mean")]
    table = build_table(recs)
    assert len(table.rows) == 2 and all("pooling" in row for row in table.rows)


def test_pooling_and_device_split_the_plan(tmp_path, monkeypatch):
    """A sweep that names a pooling (or a device) does not take a run with another one for done."""
    from sptbench.sweep.plan import plan
    from sptbench.sweep.spec import parse_sweep

    raw = {"tasks": ["sst2"], "methods": ["lora"], "seeds": [13], "shots": [16], "model": "tiny-bert",
           "results_dir": str(tmp_path), "train": {"max_steps": 2}}
    spec = parse_sweep(raw).specs()[0]
    from sptbench.sweep.plan import spec_record

    rec = make_record(**{k: v for k, v in spec_record(spec).items() if k != "data"})
    rec["backbone"] = {**make_record()["backbone"], "id": "tiny-bert", "pooling": "mean"}
    rec["training"]["device"] = "cpu"
    assert len(plan(parse_sweep(raw), [rec]).done) == 1  # no pooling / device named: any
    assert len(plan(parse_sweep({**raw, "pooling": "mean", "device": "cpu"}), [rec]).done) == 1
    assert len(plan(parse_sweep({**raw, "pooling": "cls"}), [rec]).todo) == 1
    monkeypatch.setattr("sptbench.sweep.spec._check_local_device", lambda device: None)  # as if CUDA were here
    assert len(plan(parse_sweep({**raw, "device": "cuda"}), [rec]).todo) == 1


def test_run_flags_config_keys_and_sweep_keys_come_from_the_schema():
    from sptbench.cli.main import build_parser
    from sptbench.sweep.spec import SWEEP_KEYS

    run = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "run")[1]
    dests = {a.dest for a in run._actions}
    for cls in (RunSpec, TrainConfig):
        for f in schema.flag_fields(cls):
            assert f.name in dests, f.name
            action = next(a for a in run._actions if a.dest == f.name)
            assert action.choices == f.metadata["choices"] or (action.choices is None and not f.metadata["choices"])
    for f in dataclasses.fields(RunSpec):
        for key in f.metadata["sweep"]:
            assert key in SWEEP_KEYS


def test_check_choices_names_the_field_and_the_choices():
    from sptbench.core.errors import SptbenchError

    with pytest.raises(SptbenchError, match="'pooling'.*cls"):
        schema.check_choices(_spec(pooling="max"))
    with pytest.raises(SptbenchError, match="sampler"):
        schema.check_train_config(TrainConfig(sampler="numpy"))
    schema.check_choices(_spec())  # the defaults are valid
