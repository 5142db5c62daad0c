"""Property-based fuzzing (hypothesis) of everything that reads input from users: generated and mutated run
configs, sweep files, task specs, data rows, results tables and saved models. Each input either works or is refused
with one `SptbenchError` line (CLI: exit 2, one line on stderr, no traceback); a refused append leaves the table
byte-identical; a mutated save either rebuilds the exact saved parameters or is refused.

Budget: the `ci` profile (default) tries a few hundred inputs in ~30 s; `SPTBENCH_FUZZ=long pytest tests/test_fuzz.py`
tries ~20x more. `--hypothesis-show-statistics` prints how many inputs each property tried.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import sptbench.run.runner as runner_mod
from sptbench.core.errors import SptbenchError
from sptbench.records.io import append_record, dump_record, read_table, validate_paths
from sptbench.run.persist import load_trained
from tests.helpers import make_record
from tests.helpers import run_cli as cli

_COMMON = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=False, database=None)
settings.register_profile("ci", max_examples=40, **_COMMON)
settings.register_profile("long", max_examples=800, **_COMMON)
PROFILE = os.environ.get("SPTBENCH_FUZZ", "ci")
FUZZ = settings.get_profile(PROFILE)
FEW = settings(FUZZ, max_examples=max(8, FUZZ.max_examples // 3))  # properties that build a model per input
TRIED: Counter = Counter()  # inputs tried per property (printed at the end with -s)


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    total = sum(TRIED.values())
    print(f"\nfuzz ({PROFILE}): {total} inputs: " + ", ".join(f"{k} {v}" for k, v in sorted(TRIED.items())))


class Accepted(BaseException):
    """Raised where a run would start reading data: the input passed every check up to there."""



def assert_clean(code, err: str, ok: tuple = (0,)) -> None:
    """Success, or exit 2 with exactly one line and no traceback."""
    assert "Traceback" not in err, err
    if code not in ok:
        assert code == 2, (code, err)
        assert err.count("\n") == 1 and err.startswith("sptbench"), err


# ---------------------------------------------------------------------------------------------------- values

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.integers(-3, 40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["", "head", "spt", "rte", "tiny-bert", "fp32", "cpu", "lm-bff", "16", "1e-3", "nan", "..",
                       "/", "null", "true"])
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=8), inner, max_size=3), max_leaves=8)
keys = st.text(min_size=1, max_size=12)


def yaml_text(data) -> str:
    return yaml.safe_dump(data, allow_unicode=True)


mutilate_bytes = st.lists(st.tuples(st.integers(0, 10**6), st.binary(min_size=0, max_size=4)), min_size=1, max_size=4)


def splice(text: bytes, edits) -> bytes:
    """Replace a few spans of `text` by random bytes."""
    data = bytearray(text)
    for pos, chunk in edits:
        at = pos % (len(data) + 1)
        data[at : at + len(chunk)] = chunk
    return bytes(data)


# ---------------------------------------------------------------------------------------------------- run configs

BASE_RUN = {"method": "head", "task": "rte", "shots": 4, "seed": 13, "model": "tiny-bert",
            "train": {"max_steps": 2, "eval_every": 2, "batch_size": 4}}
RUN_KEYS = ["method", "task", "seed", "shots", "train_size", "split_source", "model", "pooling", "data_dir",
            "results_dir", "device", "dtype", "save_dir", "overwrite", "set", "train", "max_steps"]
TRAIN_KEYS = ["max_steps", "lr", "batch_size", "eval_every", "patience", "weight_decay", "warmup_ratio",
              "frozen_layers", "group_by_length", "max_grad_norm", "eval_batch_size", "nope"]
SET_KEYS = ["top_k", "num_tokens", "r", "layers", "select", "threshold", "x"]


@st.composite
def run_configs(draw):
    cfg = copy.deepcopy(BASE_RUN)
    for key in draw(st.lists(st.sampled_from(RUN_KEYS) | keys, max_size=3)):
        cfg[key] = draw(values)
    if draw(st.booleans()):
        cfg["train"] = {k: draw(values) for k in draw(st.lists(st.sampled_from(TRAIN_KEYS), max_size=3))}
    if draw(st.booleans()):
        cfg["method"] = draw(st.sampled_from(["spt", "lpt", "prompt_tuning", "lora", "head"]))
        cfg["set"] = {k: draw(values) for k in draw(st.lists(st.sampled_from(SET_KEYS), max_size=2))}
    return cfg


@pytest.fixture
def stop_at_data(monkeypatch):
    def accepted(*args, **kwargs):
        raise Accepted

    monkeypatch.setattr(runner_mod, "load_task", accepted)


@FUZZ
@given(cfg=run_configs(), flags=st.lists(st.sampled_from(
    [["--lr", "-1"], ["--seed", "4294967296"], ["--seed", "0"], ["--patience", "1"], ["--shots", "0"],
     ["--warmup-ratio", "0.99"], ["--weight-decay", "0"], ["--set", "top_k=4"], ["--set", "=1"], ["--shot", "2"],
     ["--pooling", "last"], ["--dtype", "bf16"], ["--lr", "inf"]]), max_size=2))
def test_fuzz_run_configs(tmp_path_factory, capsys, stop_at_data, cfg, flags):
    TRIED["run configs"] += 1
    folder = tmp_path_factory.mktemp("cfg")
    path = folder / "run.yaml"
    path.write_text(yaml_text(cfg), encoding="utf-8")
    argv = ["run", "--config", str(path), "--results-dir", str(folder / "results"), "--quiet"]
    try:
        code, _, err = cli(argv + [f for pair in flags for f in pair], capsys)
    except Accepted:
        capsys.readouterr()
        event("accepted")
        return
    event("refused")
    assert_clean(code, err)
    assert code == 2  # a run that passes every check reaches the data (Accepted)
    assert not (folder / "results").exists()


@FUZZ
@given(cfg=st.builds(yaml_text, run_configs()).map(str.encode), edits=mutilate_bytes)
def test_fuzz_run_config_bytes(tmp_path_factory, capsys, stop_at_data, cfg, edits):
    TRIED["run config bytes"] += 1
    folder = tmp_path_factory.mktemp("cfgb")
    path = folder / "run.yaml"
    path.write_bytes(splice(cfg, edits))
    try:
        code, _, err = cli(["run", "--config", str(path), "--results-dir", str(folder / "r")], capsys)
    except Accepted:
        capsys.readouterr()
        return
    assert_clean(code, err)


# ---------------------------------------------------------------------------------------------------- sweeps

SWEEP_KEYS = ["name", "model", "tasks", "methods", "shots", "train_size", "split_source", "seeds", "train",
              "method_train", "method_set", "device", "dtype", "pooling", "launcher", "slurm", "junk"]


@st.composite
def sweeps(draw, mirror: Path):
    sweep = {"name": "fz", "model": "tiny-bert", "tasks": "rte", "methods": ["head", "lpt"], "shots": 4,
             "seeds": [13, 21], "data_dir": str(mirror), "train": {"max_steps": 2, "eval_every": 2}}
    for key in draw(st.lists(st.sampled_from(SWEEP_KEYS), max_size=3)):
        sweep[key] = draw(values)
    if draw(st.booleans()):
        sweep["train"] = {k: draw(values) for k in draw(st.lists(st.sampled_from(TRAIN_KEYS), max_size=2))}
    if draw(st.booleans()):
        sweep["method_set"] = {"lpt": {"layer": draw(values)}}
    return sweep


@FUZZ
@given(data=st.data())
def test_fuzz_sweep_dry_run(tmp_path_factory, capsys, mirror, data):
    TRIED["sweep files"] += 1
    sweep = data.draw(sweeps(mirror))
    folder = tmp_path_factory.mktemp("sweep")
    path = folder / "s.yaml"
    path.write_text(yaml_text(sweep), encoding="utf-8")
    code, _, err = cli(["sweep", str(path), "--dry-run", "--results-dir", str(folder / "r")], capsys)
    event("accepted" if code == 0 else "refused")
    assert_clean(code, err)
    assert not (folder / "r").exists()


# ---------------------------------------------------------------------------------------------------- task specs


def _spec_paths(raw: dict):
    out = []
    for key, value in raw.items():
        out.append((key,))
        if isinstance(value, dict):
            out += [(key, k) for k in value]
    return out


@FUZZ
@given(data=st.data())
def test_fuzz_task_specs(data):
    from sptbench.core.safe_yaml import load_one
    from sptbench.data.specs import TaskSpec, _spec_from_raw, _specs_root

    TRIED["task specs"] += 1
    name = data.draw(st.sampled_from(["rte", "sst2", "trec", "mnli"]))
    text = (_specs_root() / f"{name}.yaml").read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    for path in data.draw(st.lists(st.sampled_from(_spec_paths(raw)), max_size=3)):
        target = raw
        for part in path[:-1]:
            target = target.get(part) if isinstance(target, dict) else None
        if isinstance(target, dict):
            if data.draw(st.booleans()):
                target.pop(path[-1], None)
            else:
                target[path[-1]] = data.draw(values)
    mutated = yaml_text(raw)
    if data.draw(st.booleans()):
        mutated = splice(mutated.encode(), data.draw(mutilate_bytes)).decode("utf-8", "replace")
    try:
        spec = _spec_from_raw(load_one(mutated, f"{name}.yaml"), name, f"{name}.yaml")
    except SptbenchError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(spec, TaskSpec) and spec.num_labels >= 1 and spec.max_length >= 1


# ---------------------------------------------------------------------------------------------------- data rows

rows = st.dictionaries(st.sampled_from(["sentence1", "sentence2", "label", "idx", "x"]),
                       values | st.sampled_from(["entailment", "not_entailment"]), max_size=4)


@FUZZ
@given(good=st.integers(0, 5), rows_=st.lists(rows, max_size=4), edits=st.none() | mutilate_bytes)
def test_fuzz_data_rows(tmp_path_factory, mirror, good, rows_, edits):
    import json

    from sptbench.data.specs import load_spec
    from sptbench.data.tasks import read_jsonl, read_lm_bff

    TRIED["data files"] += 1
    spec = load_spec("rte")
    folder = tmp_path_factory.mktemp("rows")
    real = (mirror / "rte" / "train.jsonl").read_text(encoding="utf-8").splitlines()[:good]
    text = "\n".join(real + [json.dumps(r, ensure_ascii=False, default=str) for r in rows_]).encode()
    tsv = (mirror / "lm-bff-16-shot" / "RTE" / "16-13" / "dev.tsv").read_bytes()
    if edits:
        text, tsv = splice(text, edits), splice(tsv, edits)
    (folder / "d.jsonl").write_bytes(text)
    (folder / "d.tsv").write_bytes(tsv)
    for read, path in ((read_jsonl, folder / "d.jsonl"), (read_lm_bff, folder / "d.tsv")):
        try:
            out = read(path, spec)
        except SptbenchError as e:
            assert "\n" not in str(e) and str(path) in str(e)
            continue
        assert out and all(isinstance(r["sentence1"], str) and r["label"] in (0, 1) for r in out)


# ---------------------------------------------------------------------------------------------------- tables

RECORD_PATHS = [("status",), ("run_id",), ("schema_version",), ("metrics", "test"), ("metrics", "dev"),
                ("protocol", "seed"), ("protocol", "shots"), ("backbone", "id"), ("method", "name"),
                ("method", "config"), ("training",), ("params", "trainable"), ("time", "wall_s"), ("extra",),
                ("task", "version"), ("created",), ("error",), ("metrics",), ("protocol",)]


@st.composite
def tables(draw):
    records = []
    for _ in range(draw(st.integers(1, 3))):
        rec = make_record(protocol__seed=draw(st.integers(0, 3)))
        for path in draw(st.lists(st.sampled_from(RECORD_PATHS), max_size=2)):
            target = rec
            for part in path[:-1]:
                target = target[part] if isinstance(target, dict) and isinstance(target.get(part), dict) else None
            if isinstance(target, dict):
                if draw(st.booleans()):
                    target.pop(path[-1], None)
                else:
                    target[path[-1]] = draw(values | st.just(float("nan")))
        records.append(rec)
    text = "".join(yaml.safe_dump(r, explicit_start=True, sort_keys=False, allow_unicode=True) for r in records)
    edits = draw(st.none() | mutilate_bytes)
    return splice(text.encode(), edits) if edits else text.encode()


@FUZZ
@given(table=tables())
def test_fuzz_results_tables(tmp_path_factory, capsys, table):
    TRIED["results tables"] += 1
    folder = tmp_path_factory.mktemp("tab")
    path = folder / "t.yaml"
    path.write_bytes(table)
    good = folder / "good.yaml"
    good.write_text(dump_record(make_record()))
    for argv, ok in ((["validate", str(path)], (0, 1)), (["table", str(path)], (0,)),
                     (["check", str(good), "--against", str(path)], (0, 1)), (["show", "2", "--results-dir",
                                                                               str(folder)], (0,))):
        code, out, err = cli(argv, capsys)
        assert_clean(code, err, ok)
    problems = validate_paths([path])
    assert all("\n" not in p for p in problems)
    try:
        before = len(read_table(path))
    except SptbenchError:
        before = None
    try:
        append_record(path, make_record())
    except SptbenchError as e:
        assert path.read_bytes() == table and "\n" not in str(e)  # refused: the table is untouched
        assert before is None
    else:  # an append reads the table's last record only: a problem before it is `validate`'s to report
        assert path.read_bytes().startswith(table)
        assert before is None or len(read_table(path)) == before + 1


# ---------------------------------------------------------------------------------------------------- saved models


@pytest.fixture
def saved(saved_runs):
    return {method: folder for method, (folder, _) in saved_runs.items()}


DTYPES = [torch.float16, torch.float64, torch.int64, torch.bool, torch.bfloat16, torch.float32]


@FEW
@given(data=st.data())
def test_fuzz_load_trained_is_exact_or_refused(tmp_path_factory, saved, data):
    TRIED["mutated saves"] += 1
    method = data.draw(st.sampled_from(sorted(saved)))
    folder = tmp_path_factory.mktemp("mut")
    shutil.copytree(saved[method], folder, dirs_exist_ok=True)
    state = load_file(str(folder / "trained.safetensors"))
    names = sorted(state)
    for _ in range(data.draw(st.integers(0, 2))):
        op = data.draw(st.sampled_from(["drop", "add", "shape", "dtype", "values", "rename"]))
        name = data.draw(st.sampled_from(names))
        if name not in state:
            continue
        if op == "drop":
            state.pop(name)
        elif op == "add":
            state[name + data.draw(st.sampled_from([".x", "_", "0"]))] = torch.zeros(2)
        elif op == "shape":
            shape = data.draw(st.lists(st.integers(0, 4), max_size=3))
            state[name] = torch.zeros(shape)
        elif op == "dtype":
            state[name] = state[name].to(data.draw(st.sampled_from(DTYPES)))
        elif op == "values" and state[name].is_floating_point():
            state[name] = torch.full_like(state[name], data.draw(st.floats(-1e3, 1e3)))
        else:
            state[data.draw(st.sampled_from(names))] = state.pop(name)
    save_file(state, str(folder / "trained.safetensors"))
    if data.draw(st.booleans()):
        raw = (folder / "record.yaml").read_bytes()
        (folder / "record.yaml").write_bytes(splice(raw, data.draw(mutilate_bytes)))
    try:
        model, _ = load_trained(folder)
    except SptbenchError as e:
        assert "\n" not in str(e) and str(folder) in str(e)
        event("refused")
        return
    event("rebuilt")
    rebuilt = model.export_state()
    assert rebuilt.keys() == state.keys()
    for name, tensor in state.items():
        assert rebuilt[name].dtype == tensor.dtype and torch.equal(rebuilt[name], tensor), name


# ------------------------------------------------------------------------------------- issue 38: inputs checked


@FUZZ
@given(data=st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True), values, min_size=1, max_size=6),
       pick=st.integers(0, 100), nested=st.booleans(), again=values)
def test_fuzz_duplicate_yaml_keys_are_refused_at_their_line(data, pick, nested, again):
    """A mapping with one key written twice (at the top or one level down) is refused naming the second line."""
    from sptbench.core import safe_yaml

    TRIED["duplicate keys"] += 1
    key = sorted(data)[pick % len(data)]
    body = yaml.safe_dump(data, sort_keys=True, default_flow_style=False)
    extra = yaml.safe_dump({key: again}, default_flow_style=False)
    if nested:  # the same duplicate inside a mapping under `outer:`
        body = "outer:\n" + "".join(f"  {line}\n" for line in body.splitlines())
        extra = "".join(f"  {line}\n" for line in extra.splitlines())
    text = body + extra
    line = body.count("\n") + 1
    with pytest.raises(SptbenchError, match=rf"^f\.yaml:{line}: duplicate key '{key}'"):
        safe_yaml.load_one(text, "f.yaml")


def _single_options():
    """`run`'s options that take one value (not --set or --tasks-dir, which repeat), with a valid value each."""
    import argparse

    from sptbench.cli.main import build_parser

    parser = build_parser()
    run = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["run"]
    out = []
    for action in run._actions:
        if not action.option_strings or isinstance(action, (argparse._AppendAction, argparse._HelpAction)):
            continue
        value = [] if action.nargs == 0 else [str(action.choices[0]) if action.choices else "3"]
        out.append((action.option_strings[-1], value))
    return out


