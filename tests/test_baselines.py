"""The four baselines (prompt tuning, P-tuning v2, adapters, LoRA) on the four tiny families: what trains, what
stays frozen, batch invariance, identity at init, save/load round trips and hand-checked parameter counts."""

from __future__ import annotations

import functools
import re

import pytest
import torch

from sptbench.backbones import load_backbone
from sptbench.errors import SptbenchError
from sptbench.registry import build_config, get_method
from tests import helpers
from tests.conftest import TINY_FAMILIES
from tests.helpers import build

FAMILIES = tuple(TINY_FAMILIES)
METHODS = ("prompt_tuning", "p_tuning_v2", "adapter", "lora")
LAYERS = 4  # the tiny backbones' depth
HEAD = 32 * 2 + 2  # hidden 32, two labels

# The trainable parameter names each method may add (besides the head), and how many tensors it adds by default.
EXPECTED = {
    "prompt_tuning": (r"injections\.0\.prompt", 1),
    "p_tuning_v2": (r"injections\.0\.prefix", 1),
    "adapter": (r"backbone\..*\.adapter\.(down|up)\.(weight|bias)", LAYERS * 2 * 4),
    "lora": (r"backbone\..*\.lora_[AB]\.default\.weight", None),  # 2 per target module, family-dependent
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


random_batch = functools.partial(helpers.random_batch, bsz=4, max_len=11)



def method_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backbone", FAMILIES)
def test_only_intended_parameters_get_gradients(backbone, method):
    model = build(backbone, method)
    model.train()
    ids, mask = random_batch(0)
    model(ids, mask).logsumexp(-1).sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad == trainable
    assert {"head.weight", "head.bias"} <= trainable
    pattern, count = EXPECTED[method]
    added = method_names(model)
    assert added and all(re.fullmatch(pattern, n) for n in added), sorted(added)
    if count is not None:
        assert len(added) == count
    else:  # LoRA: A and B per target module, in every layer
        assert len(added) == 2 * LAYERS * len(model.family.lora_targets)
    assert any(model.get_parameter(n).grad.abs().sum() > 0 for n in added)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backbone", FAMILIES)
def test_backbone_bit_identical_after_adamw_steps(backbone, method):
    torch.manual_seed(0)
    model, _, _ = load_backbone(backbone, 2)
    original = [(n, p, p.detach().clone()) for n, p in model.backbone.named_parameters()]
    model.freeze_backbone()
    m = get_method(method)
    m.apply(model, build_config(m))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    # Every parameter goes to the optimizer, with weight decay: a frozen one that got a gradient would move.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model.train()
    for step in range(3):
        ids, mask = random_batch(step)
        loss = torch.nn.functional.cross_entropy(model(ids, mask), torch.tensor([0, 1, 0, 1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name, p, saved in original:
        assert not p.requires_grad, name
        assert torch.equal(p, saved), f"backbone parameter {name} changed"
    moved = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])}
    assert {"head.weight", "head.bias"} <= moved
    assert moved - {"head.weight", "head.bias"}, "no method parameter moved"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backbone", FAMILIES)
def test_batch_invariance(backbone, method):
    """A sample's logits inside a right-padded batch of mixed lengths equal its logits alone."""
    model = build(backbone, method)
    helpers.perturb_trainable(model)
    model.eval()
    ids, mask = random_batch(100 + FAMILIES.index(backbone) * 10 + METHODS.index(method), bsz=5)
    assert len(set(mask.sum(1).tolist())) > 1
    with torch.no_grad():
        batch = model(ids, mask)
        for i in range(ids.shape[0]):
            n = int(mask[i].sum())
            alone = model(ids[i : i + 1, :n], mask[i : i + 1, :n])
            torch.testing.assert_close(batch[i : i + 1], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["adapter", "lora"])
@pytest.mark.parametrize("backbone", FAMILIES)
def test_module_methods_are_identity_at_init(backbone, method):
    """Adapters (zero up-projection) and LoRA (zero B) reproduce the head-only model's logits before training."""
    torch.manual_seed(0)
    model, _, _ = load_backbone(backbone, 2)
    model.freeze_backbone()
    model.eval()
    ids, mask = random_batch(7)
    with torch.no_grad():
        plain = model(ids, mask)
        m = get_method(method)
        m.apply(model, build_config(m))
        model.eval()
        adapted = model(ids, mask)
        torch.testing.assert_close(adapted, plain, atol=1e-6, rtol=0)
        helpers.perturb_trainable(model)  # and the check can fail: a non-zero update changes the logits
        assert not torch.allclose(model(ids, mask), plain, atol=1e-4)


ROUND_TRIPS = [(b, m, None) for b in FAMILIES for m in METHODS] + [
    (b, "p_tuning_v2", {"reparam": True, "reparam_hidden": 16}) for b in ("tiny-bert", "tiny-gpt2")
]


@pytest.mark.parametrize("backbone,method,overrides", ROUND_TRIPS)
def test_save_load_round_trip(backbone, method, overrides):
    model = build(backbone, method, overrides, seed=0)
    helpers.perturb_trainable(model)
    model.eval()
    ids, mask = random_batch(3)
    with torch.no_grad():
        expected = model(ids, mask)
    state = model.export_state()
    fresh = build(backbone, method, overrides, seed=1)  # another head and method init
    fresh.eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(ids, mask), expected, atol=1e-4)
        fresh.import_state(state)
        torch.testing.assert_close(fresh(ids, mask), expected, atol=1e-6, rtol=0)
    if overrides is None:  # the trained parameters and the head, nothing else
        assert set(state) == method_names(model) | {"head.weight", "head.bias"}


