"""The tests generated from the method registry, installed with sptbench, so that a method from another package is
tested as the built-in ones are:

    pytest --pyargs sptbench.testing -k NAME     # or:  sptbench selftest --method NAME

They run every registered method (an installed package's entry point included) on the tiny backbone of every family:
parameter counts against what the method declares (`trains`: "added", "subset" with its predicate, "backbone",
"nothing"), which parameters get gradients, the backbone untouched by training outside what the method trains,
forward / backward / batch invariance, and save -> load round trips (`test_methods.py`; docs/methods.md lists them).
`$SPTBENCH_TEST_METHODS` (comma-separated names) restricts them to those methods (`selftest` sets it). The helpers
here are the ones the repository's own tests use.
"""

from __future__ import annotations

import os

METHODS_ENV = "SPTBENCH_TEST_METHODS"  # also named in sptbench/cli/selftest.py (which runs these tests)


def methods_under_test(*, heads: str | None = None) -> list[str]:
    """Every registered method (or those `$SPTBENCH_TEST_METHODS` names), sorted; `heads`: only those working with
    that head."""
    from sptbench.core.errors import unknown_choice
    from sptbench.methods.registry import load_methods

    methods = load_methods()
    chosen = [n.strip() for n in os.environ.get(METHODS_ENV, "").split(",") if n.strip()]
    for name in chosen:
        if name not in methods:
            raise unknown_choice("method", name, methods)
    names = sorted(chosen or methods)
    return [n for n in names if heads is None or heads in methods[n].heads]


def tiny_families() -> list[str]:
    """Every tiny backbone the discovered families declare, in listing order."""
    from sptbench.families.base import load_families

    return [name for entry in load_families().values() for name in entry.tiny_configs]


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


def build(backbone: str, method: str, overrides: dict | None = None, seed: int = 0):
    """Load a tiny backbone, freeze it and apply `method`, as the runner does (global RNG seeded for the head/init)."""
    import torch

    from sptbench.methods.registry import build_config, get_method
    from sptbench.run.assemble import build_classifier

    torch.manual_seed(seed)
    m = get_method(method)
    return build_classifier(m, build_config(m, overrides), backbone, 2)[0]
