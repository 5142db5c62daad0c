"""Per-method tests generated from the registry: every registered method (a new method file included, with no list
to edit) on the tiny backbones: parameter counts against what the method declares (`Method.trains`), what trains and
what stays frozen, which parameters get gradients, the backbone untouched by training, and save -> load round trips
through the files `sptbench.save` / `--save-dir` write. Forward, backward and batch invariance of every method on every
tiny family are generated in tests/test_families.py. Then hand-checked specifics of the four baselines."""

from __future__ import annotations

import functools
import re

import pytest
import torch

from sptbench import api
from sptbench.core.errors import SptbenchError
from sptbench.methods.registry import build_config, get_method, load_methods
from sptbench.run.assemble import frozen_backbone
from tests import helpers
from tests.conftest import TINY_FAMILIES
from tests.helpers import build

FAMILIES = tuple(TINY_FAMILIES)
ALL_METHODS = sorted(load_methods())
LAYERS = 4  # the tiny backbones' depth
HEAD = 32 * 2 + 2  # hidden 32, two labels

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

random_batch = functools.partial(helpers.random_batch, bsz=4, max_len=11)


def method_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")}


# -- generated from the registry ----------------------------------------------------------------------------------
def build_with_backbone_ids(backbone: str, name: str, seed: int = 0):
    """The method on a frozen tiny backbone with its first head (the prompt head reads SST-2's label words), and the
    ids of the backbone's own parameters (before the method added any)."""
    method = get_method(name)
    setup = None
    if "linear" not in method.heads:
        from sptbench.data.specs import load_spec
        from sptbench.data.templates import prompt_setup

        setup = prompt_setup(load_spec("sst2"), "prompt")
    torch.manual_seed(seed)
    model, tokenizer, _ = frozen_backbone(backbone, 2, prompt=setup)
    own = {id(p) for p in model.backbone.parameters()}
    method.apply(model, build_config(method))
    return method, model, own, tokenizer


def inputs(model, tokenizer, seed: int, bsz: int = 4):
    """Random right-padded ids; with the prompt head an encoder's first token is the template's mask."""
    ids, mask = random_batch(seed, bsz=bsz)
    if model.head_kind == "prompt" and not model.family.causal:
        ids[:, 0] = tokenizer.mask_token_id
    return ids, mask


@pytest.mark.parametrize("name", ALL_METHODS)
def test_parameter_counts_follow_what_the_method_declares(name):
    method, model, own, _ = build_with_backbone_ids("tiny-bert", name)
    counts = model.count_parameters()
    head = {id(p) for p in model.head.parameters() if p.requires_grad} - own
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert counts["trainable_with_head"] == sum(p.numel() for p in trainable)
    assert counts["trainable"] == sum(p.numel() for p in trainable if id(p) not in head)
    assert counts["stored"] == sum(t.numel() for t in model.export_state().values())
    backbone_trainable = [p for p in model.backbone.parameters() if id(p) in own and p.requires_grad]
    added = [p for p in trainable if id(p) not in own and id(p) not in head]
    if method.trains == "added":
        assert not backbone_trainable and added and counts["trainable"] == sum(p.numel() for p in added) > 0
    elif method.trains == "backbone":
        assert counts["trainable"] == counts["backbone"] == sum(p.numel() for p in model.backbone.parameters())
    else:
        assert not backbone_trainable and not added and counts["trainable"] == 0
    assert counts["trainable_with_head"] - counts["trainable"] == (HEAD if model.head_kind == "linear" else 0)


@pytest.mark.parametrize("name", ALL_METHODS)
@pytest.mark.parametrize("backbone", FAMILIES)
def test_only_intended_parameters_get_gradients(backbone, name):
    """After one backward: every parameter with a gradient is trainable, every trainable one in a module the forward
    ran has one, and the backbone's own parameters are frozen unless the method trains the backbone."""
    method, model, own, tokenizer = build_with_backbone_ids(backbone, name)
    if method.trains != "backbone":
        assert not any(p.requires_grad for p in model.backbone.parameters() if id(p) in own)
    ran: set[int] = set()
    hooks = [m.register_forward_hook(lambda mod, args, out: ran.add(id(mod))) for m in model.modules()]
    model.train()
    ids, mask = inputs(model, tokenizer, seed=FAMILIES.index(backbone))
    logits = model(ids, mask)
    for h in hooks:
        h.remove()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if not trainable:  # zero_shot: nothing trains, nothing to differentiate
        assert not logits.requires_grad and method.trains == "nothing"
        return
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0, 1])).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    used = {f"{mn}.{pn}" if mn else pn for mn, m in model.named_modules() if id(m) in ran
            for pn, p in m.named_parameters(recurse=False) if p.requires_grad}
    assert with_grad <= trainable
    assert used <= with_grad, sorted(used - with_grad)
    if method.trains != "nothing":
        assert with_grad - {"head.weight", "head.bias"}, "the method's parameters got no gradient"


