"""Families: discovery (one module per architecture registers its Family and tiny configs, sptbench/families/), and
MPNet's relative position bias through prompt positions and key/value prefixes (sptbench/families/mpnet.py). Every
registered method on every tiny family is generated in sptbench/testing/test_methods.py."""

from __future__ import annotations

import functools
import importlib.util
import math
import sys
import textwrap
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from sptbench.core.errors import SptbenchError
from sptbench.families import base
from sptbench.families.base import family_for, family_modules, load_families
from tests import helpers

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

random_batch = functools.partial(helpers.random_batch, bsz=4, max_len=10)


# -- discovery ----------------------------------------------------------------------------------------------------
def _registrations(monkeypatch) -> list[tuple[str, str]]:
    """(module, model_type) of every `register_family` call the family package's modules make: each module is run
    afresh under a probe name, with a spy for `register_family`, so that the live registry is left alone."""
    calls = []
    for module in family_modules():
        spy = lambda family, module=module, **_: calls.append((module, family.name))
        monkeypatch.setattr(base, "register_family", spy)
        probe = f"_probe_{module.replace('.', '_')}"
        spec = importlib.util.spec_from_file_location(probe, importlib.util.find_spec(module).origin)
        fresh = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, probe, fresh)
        spec.loader.exec_module(fresh)
    return calls


def test_every_model_type_is_registered_once_by_its_module_with_its_own_configs(monkeypatch):
    """Each family module registers its model type once, discovery finds every one, and each tiny (or `*-random`)
    config declared beside a Family is one that Family serves."""
    calls = _registrations(monkeypatch)
    monkeypatch.undo()
    counts = Counter(model_type for _, model_type in calls)
    assert counts and all(n == 1 for n in counts.values()), calls
    families = load_families()
    assert set(families) == set(counts)
    for model_type, entry in families.items():
        assert entry.family.name == model_type and entry.tiny_configs
        for make in (*entry.tiny_configs.values(), *entry.random_configs.values()):
            assert family_for(make(100)) is entry.family


def test_an_unknown_model_type_lists_the_discovered_families():
    with pytest.raises(SptbenchError) as err:
        family_for(SimpleNamespace(model_type="no-such-arch"))
    assert str(err.value) == ("unsupported backbone family 'no-such-arch' (config.model_type); supported model types: "
                              + ", ".join(sorted(load_families())))


