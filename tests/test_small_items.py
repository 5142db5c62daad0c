"""The small items of issue 37 (item 6): list syntax for `--set`, `compare` below 5 pairs, `validate` and the score
rule, the README's example record against its committed record, and the sweep ETA from the backbone's measured cost."""

from __future__ import annotations

import copy
import math
import random
import re
from pathlib import Path

import pytest

from sptbench.core import safe_yaml
from sptbench.core.errors import SptbenchError
from sptbench.records.io import append_record, dump_record, table_path
from sptbench.records.schema import validate_record
from tests.helpers import make_record, run_cli

REPO = Path(__file__).resolve().parents[1]
_RNG = random.Random(37)


# ------------------------------------------------------------------------------------------------ --set lists


@pytest.mark.parametrize(("text", "value"), [("[9]", [9]), ("9,10", [9, 10]), ("[9, 10]", [9, 10]), ("9", [9]),
                                             (" [ 3 ,4 ] ", [3, 4]), ("[]", []), ("none", None)])
def test_set_takes_a_list_as_9_10_or_in_brackets(text, value):
    from sptbench.methods.registry import build_config, coerce_overrides, get_method
    from sptbench.methods.spt import SptConfig

    layers = coerce_overrides(SptConfig, {"layers": text}, "k")["layers"]  # tuple[int, ...] | None
    assert (list(layers) if layers is not None else None) == value
    if value:
        assert build_config(get_method("lora"), {"layers": text}).layers == value


@pytest.mark.parametrize("text", ["[a]", "[1", "[[1]]", "[1, x]"])
def test_a_bad_list_is_one_line_naming_the_field(text):
    from sptbench.methods.registry import coerce_overrides
    from sptbench.methods.spt import SptConfig

    with pytest.raises(SptbenchError, match="'layers' expects int") as err:
        coerce_overrides(SptConfig, {"layers": text}, "k")
    assert "\n" not in str(err.value)


def test_run_help_documents_the_list_syntax(capsys):
    code, out, _ = run_cli(["run", "--help"], capsys)
    assert code == 0 and "9,10" in out and "[9, 10]" in out
    assert "--set 'layers=[9, 10]'" in (REPO / "docs" / "methods.md").read_text()


# ------------------------------------------------------------------------------------------------ compare


def _pairs(tmp_path: Path, seeds: list[int], tasks: list[str]) -> Path:
    table = tmp_path / "v1" / "m" / "16shot.yaml"
    for task in tasks:
        for seed in seeds:
            for method in ("a", "b"):
                acc = round(_RNG.uniform(0.5, 0.9), 4)
                append_record(table, make_record(method__name=method, task__name=task, protocol__seed=seed,
                                                 metrics={"selection_metric": "accuracy",
                                                          "dev": {"accuracy": acc, "score": acc},
                                                          "test": {"accuracy": acc, "score": acc}}))
    return table


def test_compare_warns_below_five_pairs(tmp_path, capsys):
    few = _pairs(tmp_path / "few", [1, 2], ["x", "y"])
    code, out, err = run_cli(["compare", "a", "b", str(few)], capsys)
    assert code == 0
    assert "warning: a - b rests on 4 pair(s), fewer than 5" in out
    assert "sptbench compare: warning: a - b rests on 4 pair(s)" in err
    enough = _pairs(tmp_path / "enough", [1, 2, 3], ["x", "y"])
    code, out, err = run_cli(["compare", "a", "b", str(enough)], capsys)
    assert code == 0 and "warning" not in out + err and re.search(r"\| \*\*all\*\* +\| 6 ", out)


# ------------------------------------------------------------------------------------------------ validate


def test_validate_enforces_score_equals_the_selection_metric(tmp_path, capsys):
    rec = make_record()
    assert validate_record(rec) == []
    bad = copy.deepcopy(rec)
    bad["metrics"]["test"] = {"accuracy": 0.8, "score": 0.7}
    (problem,) = validate_record(bad)
    assert "metrics.test.score is 0.7, but its selection metric 'accuracy' is 0.8" in problem
    pair = copy.deepcopy(rec)
    pair["metrics"] = {"selection_metric": "acc_f1", "dev": {"accuracy": 0.5, "f1": 0.7, "score": 0.6},
                       "test": {"accuracy": 0.75, "f1": 0.25, "score": 0.5}}
    assert validate_record(pair) == []
    pair["metrics"]["dev"]["score"] = 0.7  # the f1 alone: not the mean
    assert ["dev.score is 0.7"] == [p[len("metrics."):][:len("dev.score is 0.7")] for p in validate_record(pair)]
    table = tmp_path / "v1" / "m" / "16shot.yaml"
    append_record(table, rec)
    with pytest.raises(SptbenchError, match="refusing to write an invalid record: metrics.test.score"):
        append_record(table, bad)
    with table.open("a", encoding="utf-8") as handle:  # an older writer's, or a hand-edited, record
        handle.write(dump_record(bad))
    code, out, _ = run_cli(["validate", str(tmp_path)], capsys)
    assert code == 1 and "16shot.yaml:" in out and "metrics.test.score is 0.7" in out


