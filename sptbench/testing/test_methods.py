"""Per-method tests generated from the registry (sptbench/testing/__init__.py says how to run them on a method of
another package): every registered method on the tiny backbones, against what it declares (`Method.trains`)."""

from __future__ import annotations

import functools
import os

import pytest
import torch
import torch.nn.functional as F

from sptbench import api
from sptbench.core.errors import SptbenchError
from sptbench.methods.registry import build_config, get_method
from sptbench.run.assemble import frozen_backbone
from sptbench.testing import METHODS_ENV, methods_under_test, perturb_trainable, tiny_families
from sptbench.testing import random_batch as _random_batch

# The repository's default suite runs every method on three families (BERT, GPT-2's Conv1D, Llama's grouped-query
# attention) and marks the others `slow` (CI runs them: the default suite's three minutes); methods selected by name
# ($SPTBENCH_TEST_METHODS, `sptbench selftest`) get every family unmarked.
QUICK_FAMILIES = ("tiny-bert", "tiny-gpt2", "tiny-llama")
FAMILY_NAMES = tuple(tiny_families())
FAMILIES = tuple(f if f in QUICK_FAMILIES or os.environ.get(METHODS_ENV) else pytest.param(f, marks=pytest.mark.slow)
                 for f in FAMILY_NAMES)
METHODS = methods_under_test()
LINEAR_HEAD_METHODS = methods_under_test(heads="linear")
HEAD = 32 * 2 + 2  # the tiny backbones' hidden size is 32; two labels

random_batch = functools.partial(_random_batch, bsz=4, max_len=11)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and lose a lot to them on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def applied(backbone: str, name: str, seed: int = 0):
    """The method on a frozen tiny backbone with its first head (the prompt head reads SST-2's label words), and the
    ids of the backbone's own parameters (before the method added any). A method that refuses a family with a
    one-line error (BitFit: a backbone without bias terms) is skipped there, with its reason."""
    method = get_method(name)
    setup = None
    if "linear" not in method.heads:
        from sptbench.data.specs import load_spec
        from sptbench.data.templates import prompt_setup

        setup = prompt_setup(load_spec("sst2"), "prompt")
    torch.manual_seed(seed)
    model, tokenizer, _ = frozen_backbone(backbone, 2, prompt=setup)
    own = {id(p) for p in model.backbone.parameters()}
    try:
        method.apply(model, build_config(method))
    except SptbenchError as e:
        refused(backbone, name, e)
    return method, model, own, tokenizer


def refused(backbone: str, name: str, error: SptbenchError) -> None:
    """Skip a family the method refuses with a one-line error; never the BERT family (its counts are checked)."""
    if backbone == "tiny-bert":
        raise error
    pytest.skip(f"{name} on {backbone}: {error}")


def built(backbone: str, name: str, seed: int, **options):
    """`sptbench.build_model`, skipping a family the method refuses."""
    try:
        return api.build_model(name, backbone, seed=seed, **options)
    except SptbenchError as e:
        refused(backbone, name, e)


def subset_names(method, model, own: set[int]) -> set[str]:
    """The backbone's own parameters that a `trains="subset"` method declares trainable (its predicate); else empty."""
    if method.trains != "subset":
        return set()
    return {n for n, p in model.backbone.named_parameters() if id(p) in own and method.subset(n)}


def inputs(model, tokenizer, seed: int, bsz: int = 4):
    """Random right-padded ids; with the prompt head an encoder's first token is the template's mask."""
    ids, mask = random_batch(seed, bsz=bsz)
    if model.head_kind == "prompt" and not model.family.causal:
        ids[:, 0] = tokenizer.mask_token_id
    return ids, mask


@pytest.mark.parametrize("name", METHODS)
def test_parameter_counts_follow_what_the_method_declares(name):
    method, model, own, _ = applied("tiny-bert", name)
    counts = model.count_parameters()
    head = {id(p) for p in model.head.parameters() if p.requires_grad} - own
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert counts["trainable_with_head"] == sum(p.numel() for p in trainable)
    assert counts["trainable"] == sum(p.numel() for p in trainable if id(p) not in head)
    assert counts["stored"] == sum(t.numel() for t in model.export_state().values())
    backbone_trainable = {n for n, p in model.backbone.named_parameters() if id(p) in own and p.requires_grad}
    added = [p for p in trainable if id(p) not in own and id(p) not in head]
    if method.trains == "added":
        assert not backbone_trainable and added and counts["trainable"] == sum(p.numel() for p in added) > 0
    elif method.trains == "subset":  # exactly the declared part of the backbone, nothing added
        subset = subset_names(method, model, own)
        assert subset and len(subset) < len(own), "the predicate picks none or all of the backbone"
        assert backbone_trainable == subset and not added
        sizes = dict((n, p.numel()) for n, p in model.backbone.named_parameters())
        assert counts["trainable"] == sum(sizes[n] for n in subset)
    elif method.trains == "backbone":
        assert counts["trainable"] == counts["backbone"] == sum(p.numel() for p in model.backbone.parameters())
    else:
        assert not backbone_trainable and not added and counts["trainable"] == 0
    assert counts["trainable_with_head"] - counts["trainable"] == (HEAD if model.head_kind == "linear" else 0)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("backbone", FAMILIES)
