"""The PETuning methods beside SPT (issue 39): DoRA, (IA)^3, prefix tuning (Li & Liang) and DePT. The generated tests
(tests/test_baselines.py, tests/test_families.py, tests/test_registry.py) cover them as every method; here: the
prompt head on every tiny family, parameter counts by hand, identity at init and each method's own mechanism."""

from __future__ import annotations

import pytest
import torch

from sptbench.core.errors import SptbenchError
from sptbench.methods.registry import build_config, get_method
from tests import helpers
from tests.conftest import TINY_FAMILIES
from tests.test_heads import build as build_prompt
from tests.test_heads import padded_logits_equal_alone, random_prompt_batch, stock_label_logits

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

METHODS = ["dora", "ia3", "prefix_tuning", "dept"]
HEAD = 32 * 2 + 2  # tiny-bert: hidden 32, two labels


# -- the prompt head, every tiny family -------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_prompt_head_batch_invariant_with_gradients(name, method):
    """With the prompt head (SST-2's label words): the method's parameters get gradients, and a row's logits in a
    padded batch (right, and left for causal models) equal its logits alone, with the parameters moved off init."""
    model, tok = build_prompt(name, method)
    causal = model.family.causal
    lengths = [11, 3, 7]
    ids, mask = random_prompt_batch(200 + METHODS.index(method), tok, causal, lengths)
    model.train()
    torch.nn.functional.cross_entropy(model(ids, mask).logits, torch.tensor([0, 1, 0])).backward()
    grads = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert grads and all(p.requires_grad for n, p in model.named_parameters() if n in grads)
    helpers.perturb_trainable(model)
    model.eval()
    padded_logits_equal_alone(model, tok, causal, lengths, 300)


@pytest.mark.parametrize("method", ["dora", "ia3"])
@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_identity_at_init_with_the_prompt_head(name, method):
    """Methods that start as the identity (DoRA: B = 0 and m = ||W||; (IA)^3: vectors of ones) give the stock LM's
    label-word logits."""
    model, tok = build_prompt(name, method)
    ids, mask = random_prompt_batch(17, tok, model.family.causal, [9, 4, 13])
    with torch.no_grad():
        ours = model(ids, mask).logits
        expected = stock_label_logits(name, ids, mask, model.head.label_word_ids, model.family.causal,
                                      tok.mask_token_id)
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
        helpers.perturb_trainable(model)  # and the check can fail
        assert not torch.allclose(model(ids, mask).logits, expected, atol=1e-4)


# -- parameter counts by hand -------------------------------------------------------------------------------------
# tiny-bert: hidden 32, 4 layers, 4 heads, intermediate 64; tiny-gpt2: hidden 32, fused c_attn (3 * 32 outputs)
LORA_QV = 4 * 2 * (8 * 32 + 32 * 8)  # rank 8 on query and value in 4 layers
COUNTS = [
    ("tiny-bert", "dora", None, LORA_QV + 4 * 2 * 32),  # + one magnitude per output feature of each target
    ("tiny-bert", "dora", {"rank": 2, "layers": [1]}, 2 * (2 * 32 + 32 * 2) + 2 * 32),
    ("tiny-gpt2", "dora", None, 4 * (8 * 32 + 96 * 8) + 4 * 96),
    ("tiny-bert", "ia3", None, 4 * (32 + 32 + 64)),  # l_k, l_v (hidden) and l_ff (intermediate) per layer
    ("tiny-bert", "ia3", {"feedforward": False, "layers": [2, 3]}, 2 * (32 + 32)),
    ("tiny-gpt2", "ia3", None, 4 * (3 * 32 + 128)),  # the fused c_attn: q, k and v scaled; intermediate 4 * 32
    ("tiny-llama", "ia3", None, 4 * (16 + 16 + 64)),  # grouped-query attention: 2 key/value heads of 8
    # P' (20 x 32), Linear 32 -> 512, Linear 512 -> 4 layers * 2 * 32; stored: the 4 * 2 * 20 * 32 prefixes only
    ("tiny-bert", "prefix_tuning", None, 20 * 32 + (32 * 512 + 512) + (512 * 256 + 256), 4 * 2 * 20 * 32),
    ("tiny-bert", "prefix_tuning", {"prefix_len": 5, "mlp_hidden": 16}, 5 * 32 + (32 * 16 + 16) + (16 * 256 + 256),
     4 * 2 * 5 * 32),
    # Llama: the prefixes have the 2 key/value heads of 8 (16 wide), P' too
    ("tiny-llama", "prefix_tuning", {"mlp_hidden": 16}, 20 * 16 + (16 * 16 + 16) + (16 * 128 + 128), 4 * 2 * 20 * 16),
    # m prompt vectors, A (s x r), B (r x H): m H + (s + H) r
    ("tiny-bert", "dept", None, 40 * 32 + 256 * 45 + 45 * 32),
    ("tiny-gpt2", "dept", {"num_tokens": 5, "rank": 2, "max_length": 16}, 5 * 32 + 16 * 2 + 2 * 32),
]