# ------------------------------------------------------------------------------------------------ the README record


def _shown_matches(shown, actual, where: str) -> None:
    """Every value the README shows equals the record's; `…` leaves a value (or the rest of a mapping or list) out,
    `abc…` shows a prefix."""
    if shown == "…":
        return
    if isinstance(shown, dict):
        assert isinstance(actual, dict), where
        for key, value in shown.items():
            if key != "…":
                assert key in actual, f"{where}.{key} is not in the record"
                _shown_matches(value, actual[key], f"{where}.{key}")
    elif isinstance(shown, list):
        n = shown.index("…") if "…" in shown else len(shown)
        assert isinstance(actual, list) and (n < len(shown) or len(actual) == n), where
        for i in range(n):
            _shown_matches(shown[i], actual[i], f"{where}[{i}]")
    elif isinstance(shown, str) and shown.endswith("…"):
        assert str(actual).startswith(shown[:-1]), where
    elif isinstance(shown, float):
        assert math.isclose(shown, actual), where
    else:
        assert shown == actual, f"{where}: README {shown!r}, record {actual!r}"


def test_readme_example_record_is_a_real_committed_record():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## A record", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    shown = safe_yaml.load_one(block, "README.md")
    named = re.search(r"committed record `([0-9a-fT-]+)` in `([^`]+)`", section)
    assert named and named.group(1) == shown["run_id"]
    table = (REPO / named.group(2)).read_text(encoding="utf-8")  # only the named record's document is parsed
    (doc,) = [d for d in table.split("\n---\n") if f"\nrun_id: {shown['run_id']}\n" in f"\n{d}"]
    rec = safe_yaml.load_one(doc, named.group(2))
    assert validate_record(rec) == []
    _shown_matches(shown, rec, "record")
    assert rec["backbone"]["num_parameters"] == rec["params"]["backbone"]  # today's count, not an old one


# ------------------------------------------------------------------------------------------------ sweep ETA


def test_dry_run_eta_uses_the_backbones_measured_cost_from_the_results_tree(tmp_path, capsys):
    from sptbench.sweep.plan import format_plan, plan
    from sptbench.sweep.spec import parse_sweep

    tree = tmp_path / "results"
    walls = [_RNG.uniform(5, 10) for _ in range(3)]
    for seed, wall in zip((1, 2, 3), walls, strict=True):
        rec = make_record(backbone__id="tiny-bert", method__name="head", task__name="sst2", protocol__seed=seed,
                          protocol__shots=4)
        rec["training"].update(max_steps=4, batch_size=4)
        rec["time"] = {"wall_s": wall, "train_s": wall / 2, "eval_s": wall / 4}
        append_record(table_path(tree, "tiny-bert", "4shot"), rec)
    other = make_record(backbone__id="other-model", protocol__shots=4)
    other["time"] = {"wall_s": 1000.0, "train_s": 900.0, "eval_s": 50.0}
    append_record(table_path(tree, "other-model", "4shot"), other)
    raw = {"tasks": ["sst2"], "methods": ["head", "lora"], "seeds": [7], "shots": 4, "model": "tiny-bert",
           "train": {"max_steps": 4, "batch_size": 4, "eval_every": 2}, "results_dir": str(tree / "local")}
    sweep = parse_sweep(raw, "s.yaml")
    p = plan(sweep)  # its own folder (results/local) holds nothing: the tree's tiny-bert records say how long
    rules = {r.split(" (other devices)")[0].replace(f" in {tree}", ""): n for r, n in p.eta_rules.items()}
    assert rules == {"method/task/backbone/setting": 1, "backbone/setting (any method)": 1}
    assert all(str(tree) in r for r in p.eta_rules)
    assert p.eta_s == pytest.approx(2 * sum(walls) / 3)
    assert "ETA 0m" in format_plan(sweep, p)
    # given its records explicitly (no tree), a plan knows only those: the default
    assert plan(sweep, []).eta_s == 2 * 120.0