def test_lora_export_holds_lora_weights_and_head_only():
    model = build("tiny-bert", "lora")
    state = model.export_state()
    assert {"head.weight", "head.bias"} <= set(state)
    rest = set(state) - {"head.weight", "head.bias"}
    lora = r"backbone\.encoder\.layer\.\d\.attention\.self\.(query|value)\.lora_[AB]\.default\.weight"
    assert rest and all(re.fullmatch(lora, n) for n in rest)
    assert len(rest) == LAYERS * 2 * 2


@pytest.mark.parametrize("fresh_reparam", [True, False])
def test_p_tuning_v2_reparam_saves_prefixes_not_the_mlp(fresh_reparam):
    overrides = {"reparam": True, "reparam_hidden": 16}
    model = build("tiny-bert", "p_tuning_v2", overrides)
    helpers.perturb_trainable(model)
    model.eval()
    ids, mask = random_batch(5)
    with torch.no_grad():
        expected = model(ids, mask)
    state = model.export_state()
    assert set(state) == {"injections.0.prefix", "head.weight", "head.bias"}
    assert state["injections.0.prefix"].shape == (LAYERS, 2, 20, 32)
    counts = model.count_parameters()
    assert counts["stored"] == LAYERS * 2 * 20 * 32 + HEAD
    # A fresh model, with or without the MLP, loads the stored prefixes and uses them directly.
    fresh = build("tiny-bert", "p_tuning_v2", overrides if fresh_reparam else None, seed=5)
    fresh.import_state(state)
    fresh.eval()
    assert not any(n.startswith("injections.") and n != "injections.0.prefix" for n, _ in fresh.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids, mask), expected, atol=1e-6, rtol=0)
    assert fresh.count_parameters()["trainable"] == LAYERS * 2 * 20 * 32


# Hand-checked on tiny-bert: hidden 32, 4 layers, 4 heads, intermediate 64, 2 labels (head = 32*2 + 2 = 66).
AD64 = 32 * 64 + 64 + 64 * 32 + 32  # one adapter: down (weight + bias) and up (weight + bias)
AD8 = 32 * 8 + 8 + 8 * 32 + 32
COUNTS = [
    ("prompt_tuning", None, 20 * 32, 20 * 32),
    ("prompt_tuning", {"num_tokens": 5}, 5 * 32, 5 * 32),
    ("p_tuning_v2", None, 4 * 2 * 20 * 32, 4 * 2 * 20 * 32),
    # embedding 20x32, Linear 32->16, Linear 16->4*2*32; stored: the computed prefixes only
    ("p_tuning_v2", {"reparam": True, "reparam_hidden": 16}, 20 * 32 + (32 * 16 + 16) + (16 * 256 + 256), 5120),
    ("adapter", None, 4 * 2 * AD64, 4 * 2 * AD64),
    ("adapter", {"placement": "pfeiffer", "bottleneck": 8}, 4 * AD8, 4 * AD8),
    ("adapter", {"layers": [2, 3], "bottleneck": 8}, 2 * 2 * AD8, 2 * 2 * AD8),
    # two LayerNorms (weight + bias, 32 each) per BERT layer on top of the adapters
    ("adapter", {"bottleneck": 8, "train_layer_norms": True}, 4 * (2 * AD8 + 2 * 64), 4 * (2 * AD8 + 2 * 64)),
    ("lora", None, 4 * 2 * (8 * 32 + 32 * 8), 4 * 2 * (8 * 32 + 32 * 8)),
    ("lora", {"rank": 2, "layers": [0]}, 2 * (2 * 32 + 32 * 2), 2 * (2 * 32 + 32 * 2)),
]


