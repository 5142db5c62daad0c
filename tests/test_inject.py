"""Mechanism tests of the injection layer against independent references: peft's prompt tuning, the stock GPT-2
with a key/value cache, and attention computed by hand (BERT/RoBERTa through AttentionInterface, DeBERTa-v2's
patched disentangled attention)."""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from peft import PromptTuningConfig as PeftPromptTuningConfig
from peft import get_peft_model
from transformers import DynamicCache

import sptbench.models.inject as inject
from sptbench.models.classifier import pool
from tests import helpers
from tests.conftest import TINY_DECODERS, TINY_FAMILIES

FAMILIES = tuple(TINY_FAMILIES)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def build(backbone: str, method: str, overrides: dict | None = None, seed: int = 0):
    return helpers.build(backbone, method, overrides, seed).eval()


random_batch = functools.partial(helpers.random_batch, bsz=3, max_len=9)


def stock_copy(backbone: torch.nn.Module) -> torch.nn.Module:
    """The same weights with transformers' own eager attention and no sptbench patch: an independent reference."""
    ref = copy.deepcopy(backbone)
    for module in ref.modules():
        if hasattr(module, "_sptbench_original_forward"):
            del module.forward, module._sptbench_original_forward
    ref.set_attn_implementation("eager")
    return ref.eval()


# -- input prompts ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", FAMILIES)
def test_prompt_tuning_equals_peft_prompt_tuning(backbone):
    """Same prompt vectors in peft's PROMPT_TUNING on the stock backbone -> same token states -> same logits."""
    m = 6
    model = build(backbone, "prompt_tuning", {"num_tokens": m})
    ids, mask = random_batch(1)
    peft_model = get_peft_model(
        stock_copy(model.backbone), PeftPromptTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=m)
    ).eval()
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(model.injections[0].prompt)
        ours = model(ids, mask).logits
        hidden = peft_model(input_ids=ids, attention_mask=mask).last_hidden_state
        assert hidden.shape[1] == m + ids.shape[1]
        reference = model.head(pool(hidden[:, m:], mask.bool(), model.pooling))
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