SINGLE_OPTIONS = _single_options()


@FUZZ
@given(option=st.sampled_from(SINGLE_OPTIONS), other=st.sampled_from(SINGLE_OPTIONS), spelled=st.booleans())
def test_fuzz_any_single_option_given_twice_is_refused(capsys, option, other, spelled):
    TRIED["repeated options"] += 1
    flag, value = option
    second = [f"{flag}={value[0]}"] if spelled and value else [flag, *value]
    argv = ["run", flag, *value, *other[0:1], *other[1], *second]
    code, _, err = cli(argv, capsys)
    assert_clean(code, err, ok=())
    assert "given twice" in err or "were both given" in err, err


@FUZZ
@given(num_labels=st.none() | st.booleans() | st.floats() | st.text(max_size=3) | st.integers(-5, 1),
       seed=st.none() | st.integers(-(2**70), -1) | st.integers(2**63, 2**70) | st.floats() | st.text(max_size=2))
def test_fuzz_api_arguments_raise_typed_errors_naming_them(num_labels, seed):
    import sptbench

    TRIED["api arguments"] += 1
    for kwargs, name in (({"num_labels": num_labels}, "num_labels"), ({"seed": seed}, "seed")):
        if name == "seed" and seed is None:
            continue
        with pytest.raises((TypeError, ValueError), match=rf"build_model: {name} must"):
            sptbench.build_model("lora", "tiny-bert", **kwargs)


