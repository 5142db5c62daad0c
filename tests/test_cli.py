"""The command line as a user meets it: one-line errors with choices, listings, a run that records."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from sptbench.cli.main import main
from sptbench.records.io import read_records


def test_unknown_method_is_one_line_with_choices(capsys):
    assert main(["run", "--method", "sptt", "--task", "rte", "--model", "tiny-bert"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Did you mean 'spt'" in err and "Choices:" in err and "Traceback" not in err


def test_unknown_task_and_set_key(capsys, data_dir, tmp_path):
    assert main(["run", "--method", "head", "--task", "rtee", "--data-dir", str(data_dir)]) == 2
    assert "Did you mean 'rte'" in capsys.readouterr().err
    assert main(["run", "--method", "head", "--task", "rte", "--set", "x=1", "--data-dir", str(data_dir)]) == 2
    assert "--set key" in capsys.readouterr().err


def test_too_many_shots_is_a_clear_error(capsys, data_dir):
    assert main(["run", "--method", "head", "--task", "cb", "--shots", "16", "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert "shots" in err and "Traceback" not in err


def test_list_commands(capsys):
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert "finetune" in out and "head" in out
    assert main(["list", "tasks"]) == 0
    assert {"sst2", "mpqa", "mr", "subj", "trec", "mnli", "mrpc", "qnli", "qqp", "rte"} <= {
        line.split()[0] for line in capsys.readouterr().out.splitlines()
    }


def test_run_with_config_file_records(tmp_path, data_dir, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("method: head\ntask: sst2\nshots: 4\nmodel: tiny-bert\ntrain: {max_steps: 4, eval_every: 2}\n")
    code = main(["run", "--config", str(cfg), "--data-dir", str(data_dir), "--results-dir", str(tmp_path / "r"),
                 "--quiet"])
    assert code == 0
    (rec,) = read_records([tmp_path / "r"])
    assert rec["task"]["name"] == "sst2" and rec["training"]["max_steps"] == 4
    assert "test accuracy" in capsys.readouterr().out


def test_malformed_config_names_file_and_line(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("method: head\ntask: [rte\n")
    assert main(["run", "--config", str(cfg)]) == 2
    assert f"{cfg}:" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"]])
def test_console_script_help(args):
    out = subprocess.run([sys.executable, "-m", "sptbench.cli", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "usage: sptbench" in out.stdout


def test_every_subcommand_help_says_each_default_once():
    """`--help` of every subcommand: a real default shown once, never `(default: None)`."""
    from sptbench.cli.main import build_parser

    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(sub.choices) >= 8
    for name, p in sub.choices.items():
        formatter = p._get_formatter()
        for action in p._actions:
            text = formatter._get_help_string(action) or ""
            assert "(default: None)" not in text and "(default: False)" not in text, (name, text)
            said = "default" in (action.help or "")  # the help says its default itself: nothing appended
            assert not (said and text != action.help), (name, text)


def test_a_closed_pipe_is_not_an_error():
    """`sptbench list tasks | head -1`: the reader leaves early; no BrokenPipeError traceback."""
    import subprocess
    import sys

    proc = subprocess.run(f"{sys.executable} -m sptbench.cli list tasks | head -c 1", shell=True, capture_output=True,
                          text=True, timeout=300)
    assert proc.stdout and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