# -- key/value prefixes -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", TINY_DECODERS)
def test_p_tuning_v2_on_a_decoder_equals_stock_model_with_a_prefix_cache(backbone):
    """GPT-2 / Llama with our prefixes == the stock model given the same prefixes as a past key/value cache (Llama:
    grouped-query attention, so the prefixes have the key/value heads; RoPE: the cached keys carry no rotation and
    the tokens keep positions 0..n-1, as ours do)."""
    model = build(backbone, "p_tuning_v2", {"prefix_len": 5})
    inj = model.injections[0]
    ids, mask = random_batch(2)
    bsz, n = ids.shape
    ref = stock_copy(model.backbone)
    kv_heads = model.family.num_kv_heads(model.backbone)
    head_dim = model.family.hidden_size(model.backbone) // model.family.num_heads(model.backbone)
    cache = DynamicCache()
    for i in range(len(model.layers)):
        k, v = inj.kv_prefix(i, bsz)
        assert k.shape == v.shape == (bsz, kv_heads, 5, head_dim)  # (batch, key/value heads, p, head_dim)
        cache.update(k.detach().contiguous(), v.detach().contiguous(), i)
    with torch.no_grad():
        ours = model(ids, mask).logits
        hidden = ref(
            input_ids=ids,
            attention_mask=torch.cat([torch.ones(bsz, 5, dtype=mask.dtype), mask], 1),  # covers p + n
            cache=cache,
            position_ids=torch.arange(n)[None].expand(bsz, -1),  # the cache would otherwise start positions at p
        ).last_hidden_state
        reference = model.head(pool(hidden, mask.bool(), "last"))
        assert not torch.allclose(ours, model.head(pool(ref(input_ids=ids, attention_mask=mask).last_hidden_state,
                                                        mask.bool(), "last")), atol=1e-4)  # the prefix matters
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backbone", ["tiny-bert", "tiny-roberta"])
def test_prefix_enters_keys_and_values_only(backbone, monkeypatch):
    """Every layer's attention gets n query rows and p + n key/value rows, and outputs n positions."""
    p = 5
    model = build(backbone, "p_tuning_v2", {"prefix_len": p})
    ids, mask = random_batch(3)
    seen = []
    real = inject.sdpa_attention_forward

    def spy(module, query, key, value, attention_mask, **kwargs):
        seen.append((query.shape, key.shape, value.shape, attention_mask.shape))
        return real(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setattr(inject, "sdpa_attention_forward", spy)
    outputs = []
    hooks = [model.family.self_attention(layer).register_forward_hook(lambda mod, a, out: outputs.append(out[0].shape))
             for layer in model.layers]
    with torch.no_grad():
        model(ids, mask)
    for h in hooks:
        h.remove()
    bsz, n = ids.shape
    assert len(seen) == len(model.layers)
    for q, k, v, m in seen:
        assert q == (bsz, 4, n, 8)
        assert k == v == (bsz, 4, p + n, 8)
        assert m[-1] == p + n
    assert outputs == [(bsz, n, 32)] * len(model.layers)


@pytest.mark.parametrize("backbone", ["tiny-bert", "tiny-roberta"])
def test_prefix_attention_equals_a_manual_computation(backbone):
    """softmax([q Pk^T, q K^T] / sqrt(d) + mask) [Pv; V], per head, with padding keys masked and prefix keys visible."""
    p = 3
    model = build(backbone, "p_tuning_v2", {"prefix_len": p})
    attn = model.family.self_attention(model.layers[1])
    inj = model.injections[0]
    bsz, n, heads, d = 2, 6, 4, 8
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(bsz, n, 32, generator=g)
    key_mask = torch.tensor([[1] * n, [1] * 4 + [0] * 2], dtype=torch.bool)
    pk, pv = (t.detach() for t in inj.kv_prefix(1, bsz))
    with torch.no_grad():
        attn._sptbench_prefix = (pk, pv)
        try:
            out = attn(hidden, attention_mask=model.family.layer_mask(key_mask, hidden.dtype))[0]
        finally:
            attn._sptbench_prefix = None
        split = lambda x: x.view(bsz, n, heads, d).transpose(1, 2)
        q, k, v = split(attn.query(hidden)), split(attn.key(hidden)), split(attn.value(hidden))
        k, v = torch.cat([pk, k], 2), torch.cat([pv, v], 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)
        visible = torch.cat([torch.ones(bsz, p, dtype=torch.bool), key_mask], 1)[:, None, None, :]
        probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
        expected = (probs @ v).transpose(1, 2).reshape(bsz, n, heads * d)
    assert out.shape == (bsz, n, 32)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_deberta_prefix_gets_content_to_content_score_only():
    """DeBERTa-v2: token-token scores keep their relative-position terms; prefix keys score q.k / sqrt(3d) only."""
    p = 3
    model = build("tiny-deberta", "p_tuning_v2", {"prefix_len": p})
    encoder = model.backbone.encoder
    attn = model.family.self_attention(model.layers[2])
    assert attn.relative_attention and set(attn.pos_att_type) == {"c2p", "p2c"}
    inj = model.injections[0]
    bsz, n, heads, d = 2, 7, 4, 8
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(bsz, n, 32, generator=g)
    key_mask = torch.tensor([[1] * n, [1] * 5 + [0] * 2], dtype=torch.bool)
    mask = model.family.layer_mask(key_mask, hidden.dtype)
    rel_pos, rel_emb = encoder.get_rel_pos(hidden), encoder.get_rel_embedding()
    pk, pv = (t.detach() for t in inj.kv_prefix(2, bsz))
    with torch.no_grad():
        stock_out, stock_probs = attn._sptbench_original_forward(hidden, mask, True, None, rel_pos, rel_emb)
        attn._sptbench_prefix = (pk, pv)
        try:
            out, probs = attn(hidden, mask, output_attentions=True, relative_pos=rel_pos, rel_embeddings=rel_emb)
        finally:
            attn._sptbench_prefix = None
        # 1. against the stock forward: the token part of the attention, renormalised, is the stock attention
        assert probs.shape == (bsz, heads, n, p + n)
        tokens = probs[..., p:]
        torch.testing.assert_close(tokens / tokens.sum(-1, keepdim=True), stock_probs, atol=1e-5, rtol=0)
        assert (probs[..., :p] > 0).all() and (probs[:, :, :, p:][1, :, :, 5:] == 0).all()
        # 2. by hand: prefix scores are content-to-content only, with DeBERTa's sqrt(3d) scale
        q = attn.transpose_for_scores(attn.query_proj(hidden), heads)
        k = attn.transpose_for_scores(attn.key_proj(hidden), heads)
        v = attn.transpose_for_scores(attn.value_proj(hidden), heads)
        scale = math.sqrt(d * 3)
        token_scores = q @ k.transpose(-1, -2) / scale + attn.disentangled_attention_bias(q, k, rel_pos, rel_emb, 3)
        prefix_scores = q @ pk.reshape(bsz * heads, p, d).transpose(-1, -2) / scale
        scores = torch.cat([prefix_scores, token_scores], -1).view(bsz, heads, n, p + n)
        visible = F.pad(key_mask, (p, 0), value=True)[:, None, None, :]
        expected_probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
        torch.testing.assert_close(probs, expected_probs, atol=1e-6, rtol=0)
        context = expected_probs.view(bsz * heads, n, p + n) @ torch.cat([pv.reshape(bsz * heads, p, d), v], 1)
        expected = context.view(bsz, heads, n, d).transpose(1, 2).reshape(bsz, n, heads * d)
    assert out.shape == stock_out.shape == (bsz, n, 32)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_deberta_v1_prefix_gets_content_to_content_score_only():
    """DeBERTa (v1, fused in_proj and query/value biases): token-token scores keep their relative-position terms;
    prefix keys score q.k / sqrt(3d) only; without a prefix the patched forward is the stock one."""
    p, bsz, n, heads, d = 2, 2, 6, 4, 8
    model = build("tiny-deberta-v1", "p_tuning_v2", {"prefix_len": p})
    encoder = model.backbone.encoder
    attn = model.family.self_attention(model.layers[1])
    assert attn.relative_attention and set(attn.pos_att_type) == {"c2p", "p2c"}
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # non-zero biases, so that a forgotten one shows
        attn.q_bias.normal_(generator=g)
        attn.v_bias.normal_(generator=g)
    hidden = torch.randn(bsz, n, 32, generator=g)
    key_mask = torch.tensor([[1] * n, [1] * 4 + [0] * 2], dtype=torch.bool)
    mask = model.family.layer_mask(key_mask, hidden.dtype)
    rel_pos, rel_emb = encoder.get_rel_pos(hidden), encoder.get_rel_embedding()
    pk, pv = (t.detach() for t in model.injections[0].kv_prefix(1, bsz))
    with torch.no_grad():
        stock_out, stock_probs = attn._sptbench_original_forward(hidden, mask, True, None, rel_pos, rel_emb)
        torch.testing.assert_close(attn(hidden, mask, True, None, rel_pos, rel_emb)[0], stock_out, atol=0, rtol=0)
        attn._sptbench_prefix = (pk, pv)
        try:
            out, probs = attn(hidden, mask, output_attentions=True, relative_pos=rel_pos, rel_embeddings=rel_emb)
        finally:
            attn._sptbench_prefix = None
        tokens = probs[..., p:]
        torch.testing.assert_close(tokens / tokens.sum(-1, keepdim=True), stock_probs, atol=1e-5, rtol=0)
        # by hand: q, k, v from the fused projection (per head [q | k | v]), biases on q and v
        qkv = attn.in_proj(hidden).view(bsz, n, heads, 3 * d).transpose(1, 2)
        q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]
        q = (q + attn.q_bias.view(heads, d)[None, :, None]) / math.sqrt(3 * d)
        v = v + attn.v_bias.view(heads, d)[None, :, None]
        token_scores = q @ k.transpose(-1, -2) + attn.disentangled_att_bias(q, k, rel_pos, rel_emb, 3)
        scores = torch.cat([q @ pk.transpose(-1, -2), token_scores], -1)
        visible = F.pad(key_mask, (p, 0), value=True)[:, None, None, :]
        expected_probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
        torch.testing.assert_close(probs, expected_probs, atol=1e-6, rtol=0)
        expected = (expected_probs @ torch.cat([pv, v], 2)).transpose(1, 2).reshape(bsz, n, heads * d)
    assert out.shape == stock_out.shape == (bsz, n, 32)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backbone", FAMILIES)