@pytest.mark.parametrize("name", [n for n in ALL_METHODS if get_method(n).trains != "backbone"])
def test_backbone_bit_identical_after_adamw_steps(name):
    """Every parameter goes to the optimizer, with weight decay: a frozen one that got a gradient would move."""
    method, model, own, tokenizer = build_with_backbone_ids("tiny-roberta", name)
    original = [(n, p, p.detach().clone()) for n, p in model.backbone.named_parameters() if id(p) in own]
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    if not before:  # zero_shot: nothing trains
        return
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model.train()
    for step in range(3):
        ids, mask = inputs(model, tokenizer, seed=step)
        loss = torch.nn.functional.cross_entropy(model(ids, mask), torch.tensor([0, 1, 0, 1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for n, p, saved in original:
        assert torch.equal(p, saved), f"backbone parameter {n} changed"
    moved = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])}
    assert moved == set(before)


@pytest.mark.parametrize("name", ALL_METHODS)
@pytest.mark.parametrize("backbone", ["tiny-bert", "tiny-gpt2"])
def test_save_load_round_trip_through_files(backbone, name, tmp_path):
    """`sptbench.save` -> `sptbench.load` (the safetensors file `--save-dir` writes too) gives the same logits; a model
    built with another seed does not (so the check can fail)."""
    method = get_method(name)
    options = {} if "linear" in method.heads else {"head": "prompt", "task": "sst2"}
    model = api.build_model(name, backbone, seed=0, **options)
    helpers.perturb_trainable(model)
    model.eval()
    ids, mask = inputs(model, model.tokenizer, seed=3)
    with torch.no_grad():
        expected = model(ids, mask)
    api.save(model, tmp_path / "saved")
    assert {f.name for f in (tmp_path / "saved").iterdir()} == {"trained.safetensors", "model.yaml"}
    loaded = api.load(tmp_path / "saved")
    other = api.build_model(name, backbone, seed=1, **options).eval()
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, mask), expected, atol=1e-6, rtol=0)
        if model.count_parameters()["trainable_with_head"]:
            assert not torch.allclose(other(ids, mask), expected, atol=1e-4)
    # what is saved is the trainable parameters and the linear head, except injections that save a compact form of
    # theirs (e.g. prefixes computed by an MLP: their own tests check what they save)
    compact = tuple(f"injections.{i}." for i, inj in enumerate(model.injections) if inj.export_state() is not None)
    assert {n for n in model.export_state() if not n.startswith(compact)} == {
        n for n, p in model.named_parameters()
        if (p.requires_grad or (n.startswith("head.") and model.head_kind == "linear")) and not n.startswith(compact)}


# -- the four baselines, by hand ----------------------------------------------------------------------------------
# The trainable parameter names each method adds (besides the head), and how many tensors it adds by default.
EXPECTED = {
    "prompt_tuning": (r"injections\.0\.prompt", 1),
    "p_tuning_v2": (r"injections\.0\.prefix", 1),
    "adapter": (r"backbone\..*\.adapter\.(down|up)\.(weight|bias)", LAYERS * 2 * 4),
    "lora": (r"backbone\..*\.lora_[AB]\.default\.weight", None),  # 2 per target module, family-dependent
}


@pytest.mark.parametrize("method", sorted(EXPECTED))
@pytest.mark.parametrize("backbone", FAMILIES)
def test_baseline_parameters_are_the_expected_ones(backbone, method):
    model = build(backbone, method)
    pattern, count = EXPECTED[method]
    added = method_names(model)
    assert added and all(re.fullmatch(pattern, n) for n in added), sorted(added)
    if count is not None:
        assert len(added) == count
    else:  # LoRA: A and B per target module, in every layer
        assert len(added) == 2 * LAYERS * len(model.family.lora_targets)


@pytest.mark.parametrize("method", ["adapter", "lora"])
@pytest.mark.parametrize("backbone", FAMILIES)
def test_module_methods_are_identity_at_init(backbone, method):
    """Adapters (zero up-projection) and LoRA (zero B) reproduce the head-only model's logits before training."""
    torch.manual_seed(0)
    model, _, _ = frozen_backbone(backbone, 2)
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
