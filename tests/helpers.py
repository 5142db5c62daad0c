"""Helpers shared by several test modules."""

from __future__ import annotations

import random

from sptbench import testing
from sptbench.records.build import new_run_id
from sptbench.records.schema import example_record

_RNG = random.Random(20261202)  # seeded: a failing test fails the same way on a rerun


def make_record(**overrides) -> dict:
    """A schema-valid record with a fresh run id and random metrics; `a__b=v` sets rec["a"]["b"] = v."""
    rec = example_record()
    rec["run_id"] = new_run_id() + f"{_RNG.randrange(16**6):06x}"
    acc = round(_RNG.uniform(0.5, 0.95), 4)
    rec["metrics"] = {"selection_metric": "accuracy", "dev": {"accuracy": acc, "score": acc}, "test": {"accuracy": acc}}
    for name, value in overrides.items():
        *parents, leaf = name.split("__")
        target = rec
        for part in parents:
            target = target[part]
        target[leaf] = value
    return rec


# one definition each, shared with the installed generated tests (sptbench/testing)
build, random_batch, perturb_trainable = testing.build, testing.random_batch, testing.perturb_trainable


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run the CLI in-process: (exit code, stdout, stderr); argparse's exits count as exit codes."""
    from sptbench.cli.main import main

    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err
