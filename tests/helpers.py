"""Helpers shared by several test modules."""

from __future__ import annotations

import itertools
import random
from datetime import datetime, timedelta, timezone

from sptbench import testing
from sptbench.records.schema import example_record

_RNG = random.Random(20261202)  # seeded: a failing test fails the same way on a rerun
_SECONDS = itertools.count()  # every made run id distinct: a fresh second each, in the strict run-id pattern
_EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


def fresh_run_id() -> str:
    """A run id of the strict pattern (core/paths.RUN_ID), distinct from every other one this process makes."""
    stamp = _EPOCH + timedelta(seconds=next(_SECONDS))
    return f"{stamp.strftime('%Y%m%dT%H%M%S')}-{_RNG.randrange(16**6):06x}"


def make_record(**overrides) -> dict:
    """A schema-valid record with a fresh run id and random metrics; `a__b=v` sets rec["a"]["b"] = v."""
    rec = example_record()
    rec["run_id"] = fresh_run_id()
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


def classifier_output(logits, labels=None):
    """What `Classifier.forward` returns, for toy models given to the training loop (it reads `.loss`, `.logits`)."""
    import torch.nn.functional as F
    from transformers.modeling_outputs import SequenceClassifierOutput

    loss = None if labels is None else F.cross_entropy(logits.float(), labels)
    return SequenceClassifierOutput(loss=loss, logits=logits)
