"""Helpers shared by several test modules."""

from __future__ import annotations

import itertools
import random
from datetime import datetime, timedelta, timezone

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


def build(backbone: str, method: str, overrides: dict | None = None, seed: int = 0):
    """Load a tiny backbone, freeze it and apply `method`, as the runner does (global RNG seeded for the head/init)."""
    import torch

    from sptbench.methods.registry import build_config, get_method
    from sptbench.run.assemble import build_classifier

    torch.manual_seed(seed)
    m = get_method(method)
    return build_classifier(m, build_config(m, overrides), backbone, 2)[0]


def random_batch(seed: int, bsz: int, max_len: int):
    """Fresh random token ids, right-padded with random lengths (the first example fills the batch): (ids, mask)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (bsz,), generator=g)
    lengths[0] = max_len
    mask = (torch.arange(max_len)[None] < lengths[:, None]).long()
    ids = torch.randint(999, 30000, (bsz, max_len), generator=g) * mask  # pad id 0
    return ids, mask


def perturb_trainable(model, scale: float = 0.2, seed: int = 1) -> None:
    """Move every trainable parameter off its init (zero-init adapters, LoRA, gates would make checks trivial)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run the CLI in-process: (exit code, stdout, stderr); argparse's exits count as exit codes."""
    from sptbench.cli.main import main

    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err