@pytest.mark.parametrize("method,overrides,trainable,stored", COUNTS)
def test_parameter_counts_tiny_bert(method, overrides, trainable, stored):
    counts = build("tiny-bert", method, overrides).count_parameters()
    assert counts["trainable"] == trainable
    assert counts["trainable_with_head"] == trainable + HEAD
    assert counts["stored"] == stored + HEAD
    assert counts["stored_bytes"] == 4 * (stored + HEAD)


def test_gpt2_lora_on_fused_c_attn_uses_fan_in_fan_out():
    model = build("tiny-gpt2", "lora")
    c_attn = model.layers[0].attn.c_attn
    assert c_attn.fan_in_fan_out
    assert c_attn.lora_A["default"].weight.shape == (8, 32)
    assert c_attn.lora_B["default"].weight.shape == (96, 8)  # q, k and v: the fused projection's full output
    assert model.count_parameters()["trainable"] == 4 * (8 * 32 + 96 * 8)


@pytest.mark.parametrize("method", ["adapter", "lora"])
def test_layer_restriction_lets_lower_layers_skip_autograd(method):
    model = build("tiny-roberta", method, {"layers": [2, 3]})
    for i, layer in enumerate(model.layers):
        assert any(p.requires_grad for p in layer.parameters()) == (i >= 2)
    assert model.first_trainable_layer() == 2
    model.train()
    ids, mask = random_batch(9)
    model(ids, mask).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_prompt_init_vocab_samples_rows_and_follows_the_global_rng():
    a = build("tiny-bert", "prompt_tuning", seed=3).injections[0].prompt
    b = build("tiny-bert", "prompt_tuning", seed=3).injections[0].prompt
    c = build("tiny-bert", "prompt_tuning", seed=4).injections[0].prompt
    assert torch.equal(a, b) and not torch.equal(a, c)
    table = build("tiny-bert", "head").backbone.get_input_embeddings().weight
    assert all((table == row).all(1).any() for row in a)
    r = build("tiny-bert", "prompt_tuning", {"init": "random", "num_tokens": 200}).injections[0].prompt
    assert not any((table == row).all(1).any() for row in r[:5])
    assert abs(r.std().item() / table.std().item() - 1) < 0.1


@pytest.mark.parametrize(
    "method,overrides",
    [
        ("prompt_tuning", {"num_tokens": 0}),
        ("prompt_tuning", {"init": "zeros"}),
        ("p_tuning_v2", {"prefix_len": 0}),
        ("p_tuning_v2", {"dropout": 1.5}),
        ("adapter", {"placement": "middle"}),
        ("adapter", {"bottleneck": 0}),
        ("lora", {"rank": 0}),
    ],
)
def test_bad_configs_are_user_errors(method, overrides):
    with pytest.raises(SptbenchError):
        build_config(get_method(method), overrides)


@pytest.mark.parametrize("method,overrides", [("adapter", {"layers": [4]}), ("lora", {"layers": [-1]}),
                                              ("lora", {"targets": ["nonexistent"]})])
def test_bad_layers_or_targets_are_user_errors(method, overrides):
    with pytest.raises(SptbenchError):
        build("tiny-bert", method, overrides)


def test_registered_with_defaults():
    lrs = {name: get_method(name).default_lr for name in METHODS}
    assert all(0 < lr < 1 for lr in lrs.values())
    for name in METHODS:
        cfg = build_config(get_method(name))
        assert get_method(name).description and cfg is not None