def test_kv_prefix_reaches_every_layer(backbone):
    """Perturbing only layer l's prefix changes the logits for every l (no layer is skipped)."""
    model = build(backbone, "p_tuning_v2", {"prefix_len": 2, "dropout": 0.0})
    ids, mask = random_batch(5)
    prefix = model.injections[0].prefix
    with torch.no_grad():
        base = model(ids, mask).logits
        for layer in range(len(model.layers)):
            saved = prefix[layer].clone()
            prefix[layer, 1] += 1.0  # values only
            assert not torch.allclose(model(ids, mask).logits, base, atol=1e-5), f"layer {layer} prefix had no effect"
            prefix[layer] = saved


# -- layering ------------------------------------------------------------------------------------------------------
def _prefix_path_installed(model) -> bool:
    patched = any(hasattr(m, "_sptbench_original_forward") for m in model.backbone.modules())
    return patched or model.backbone.config._attn_implementation == inject.ATTN_IMPLEMENTATION


@pytest.mark.parametrize("backbone", FAMILIES)
def test_only_methods_with_prefixes_change_the_attention(backbone):
    """The stock attention stays for methods without key/value prefixes; P-tuning v2 gets the prefix path, and a
    prompt-tuning model gives the same logits on either path."""
    model = build(backbone, "prompt_tuning", {"num_tokens": 3})
    assert not _prefix_path_installed(model)
    ids, mask = random_batch(7)
    with torch.no_grad():
        stock = model(ids, mask).logits
        inject.enable_prefixes(model.backbone, model.family)
        assert _prefix_path_installed(model)
        torch.testing.assert_close(model(ids, mask).logits, stock, atol=0, rtol=0)
    assert _prefix_path_installed(build(backbone, "p_tuning_v2", {"prefix_len": 2}))


def test_inject_knows_no_family():
    """The shared mechanism imports no family-specific module and names no family (the Family owns its quirks)."""
    import ast
    import inspect

    source = inspect.getsource(inject)
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(ast.parse(source)) if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    ]
    assert not [m for m in imported if m and m.startswith("transformers.models")]
    for name in ("bert", "roberta", "deberta", "gpt2", "mpnet"):
        assert name not in source.lower(), name