def test_only_intended_parameters_get_gradients(backbone, name):
    """After one backward: every parameter with a gradient is trainable, every trainable one in a module the forward
    ran has one, and the backbone's own parameters are frozen but for what the method declares it trains."""
    method, model, own, tokenizer = applied(backbone, name)
    if method.trains != "backbone":
        subset = subset_names(method, model, own)
        assert {n for n, p in model.backbone.named_parameters() if id(p) in own and p.requires_grad} == subset
    ran: set[int] = set()
    hooks = [m.register_forward_hook(lambda mod, args, out: ran.add(id(mod))) for m in model.modules()]
    model.train()
    ids, mask = inputs(model, tokenizer, seed=FAMILY_NAMES.index(backbone))
    logits = model(ids, mask).logits
    for h in hooks:
        h.remove()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if not trainable:  # zero_shot: nothing trains, nothing to differentiate
        assert not logits.requires_grad and method.trains == "nothing"
        return
    F.cross_entropy(logits, torch.tensor([0, 1, 0, 1])).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    used = {f"{mn}.{pn}" if mn else pn for mn, m in model.named_modules() if id(m) in ran
            for pn, p in m.named_parameters(recurse=False) if p.requires_grad}
    assert with_grad <= trainable
    assert used <= with_grad, sorted(used - with_grad)
    if method.trains != "nothing":
        assert with_grad - {"head.weight", "head.bias"}, "the method's parameters got no gradient"


@pytest.mark.parametrize("name", [n for n in METHODS if get_method(n).trains != "backbone"])
def test_backbone_bit_identical_after_adamw_steps(name):
    """Every parameter goes to the optimizer, with weight decay: a frozen one that got a gradient would move (a
    "subset" method's declared parameters move, the rest of the backbone does not)."""
    method, model, own, tokenizer = applied("tiny-roberta", name)
    subset = subset_names(method, model, own)
    original = [(n, p, p.detach().clone()) for n, p in model.backbone.named_parameters()
                if id(p) in own and n not in subset]
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    if not before:  # zero_shot: nothing trains
        return
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model.train()
    for step in range(3):
        ids, mask = inputs(model, tokenizer, seed=step)
        loss = F.cross_entropy(model(ids, mask).logits, torch.tensor([0, 1, 0, 1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for n, p, saved in original:
        assert torch.equal(p, saved), f"backbone parameter {n} changed"
    moved = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])}
    assert moved == set(before)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("backbone", ["tiny-bert", "tiny-gpt2"])
def test_save_load_round_trip_through_files(backbone, name, tmp_path):
    """`sptbench.save` -> `sptbench.load` (the safetensors file `--save-dir` writes too) gives the same logits; a model
    built with another seed does not (so the check can fail)."""
    method = get_method(name)
    options = {} if "linear" in method.heads else {"head": "prompt", "task": "sst2"}
    model = built(backbone, name, 0, **options)
    perturb_trainable(model)
    model.eval()
    ids, mask = inputs(model, model.tokenizer, seed=3)
    with torch.no_grad():
        expected = model(ids, mask).logits
    api.save(model, tmp_path / "saved")
    assert {f.name for f in (tmp_path / "saved").iterdir()} == {"trained.safetensors", "model.yaml"}
    loaded = api.load(tmp_path / "saved")
    other = built(backbone, name, 1, **options).eval()
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, mask).logits, expected, atol=1e-6, rtol=0)
        if model.count_parameters()["trainable_with_head"]:
            assert not torch.allclose(other(ids, mask).logits, expected, atol=1e-4)
    # what is saved is the trainable parameters and the linear head, except injections that save a compact form of
    # theirs (e.g. prefixes computed by an MLP: their own tests check what they save)
    compact = tuple(f"injections.{i}." for i, inj in enumerate(model.injections) if inj.export_state() is not None)
    assert {n for n in model.export_state() if not n.startswith(compact)} == {
        n for n, p in model.named_parameters()
        if (p.requires_grad or (n.startswith("head.") and model.head_kind == "linear")) and not n.startswith(compact)}


@pytest.mark.parametrize("method", LINEAR_HEAD_METHODS)
@pytest.mark.parametrize("backbone", FAMILIES)
def test_every_method_on_every_family(backbone, method):
    """Forward and backward (the head and the method's parameters get gradients), batch invariance under right
    padding, and a save -> load round trip onto a freshly built model; every method that works with the linear head
    (the prompt head and `zero_shot`, which trains nothing, are covered by the repository's tests/test_heads.py)."""
    model = built(backbone, method, 0)
    model.train()
    ids, mask = _random_batch(0, bsz=4, max_len=10)
    F.cross_entropy(model(ids, mask).logits, torch.tensor([0, 1, 0, 1])).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert "head.weight" in with_grad
    if get_method(method).trains != "nothing":
        assert with_grad - {"head.weight", "head.bias"}, "the method's parameters got no gradient"

    perturb_trainable(model)
    model.eval()
    ids, mask = _random_batch(1, bsz=5, max_len=10)
    with torch.no_grad():
        together = model(ids, mask).logits
        for i in range(ids.shape[0]):
            n = int(mask[i].sum())
            torch.testing.assert_close(together[i : i + 1], model(ids[i : i + 1, :n], mask[i : i + 1, :n]).logits,
                                       atol=1e-5, rtol=0)

    fresh = built(backbone, method, 1).eval()
    with torch.no_grad():
        fresh.import_state(model.export_state())
        torch.testing.assert_close(fresh(ids, mask).logits, together, atol=1e-6, rtol=0)