def test_a_new_family_is_one_file_and_a_broken_one_fails_loudly(tmp_path, monkeypatch):
    """A module dropped into the family package is discovered with its tiny config; one that fails to import is a
    one-line SptbenchError naming it. (The package path and the registry are restored afterwards.)"""
    import sptbench.families as package

    (tmp_path / "toy.py").write_text(textwrap.dedent("""
        from sptbench.families.base import Family, register_family, transformers_class

        register_family(Family("toy", causal=False, default_pooling="cls", lora_targets=("query",)), label="Toy",
                        listing_order=10_000, tiny_configs={"tiny-toy": lambda v: transformers_class("BertConfig")()})
    """))
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(tmp_path)])
    monkeypatch.setattr(base, "FAMILIES", dict(base.FAMILIES))
    for name in ("sptbench.families.toy", "sptbench.families.broken"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    try:
        families = load_families()
        assert list(families)[-1] == "toy" and list(families["toy"].tiny_configs) == ["tiny-toy"]
        assert family_for(SimpleNamespace(model_type="toy")) is families["toy"].family
        (tmp_path / "broken.py").write_text("raise ImportError('no such thing')\n")
        with pytest.raises(SptbenchError) as err:
            load_families(refresh=True)
        assert str(err.value) == "family module 'sptbench.families.broken' failed to import: ImportError: no such thing"
    finally:
        for name in ("sptbench.families.toy", "sptbench.families.broken"):
            sys.modules.pop(name, None)


# -- MPNet's relative position bias -------------------------------------------------------------------------------
def _spy_position_bias(model) -> tuple[dict[int, torch.Tensor], list]:
    """The position bias each layer is called with (MPNetLayer(hidden, mask, position_bias))."""
    seen: dict[int, torch.Tensor] = {}
    hooks = [layer.register_forward_pre_hook(lambda mod, args, i=i: seen.__setitem__(i, args[2]))
             for i, layer in enumerate(model.layers)]
    return seen, hooks


def test_mpnet_prompt_positions_are_biased_as_front_positions():
    """Hidden-state prompts entering at layer l: from l on, every layer gets the stock bias for m + n positions
    (prompts as if they were tokens at the front); between tokens it equals the bias without prompts."""
    m, layer = 3, 2
    model = helpers.build("tiny-mpnet", "lpt", {"layer": layer, "num_tokens": m}).eval()
    ids, mask = random_batch(2)
    n = ids.shape[1]
    seen, hooks = _spy_position_bias(model)
    with torch.no_grad():
        model(ids, mask)
    for h in hooks:
        h.remove()
    encoder, heads = model.backbone.encoder, 4
    for i, bias in seen.items():
        length = n + (m if i >= layer else 0)
        assert bias.shape == (1, heads, length, length)
        torch.testing.assert_close(bias, encoder.compute_position_bias(torch.zeros(1, length, 1)), atol=0, rtol=0)
    torch.testing.assert_close(seen[layer][..., m:, m:], seen[0], atol=0, rtol=0)  # token pairs: as stock
    assert (seen[layer][..., :m, m:] != 0).any() and (seen[layer][..., m:, :m] != 0).any()  # prompts: by distance


def test_mpnet_prefix_keys_get_no_position_bias():
    """P-tuning v2 on MPNet: token-token scores keep the relative position bias; prefix keys score q.k / sqrt(d) only
    and are visible to every query; the token part of the attention, renormalised, is the stock attention."""
    p = 3
    model = helpers.build("tiny-mpnet", "p_tuning_v2", {"prefix_len": p}).eval()
    attn = model.family.self_attention(model.layers[1])
    bsz, n, heads, d = 2, 6, 4, 8
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(bsz, n, 32, generator=g)
    key_mask = torch.tensor([[1] * n, [1] * 4 + [0] * 2], dtype=torch.bool)
    mask = model.family.layer_mask(key_mask, hidden.dtype)
    bias = model.family.position_bias(model.backbone, hidden)
    pk, pv = (t.detach() for t in model.injections[0].kv_prefix(1, bsz))
    with torch.no_grad():
        stock_out, stock_probs = attn._sptbench_original_forward(hidden, mask, bias, True)
        torch.testing.assert_close(attn(hidden, mask, bias)[0], stock_out, atol=0, rtol=0)  # no prefix: stock
        attn._sptbench_prefix = (pk, pv)
        try:
            out, probs = attn(hidden, mask, bias, output_attentions=True)
        finally:
            attn._sptbench_prefix = None
        tokens = probs[..., p:]
        torch.testing.assert_close(tokens / tokens.sum(-1, keepdim=True), stock_probs, atol=1e-6, rtol=0)
        split = lambda x: x.view(bsz, n, heads, d).transpose(1, 2)
        q, k, v = split(attn.q(hidden)), split(attn.k(hidden)), split(attn.v(hidden))
        prefix_scores = q @ pk.transpose(-1, -2) / math.sqrt(d)
        token_scores = q @ k.transpose(-1, -2) / math.sqrt(d) + bias
        visible = F.pad(key_mask, (p, 0), value=True)[:, None, None, :]
        expected_probs = torch.cat([prefix_scores, token_scores], -1).masked_fill(~visible, float("-inf")).softmax(-1)
        torch.testing.assert_close(probs, expected_probs, atol=1e-6, rtol=0)
        context = (expected_probs @ torch.cat([pv, v], 2)).transpose(1, 2).reshape(bsz, n, heads * d)
        expected = attn.o(context)
    assert out.shape == (bsz, n, 32)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_mpnet_lora_and_adapters_sit_on_its_projections():
    lora = helpers.build("tiny-mpnet", "lora")
    assert {n.split(".lora_")[0].rsplit(".", 1)[1] for n, p in lora.named_parameters() if p.requires_grad
            and "lora_" in n} == {"q", "v"}
    adapter = helpers.build("tiny-mpnet", "adapter")
    names = {n.rsplit(".adapter.", 1)[0] for n, p in adapter.named_parameters() if ".adapter." in n}
    assert names == {f"backbone.encoder.layer.{i}.{where}" for i in range(4)
                     for where in ("attention.attn.o", "output.dense")}