@FUZZ
@given(lengths=st.lists(st.integers(1, 400), min_size=1, max_size=4), methods=st.integers(1, 3),
       seeds=st.integers(1, 5))
def test_fuzz_grid_sizes_are_counted_before_they_are_built(lengths, methods, seeds):
    """The count is the product of the axes: refused above the limit (without building), else what `specs` gives."""
    from sptbench.sweep.bounds import MAX_RUNS, check_grid_size

    TRIED["grid sizes"] += 1
    train = {f"k{i}": list(range(n)) if n > 1 else 0 for i, n in enumerate(lengths)}
    names = [f"m{i}" for i in range(methods)]
    total = methods * seeds
    for n in lengths:
        total *= n
    if total > MAX_RUNS:
        with pytest.raises(SptbenchError, match=f"the grid has {total:,} runs"):
            check_grid_size({"train": train}, names, seeds, "s.yaml")
    else:
        check_grid_size({"train": train}, names, seeds, "s.yaml")


@FUZZ
@given(text=st.text(alphabet=st.characters(max_codepoint=0x1FF), max_size=40))
def test_fuzz_printed_text_has_no_control_characters(text):
    import io

    from sptbench.cli.main import EscapingWriter

    TRIED["escaped output"] += 1
    sink = io.StringIO()
    EscapingWriter(sink).write(text)
    printed = sink.getvalue()
    assert not any((ord(c) < 32 and c not in "\t\n") or 127 <= ord(c) < 160 for c in printed)
    assert printed.count("\n") == text.count("\n")
    control = lambda c: (ord(c) < 32 and c not in "\t\n") or 127 <= ord(c) < 160  # noqa: E731
    assert printed == "".join(repr(c)[1:-1] if control(c) else c for c in text)