@pytest.mark.parametrize("backbone,method,overrides,trainable,stored",
                         [c if len(c) == 5 else (*c, c[3]) for c in COUNTS])
def test_parameter_counts_by_hand(backbone, method, overrides, trainable, stored):
    counts = helpers.build(backbone, method, overrides).count_parameters()
    head = 32 * 2 + 2
    assert counts["trainable"] == trainable and counts["trainable_with_head"] == trainable + head
    assert counts["stored"] == stored + head and counts["stored_bytes"] == 4 * (stored + head)


# -- DoRA ---------------------------------------------------------------------------------------------------------
def test_dora_is_lora_plus_a_magnitude_and_rescales_each_output():
    """Same LoRA matrices as `lora` (same seed, same targets); the magnitude starts at the weight's row norms, and
    scaling one entry of it scales exactly that output feature of the adapted projection."""
    dora, lora = helpers.build("tiny-bert", "dora"), helpers.build("tiny-bert", "lora")
    names = lambda m: {n.replace("lora_magnitude_vector", "M") for n, p in m.named_parameters() if p.requires_grad}
    assert {n for n in names(dora) if ".M." not in n} == names(lora)
    query = dora.layers[0].attention.self.query
    w = query.base_layer.weight
    torch.testing.assert_close(query.lora_magnitude_vector["default"].weight, w.norm(dim=1), atol=1e-6, rtol=0)
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    query.eval()
    with torch.no_grad():
        before = query(x)
        query.lora_magnitude_vector["default"].weight[5] *= 3.0
        after = query(x)
    bias = query.base_layer.bias
    torch.testing.assert_close(after[:, 5] - bias[5], 3.0 * (before[:, 5] - bias[5]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([after[:, :5], after[:, 6:]], 1),
                               torch.cat([before[:, :5], before[:, 6:]], 1), atol=0, rtol=0)


def test_dora_bad_config_is_a_user_error():
    with pytest.raises(SptbenchError):
        build_config(get_method("dora"), {"rank": 0})


# -- (IA)^3 -------------------------------------------------------------------------------------------------------
def test_ia3_scales_keys_values_and_ffn_activations():
    """Each vector multiplies what the paper says: the key and value projections' outputs, and the intermediate
    activations entering the FFN output projection (checked against the frozen modules by hand)."""
    model = helpers.build("tiny-bert", "ia3", seed=3)
    helpers.perturb_trainable(model)
    layer = model.layers[1]
    g = torch.Generator().manual_seed(0)
    x, inter = torch.randn(2, 5, 32, generator=g), torch.randn(2, 5, 64, generator=g)
    key, value, out = layer.attention.self.key, layer.attention.self.value, layer.output.dense
    with torch.no_grad():
        for proj in (key, value):
            l_kv = proj.ia3_l["default"].view(-1)
            torch.testing.assert_close(proj(x), proj.base_layer(x) * l_kv, atol=1e-6, rtol=0)
        l_ff = out.ia3_l["default"].view(-1)
        torch.testing.assert_close(out(inter), out.base_layer(inter * l_ff), atol=1e-6, rtol=0)
        assert not torch.allclose(out(inter), out.base_layer(inter), atol=1e-3)
    assert not hasattr(layer.attention.self.query, "ia3_l") and hasattr(key, "ia3_l")  # queries are not scaled


def test_ia3_refuses_a_family_without_key_value_projections():
    import dataclasses

    model, _, _ = _frozen("tiny-bert")
    model.family = dataclasses.replace(model.family, key_value_targets=())
    with pytest.raises(SptbenchError, match="ia3.*does not name") as err:
        get_method("ia3").apply(model, build_config(get_method("ia3")))
    assert "\n" not in str(err.value)


def test_ia3_bad_layers_are_user_errors():
    with pytest.raises(SptbenchError, match="ia3 layers"):
        helpers.build("tiny-bert", "ia3", {"layers": [4]})


def _frozen(backbone: str):
    from sptbench.run.assemble import frozen_backbone

    torch.manual_seed(0)
    return frozen_backbone(backbone, 2)


# -- prefix tuning ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["tiny-bert", "tiny-gpt2"])
def test_prefix_tuning_trains_through_the_mlp_and_folds_into_plain_prefixes(backbone, tmp_path):
    """Training: the gradient reaches P' and the MLP, there is no prefix parameter. After training the MLP folds into
    plain prefixes: the folded model and a saved -> loaded one give the training-time model's logits, and store and
    train exactly the L * 2 * p * H prefixes."""
    from sptbench import api

    model = api.build_model("prefix_tuning", backbone, seed=0, prefix_len=4, mlp_hidden=16)
    inj = model.injections[0]
    ids, mask = helpers.random_batch(4, bsz=3, max_len=8)
    model.train()
    torch.nn.functional.cross_entropy(model(ids, mask).logits, torch.tensor([0, 1, 1])).backward()
    grads = {n for n, p in inj.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads == {"embedding", "mlp_in.weight", "mlp_in.bias", "mlp_out.weight", "mlp_out.bias"}
    helpers.perturb_trainable(model)
    model.eval()
    with torch.no_grad():
        trained = model(ids, mask).logits
        prefixes = inj.all_prefixes().clone()
    api.save(model, tmp_path / "saved")
    loaded = api.load(tmp_path / "saved")
    inj.fold()
    plain = 4 * 2 * 4 * 32
    for m in (model, loaded):
        assert {n for n, _ in m.injections[0].named_parameters()} == {"prefix"}
        torch.testing.assert_close(m.injections[0].prefix, prefixes, atol=0, rtol=0)
        assert m.count_parameters()["trainable"] == m.count_parameters()["stored"] - HEAD == plain
        with torch.no_grad():
            torch.testing.assert_close(m(ids, mask).logits, trained, atol=1e-6, rtol=0)
    assert not torch.allclose(prefixes, api.build_model("prefix_tuning", backbone, seed=1, prefix_len=4,
                                                        mlp_hidden=16).injections[0].all_prefixes())


def test_prefix_tuning_bad_configs_are_user_errors():
    for overrides in ({"prefix_len": 0}, {"mlp_hidden": 0}, {"dropout": 1.0}):
        with pytest.raises(SptbenchError):
            build_config(get_method("prefix_tuning"), overrides)


# -- DePT ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["tiny-bert", "tiny-gpt2"])
def test_dept_equals_the_stock_model_fed_its_prompt_and_updated_embeddings(backbone):
    """The DePT code's forward on the stock model: inputs_embeds = [prompt; E + alpha / sqrt(r) * (A B)[:n]], the
    attention mask extended over the prompt; our logits (linear head on the token positions) are the same."""
    from sptbench.models.classifier import pool
    from tests.test_inject import stock_copy

    model = helpers.build(backbone, "dept", {"num_tokens": 3, "rank": 4, "max_length": 12})
    helpers.perturb_trainable(model)  # B leaves zero: the update is there
    model.eval()
    inj = model.injections[0]
    ids, mask = helpers.random_batch(6, bsz=3, max_len=9)
    bsz, n = ids.shape
    with torch.no_grad():
        ours = model(ids, mask).logits
        update = 4.0 * (inj.lora_embedding_A @ inj.lora_embedding_B)[:n]  # alpha 8 / sqrt(4)
        words = model.family.word_embeddings(model.backbone)(ids) + update
        embeds = torch.cat([inj.prompt.expand(bsz, -1, -1), words], 1)
        full = torch.cat([torch.ones(bsz, 3, dtype=mask.dtype), mask], 1)
        hidden = stock_copy(model.backbone)(inputs_embeds=embeds, attention_mask=full).last_hidden_state[:, 3:]
        reference = model.head(pool(hidden, mask.bool(), model.pooling))
        torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
        inj.lora_embedding_B.zero_()  # and the update matters
        assert not torch.allclose(model(ids, mask).logits, ours, atol=1e-4)


def test_dept_update_starts_at_zero_and_skips_padding():
    inj = helpers.build("tiny-bert", "dept").injections[0]
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    assert not inj.input_offset(mask).any()  # B = 0
    helpers.perturb_trainable(helpers.build("tiny-bert", "head"))
    with torch.no_grad():
        inj.lora_embedding_B.normal_()
        offset = inj.input_offset(mask)
    assert not offset[0, 3].any() and not offset[1, 0].any()
    torch.testing.assert_close(offset[0, :3], offset[1, 1:], atol=0, rtol=0)  # the same rows, either padding side


def test_dept_trains_a_and_b_at_their_own_learning_rate():
    """One AdamW step (no decay, no warmup): Adam's first step moves every element with a gradient (well above eps)
    by its group's learning rate, so the prompt and head move by the run's lr, A and B by embedding_lr."""
    import dataclasses

    from sptbench.core.run_schema import TrainConfig
    from sptbench.training.loop import optimizer_for

    model = helpers.build("tiny-bert", "dept", {"embedding_lr": 1e-4})
    helpers.perturb_trainable(model)
    tcfg = dataclasses.replace(TrainConfig(), lr=2e-2, weight_decay=0.0, warmup_ratio=0.0, max_steps=10)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, _ = optimizer_for(params, tcfg)
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    inj = model.injections[0]
    assert {lrs[id(inj.lora_embedding_A)], lrs[id(inj.lora_embedding_B)]} == {1e-4}
    assert {lrs[id(inj.prompt)], lrs[id(model.head.weight)]} == {2e-2}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.train()
    ids, mask = helpers.random_batch(2, bsz=4, max_len=7)
    torch.nn.functional.cross_entropy(model(ids, mask).logits, torch.tensor([0, 1, 0, 1])).backward()
    optimizer.step()
    for name, p in model.named_parameters():
        if name in before:
            moved = (p.detach() - before[name]).abs()[p.grad.abs() > 1e-5]  # Adam's eps aside
            expected = 1e-4 if "lora_embedding" in name else 2e-2
            torch.testing.assert_close(moved, torch.full_like(moved, expected), atol=expected * 1e-2, rtol=0)


def test_dept_refuses_inputs_longer_than_its_positions_in_one_line():
    model = helpers.build("tiny-bert", "dept", {"max_length": 6})
    ids, mask = helpers.random_batch(0, bsz=2, max_len=7)
    with pytest.raises(SptbenchError, match="longer than its max_length 6") as err:
        model(ids, mask)
    assert "\n" not in str(err.value)


def test_dept_both_learning_rates_are_in_the_record_key():
    from sptbench.core.run_schema import record_key
    from tests.helpers import make_record

    rec = make_record(method__name="dept", method__config={"embedding_lr": 5e-4}, training__lr=3e-2)
    keys = {record_key(rec)}
    for path, value in (("method__config", {"embedding_lr": 5e-3}), ("training__lr", 3e-1)):
        other = make_record(method__name="dept", method__config={"embedding_lr": 5e-4}, training__lr=3e-2)
        other["run_id"] = rec["run_id"]
        *parents, leaf = path.split("__")
        other[parents[0]][leaf] = value
        keys.add(record_key(other))
    assert len(keys) == 3


@pytest.mark.parametrize("overrides", [{"num_tokens": 0}, {"rank": 0}, {"max_length": 0}, {"embedding_lr": 0.0},
                                       {"init": "zeros"}])
def test_dept_bad_configs_are_user_errors(overrides):
    with pytest.raises(SptbenchError):
        build_config(get_method("dept"), overrides)
