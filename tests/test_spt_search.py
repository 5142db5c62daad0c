"""Does SPT's search learn where to prompt? A planted-layer task where the right answer is known, a negative control,
and the search diagnostics (issue 35; docs/spt.md "Does the search work?").

The planted task: random token sequences on tiny-bert (4 layers) with random labels, so the tokens carry no label
information; a hook gives the prompt generator at the planted layer alone a view of the label (its input token
states shifted by +-scale along a fixed direction), while every other layer's generator sees zeros. Only a prompt at
the planted layer can carry the label into the token states (through attention) and so to the head. The search, with
each method's default configuration and at most the default budget, must rank the planted layer first in at least 9 of
10 seeds, separated from the next by more than 0.01; with no planted layer it must not separate its top choice (median
separation under 0.03, where a planted layer gives about 0.06 at this budget).
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import random
import statistics

import pytest
import torch

from sptbench.data.specs import load_spec
from sptbench.methods.registry import FitContext, build_config, get_method
from sptbench.methods.spt import search
from sptbench.methods.spt.diagnostics import gate_diagnostics
from sptbench.methods.spt.gated_prompts import GatedPrompts
from sptbench.models.backbones import load_backbone
from sptbench.training.loop import TrainConfig, train

SPEC = load_spec("sst2")
PER_CLASS, STEPS, SEEDS = 8, 60, range(10)
CONFIDENT = 0.01  # a top choice separated from the next by more than this


def _rows(seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = [{"input_ids": [101] + [rng.randrange(1000, 30000) for _ in range(7)], "label": y}
           for y in (0, 1) for _ in range(PER_CLASS)]
    rng.shuffle(out)
    return out


def planted_search(monkeypatch, method: str, seed: int, planted: int | None, scale: float = 3.0,
                   **options) -> dict:
    """SPT's search (the method's default config, or `options` over it) on the planted task; returns `search`'s
    result."""
    train_rows, dev_rows = _rows(seed), _rows(seed + 10_000)
    label_of = {tuple(r["input_ids"]): r["label"] for r in train_rows + dev_rows}
    direction = torch.randn(32, generator=torch.Generator().manual_seed(1234))
    direction /= direction.norm()
    signs: dict[str, torch.Tensor] = {}
    layer_prompt = GatedPrompts.layer_prompt

    def planted_view(self, layer, tokens, token_mask, prompt):
        if layer == planted:
            tokens = tokens + scale * signs["batch"].to(tokens.dtype).view(-1, 1, 1) * direction.to(tokens.dtype)
        else:
            tokens = torch.zeros_like(tokens)
        return layer_prompt(self, layer, tokens, token_mask, prompt)

    def record_labels(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        labels = [label_of[tuple(x for x in row.tolist() if x != 0)] for row in ids]
        signs["batch"] = torch.tensor([1.0 if y else -1.0 for y in labels])

    def build_model():
        torch.manual_seed(seed)
        model, _, _ = load_backbone("tiny-bert", 2, quiet=True)
        model.freeze_backbone()
        model.register_forward_pre_hook(record_labels, with_kwargs=True)
        return model

    m = get_method(method)
    tcfg = dataclasses.replace(TrainConfig(), max_steps=STEPS, eval_every=20, lr=m.default_lr, seed=seed)
    ctx = FitContext(
        task=type("Task", (), {"train": train_rows, "dev": dev_rows, "spec": SPEC})(),
        method_cfg=build_config(m, options),
        tcfg=tcfg, tokenizer=type("Tokenizer", (), {"pad_token_id": 0})(), build_model=build_model,
        encode=lambda rows: rows, log=lambda msg: None,
        train=lambda model, tr, dv, tcfg_=None, **kw: train(model, tr, dv, SPEC, tcfg_ or tcfg, progress=False, **kw),
    )
    monkeypatch.setattr(GatedPrompts, "layer_prompt", planted_view)
    try:
        return search(ctx, ctx.method_cfg, darts=method == "spt_darts")
    finally:
        monkeypatch.setattr(GatedPrompts, "layer_prompt", layer_prompt)


def _one_search(method: str, seed: int, planted: int | None) -> dict:
    patch = pytest.MonkeyPatch()
    try:
        found = planted_search(patch, method, seed, planted)
    finally:
        patch.undo()
    return {key: found[key] for key in ("alpha", "layers", "diagnostics")}


def searches(method: str, seeds, planted: int | None) -> list[dict]:
    """`planted_search` for several seeds, in two forked processes of one torch thread each: the same searches in
    about half the default suite's time on two cores (each search is small: one thread apiece is faster)."""
    with mp.get_context("fork").Pool(2, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        return pool.starmap(_one_search, [(method, seed, planted) for seed in seeds])


def _top(found: dict) -> int:
    alpha = found["alpha"]
    return found["layers"][max(range(len(alpha)), key=lambda i: alpha[i])]


@pytest.mark.parametrize("method", ["spt", "spt_darts"])
def test_the_search_finds_a_planted_layer(method):
    planted = 2
    found = searches(method, SEEDS, planted)
    # first, and by a margin: frozen gates (gate_lr=1e-6) still drift the right way by ~1e-7, which is no choice
    hits = sum(_top(f) == planted and f["diagnostics"]["separation"] > CONFIDENT for f in found)
    assert hits >= 9, [f["alpha"] for f in found]
    assert statistics.median(f["diagnostics"]["separation"] for f in found) > 0.03


@pytest.mark.parametrize("method", ["spt", "spt_darts"])
def test_without_a_planted_layer_the_search_claims_no_choice(method):
    found = searches(method, range(5), None)
    assert statistics.median(f["diagnostics"]["separation"] for f in found) < 0.03, [f["alpha"] for f in found]


def test_gate_diagnostics_by_hand():
    grads = [torch.tensor([1.0, -1.0, 0.5]), torch.tensor([3.0, 1.0, 0.5])]
    d = gate_diagnostics([0.6, 0.45, 0.5], grads, k=1)
    assert d["separation"] == pytest.approx(0.1) and d["spread"] == pytest.approx(0.15) and d["steps"] == 2
    assert d["grad_mean"] == [2.0, 0.0, 0.5]
    assert d["grad_std"] == pytest.approx([2 ** 0.5, 2 ** 0.5, 0.0], rel=1e-3)  # 4 significant digits
    assert d["grad_snr"] == [pytest.approx(2 / 2 ** 0.5, rel=1e-3), 0.0, None]  # constant: no noise
    assert gate_diagnostics([0.5, 0.5], [], k=2)["separation"] is None  # K = all layers: nothing to separate


@pytest.mark.slow  # an option, not the default: CI's slow run keeps the default suite under three minutes
def test_the_gate_budget_pulls_the_gates_towards_k_open():
    """With no layer worth prompting, a budget term λ (Σα - K)² moves the sum of the 4 gates (2.0 at the start) towards
    K = 1; without it the sum stays near 2."""
    with pytest.MonkeyPatch.context() as mp:
        free = planted_search(mp, "spt", 0, None)
        budget = planted_search(mp, "spt", 0, None, gate_budget=1.0)
    assert abs(sum(free["alpha"]) - 2.0) < 0.2
    assert sum(budget["alpha"]) < sum(free["alpha"]) - 0.3


def test_single_path_active_layer_is_lpt_there():
    """With `active = l`, the search model computes exactly what LPT at layer l computes with the same generator and
    head (no prompt positions below l): checked on fresh random inputs against a hard-gated model."""
    from sptbench.methods.spt import SptConfig, add_prompts, gates_of

    seed = random.randrange(10**6)
    torch.manual_seed(seed)
    search_model, _, _ = load_backbone("tiny-bert", 2, quiet=True)
    cfg = SptConfig()
    add_prompts(search_model, cfg, [0, 1, 2, 3], gated=True)
    lpt_model, _, _ = load_backbone("tiny-bert", 2, quiet=True)
    lpt_model.load_state_dict(search_model.state_dict(), strict=False)
    add_prompts(lpt_model, cfg, [2], gated=False)
    gates_of(lpt_model).generators["2"].load_state_dict(gates_of(search_model).generators["2"].state_dict())
    gates_of(search_model).active = 2
    ids = torch.randint(1000, 30000, (3, 9), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    search_model.eval(), lpt_model.eval()
    torch.testing.assert_close(search_model(ids, mask).logits, lpt_model(ids, mask).logits)


@pytest.mark.slow  # an option, not the default
def test_single_path_search_finds_a_planted_layer(monkeypatch):
    found = [planted_search(monkeypatch, "spt", seed, 2, search="single_path") for seed in SEEDS]
    assert sum(_top(f) == 2 for f in found) >= 9, [f["alpha"] for f in found]
