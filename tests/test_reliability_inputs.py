"""Issue 38, items 4 and 6: every checkable input is checked before work, and every bad input is one line (CLI: exit
2, no traceback) or, in the Python API, a ValueError/TypeError naming the argument. Each case is one of the
hostile-user probe's findings; each test failed on the code before its fix."""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager

import pytest

from sptbench.core import safe_yaml
from sptbench.core.errors import SptbenchError
from sptbench.data import specs
from tests.helpers import run_cli as cli
from tests.test_reliability import assert_one_line_error, run_args

RTE_SPEC = (specs.Path(__file__).resolve().parents[1] / "tasks" / "rte.yaml").read_text(encoding="utf-8")


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if any training starts: the bad input must be refused before."""
    import sptbench.run.runner as runner_mod

    def trained(*args, **kwargs):
        raise AssertionError("training started before the bad input was refused")

    monkeypatch.setattr(runner_mod, "train", trained)


@contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) when the block takes longer than `seconds`."""

    def expired(signum, frame):
        raise AssertionError(f"took more than {seconds} s (a hang)")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def user_task(tmp_path, monkeypatch, text: str, name: str = "rte") -> None:
    """A user task folder holding `<name>.yaml` = `text`, searched first."""
    folder = tmp_path / "user-tasks"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(text, encoding="utf-8")
    monkeypatch.setenv(specs.TASKS_PATH_ENV, str(folder))


# ------------------------------------------------------------------------------------- duplicate keys, FIFOs


@pytest.mark.parametrize("text, line", [("a: 1\nb: 2\na: 3\n", 3), ("x:\n  k: 1\n  j: 2\n  k: 1\n", 4),
                                        ("x: {a: 1, a: 2}\n", 1), ("- {k: 1}\n- {k: 2, j: 3, k: 4}\n", 2)])
def test_duplicate_yaml_keys_are_refused_with_file_and_line(text, line):
    with pytest.raises(SptbenchError, match=rf"^f\.yaml:{line}: duplicate key '\w'"):
        safe_yaml.load_one(text, "f.yaml")


def test_same_key_in_different_mappings_and_types_is_fine():
    assert safe_yaml.load_one("- {k: 1}\n- {k: 2}\n", "f.yaml") == [{"k": 1}, {"k": 2}]
    assert safe_yaml.load_one("a: {k: 1}\nb: {k: 2}\n", "f.yaml") == {"a": {"k": 1}, "b": {"k": 2}}
    assert safe_yaml.load_one("1: a\n'1': b\n", "f.yaml") == {1: "a", "1": "b"}


def test_duplicate_keys_in_run_config_sweep_file_and_task_spec(mirror, tmp_path, monkeypatch, capsys, no_training):
    config = tmp_path / "cfg.yaml"
    config.write_text("method: head\nseed: 13\nmethod: lora\n")
    code, _, err = cli(run_args(mirror, tmp_path, "--config", str(config)), capsys)
    assert_one_line_error(code, err, "cfg.yaml:3: duplicate key 'method'")

    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"name: s\nmethods: [head]\ntasks: [rte]\nshots: 4\nseeds: [13]\nmodel: tiny-bert\n"
                     f"data_dir: {mirror}\nseeds: [21]\n")
    code, _, err = cli(["sweep", str(sweep), "--dry-run"], capsys)
    assert_one_line_error(code, err, "s.yaml:8: duplicate key 'seeds'")

    user_task(tmp_path, monkeypatch, RTE_SPEC.replace("max_length: 256\n", "max_length: 256\nmax_length: 8\n"))
    with pytest.raises(SptbenchError, match=r"rte\.yaml:9: duplicate key 'max_length'"):
        specs.load_spec("rte")


def test_a_config_that_is_not_a_regular_file_is_refused_not_waited_on(mirror, tmp_path, capsys, no_training):
    fifo = tmp_path / "cfg.fifo"
    os.mkfifo(fifo)
    with deadline(60):
        code, _, err = cli(run_args(mirror, tmp_path, "--config", str(fifo)), capsys)
    assert_one_line_error(code, err, "cfg.fifo", "not a regular file")
    code, _, err = cli(run_args(mirror, tmp_path, "--config", str(tmp_path)), capsys)
    assert_one_line_error(code, err, "a folder")


# ------------------------------------------------------------------------------------- duplicate CLI options


@pytest.mark.parametrize("argv, needle", [
    (["run", "--method", "head", "--task", "rte", "--seed", "13", "--seed", "21"], "--seed was given twice"),
    (["run", "--method", "head", "--method=lora", "--task", "rte"], "--method was given twice"),
    (["run", "--method", "head", "--task", "rte", "--max-steps", "2", "--max-steps", "3"], "--max-steps"),
    (["table", "--results-dir", "a", "--results-dir", "b"], "--results-dir was given twice"),
    (["params", "--method", "lora", "--model", "tiny-bert", "--model", "tiny-gpt2"], "--model was given twice"),
])
def test_an_option_given_twice_is_refused(capsys, no_training, argv, needle):
    code, _, err = cli(argv, capsys)
    assert_one_line_error(code, err, needle)


def test_repeatable_options_stay_repeatable():
    from sptbench.cli.main import build_parser

    args = build_parser().parse_args(["params", "--method", "lora", "--set", "rank=2", "--set", "alpha=4",
                                      "--tasks-dir", "a", "--tasks-dir", "b"])
    assert args.set == ["rank=2", "alpha=4"] and args.tasks_dir == ["a", "b"]


# ------------------------------------------------------------------------------------- types and silent drops


@pytest.mark.parametrize("text, needle", [
    ("method: head\ntrain: {patience: true}\n", "'patience' expects int"),
    ("method: head\ntrain: {lr: true}\n", "'lr' expects float"),
    ("method: head\ntrain: {weight_decay: false}\n", "'weight_decay' expects float"),
    ("method: head\ntrain: {seed: 99}\n", "'seed' is a run option"),
])
def test_config_booleans_are_not_numbers_and_train_seed_is_not_dropped(mirror, tmp_path, capsys, no_training,
                                                                       text, needle):
    config = tmp_path / "cfg.yaml"
    config.write_text(text)
    code, _, err = cli(run_args(mirror, tmp_path, "--config", str(config)), capsys)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("edit, needle", [
    (("max_length: 256", "max_length: true"), "'max_length' must be a positive integer, got True"),
    (("labels: [entailment, not_entailment]", "labels: [entailment]"), "at least 2 classes"),
    (("text_columns: [sentence1, sentence2]", "text_columns: [label, sentence2]"), "must not name 'label'"),
])
def test_task_spec_values_that_would_train_nonsense_are_refused(tmp_path, monkeypatch, edit, needle):
    user_task(tmp_path, monkeypatch, RTE_SPEC.replace(*edit))
    with pytest.raises(SptbenchError, match=needle):
        specs.load_spec("rte")
