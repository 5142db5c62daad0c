"""The Family (per backbone architecture: where the embeddings, layers, attention and FFN output live, and how to
run one layer), the mechanisms families share, and family discovery.

Methods ask the Family, never `isinstance` a model class. `Classifier` runs the backbone layer by layer through
these descriptions, which is what lets prompts enter (or change length) between layers and lets frozen layers
below the first trainable one run without autograd.

A new family is one file: `sptbench/families/<arch>.py` holds its Family, its quirks (e.g. a prefix-aware attention
forward) and its tiny config, and registers them with one `register_family` call. Discovery imports every module of
this package (`load_families`); a module that fails to import is a loud `SptbenchError` naming it, never a family
that silently disappears. Family modules import torch and transformers inside functions only: discovery (and with
it `sptbench list backbones`, `--help`) loads neither.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sptbench.core.errors import SptbenchError, describe

if TYPE_CHECKING:  # torch loads with the first backbone, not with discovery
    import torch
    from torch import nn

FAMILY_PACKAGE = "sptbench.families"  # every module of this package is imported by `load_families`
# Tiny randomly initialised configs: 4 layers so that layer-selective methods have layers to choose from.
TINY_SIZES = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64)


def transformers_class(name: str):
    """A class of `transformers` by name, imported on first use (for the tiny configs: discovery loads none)."""
    import transformers

    return getattr(transformers, name)


@dataclass(frozen=True)
class Family:
    name: str
    causal: bool
    default_pooling: str  # cls | mean | last
    lora_targets: tuple[str, ...]  # peft target module names for the query and value projections
    # the key and value projections inside a layer (ia3 scales their outputs); a fused qkv projection is named alone
    key_value_targets: tuple[str, ...] = ()
    lm_head_name: str = "cls"  # the LM head's attribute on the *ForMaskedLM / *LMHeadModel (the prompt head)
    attn_implementation: str = "sdpa"  # what transformers loads the backbone with (eager: its own attention only)

    # -- where things are ---------------------------------------------------------------------------------------
    def embeddings(self, backbone: nn.Module) -> nn.Module:
        return backbone.embeddings

    def word_embeddings(self, backbone: nn.Module) -> nn.Embedding:
        return backbone.get_input_embeddings()

    def layers(self, backbone: nn.Module) -> nn.ModuleList:
        return backbone.encoder.layer

    def self_attention(self, layer: nn.Module) -> nn.Module:
        """The module that computes attention from queries, keys and values (prefixes are attached here)."""
        return layer.attention.self

    def attention_out_proj(self, layer: nn.Module) -> nn.Module:
        """The attention output projection (Houlsby adapters go right after it, before the residual)."""
        return layer.attention.output.dense

    def ffn_out_proj(self, layer: nn.Module) -> nn.Module:
        """The FFN output projection (adapters go right after it, before the residual)."""
        return layer.output.dense

    def num_heads(self, backbone: nn.Module) -> int:
        return backbone.config.num_attention_heads

    def num_kv_heads(self, backbone: nn.Module) -> int:
        """Key/value heads (fewer than `num_heads` under grouped-query attention): the heads a key prefix has."""
        return self.num_heads(backbone)

    def hidden_size(self, backbone: nn.Module) -> int:
        return backbone.config.hidden_size

    # -- how to run ---------------------------------------------------------------------------------------------
    def embed(
        self,
        backbone: nn.Module,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """The embedding module's output, exactly as the stock model computes it."""
        return self.embeddings(backbone)(
            input_ids=input_ids, inputs_embeds=inputs_embeds, token_type_ids=token_type_ids
        )

    def layer_mask(self, key_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        """The attention mask a layer takes, from a (batch, keys) bool mask: additive, (batch, 1, queries|1, keys);
        None where every key is real (encoders)."""
        import torch

        bsz, k = key_mask.shape
        if (not self.causal and key_mask.device.type == "cpu" and not torch.compiler.is_compiling()
                and bool(key_mask.all())):
            return None  # nothing to mask: sdpa's unmasked kernel (checked eagerly on the CPU only: no GPU host sync)
        allowed = key_mask[:, None, None, :]
        if self.causal:
            allowed = allowed & torch.ones(k, k, dtype=torch.bool, device=key_mask.device).tril()[None, None]
        return torch.zeros(allowed.shape, dtype=dtype, device=key_mask.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )

    def run_layer(
        self, backbone: nn.Module, layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        return layer(hidden, attention_mask=mask)

    def final(self, backbone: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Anything the stock model applies after the last layer (GPT-2's final LayerNorm)."""
        return hidden

    # -- the pretrained LM head (the prompt head reads through it) ----------------------------------------------
    def lm_head(self, lm_model: nn.Module) -> nn.Module:
        """The LM head module of a masked LM (encoders) or causal LM (GPT-2) built by transformers."""
        return getattr(lm_model, self.lm_head_name)

    def lm_logits(self, backbone: nn.Module, head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of final hidden states (after `final`), as the stock LM model computes them."""
        return head(hidden)

    def word_logits(self, backbone: nn.Module, head: nn.Module, hidden: torch.Tensor, word_ids: torch.Tensor
                    ) -> torch.Tensor:
        """The logits of `word_ids` only: a plain linear LM head (GPT-2, Llama: the tied embeddings) is sliced to those
        rows, so the vocabulary is never computed; other heads (encoders' transform + decoder) compute it, then pick."""
        from torch import nn as torch_nn
        from torch.nn import functional as F

        if type(head) is torch_nn.Linear and type(self).lm_logits is Family.lm_logits:
            return F.linear(hidden, head.weight[word_ids], None if head.bias is None else head.bias[word_ids])
        return self.lm_logits(backbone, head, hidden)[..., word_ids]

    def check_config(self, config) -> None:
        """Refuse (one-line SptbenchError) a config of this model type that the family cannot run."""

    def install_prefix_path(self, backbone: nn.Module) -> bool:
        """Give the attention a family-specific key/value prefix path (idempotent) and return True; False: the
        attention goes through transformers' `AttentionInterface`, where sptbench/models/inject.py adds prefixes."""
        return False


def patch_attention(family: Family, backbone: nn.Module, forward) -> None:
    """Replace every layer's attention forward by `forward` (a prefix-aware version of it), once; the stock forward
    stays reachable as `_sptbench_original_forward` (what `forward` calls when there is no prefix)."""
    for layer in family.layers(backbone):
        attn = family.self_attention(layer)
        if not hasattr(attn, "_sptbench_original_forward"):
            attn._sptbench_original_forward = attn.forward
            attn.forward = types.MethodType(forward, attn)


ConfigFactory = Callable[[int], Any]  # vocabulary size -> a transformers config


@dataclass(frozen=True)
class FamilyEntry:
    """A registered family: the Family (its name is the `config.model_type` it serves) and what listings show."""

    family: Family
    label: str  # the architecture as users read it ("DeBERTa-v2"): `sptbench list backbones`, messages
    listing_order: int  # where the family comes in listings (lower first)
    tiny_configs: Mapping[str, ConfigFactory] = field(default_factory=dict)  # `--model tiny-<x>`: in-process, seeded
    random_configs: Mapping[str, ConfigFactory] = field(default_factory=dict)  # full-size, random (`*-random`)
    # hub id -> the random config with its sizes: what planning (causal or not, layers, size for the ETA) knows of
    # that checkpoint without reading the hub
    checkpoints: Mapping[str, str] = field(default_factory=dict)


FAMILIES: dict[str, FamilyEntry] = {}  # model_type -> entry, filled by `register_family`
_discovered: tuple | None = None  # (package path, sys.path) of the last discovery


def register_family(
    family: Family,
    *,
    label: str,
    listing_order: int,
    tiny_configs: Mapping[str, ConfigFactory] | None = None,
    random_configs: Mapping[str, ConfigFactory] | None = None,
    checkpoints: Mapping[str, str] | None = None,
) -> None:
    """Register `family` for `config.model_type == family.name`, with its tiny (and full-size random) configs by
    backbone name, and the hub checkpoints a random config mirrors (`checkpoints`: hub id -> random config name).
    Once: a second family for the same model type, or a config name two families claim, is a bug."""
    old = FAMILIES.get(family.name)
    if old is not None and old.family is not family:
        raise RuntimeError(f"family '{family.name}' is registered twice")
    for name in (*(tiny_configs or {}), *(random_configs or {})):
        for other in FAMILIES.values():
            if other.family is not family and (name in other.tiny_configs or name in other.random_configs):
                raise RuntimeError(
                    f"backbone '{name}' is declared by families '{other.family.name}' and '{family.name}'"
                )
    if set((checkpoints or {}).values()) - set(random_configs or {}):
        raise RuntimeError(f"family '{family.name}': checkpoints must name its own random configs")
    FAMILIES[family.name] = FamilyEntry(family, label, listing_order, dict(tiny_configs or {}),
                                        dict(random_configs or {}), dict(checkpoints or {}))


def family_modules() -> list[str]:
    """Every module of the family package, by full name (this one, which registers nothing, included)."""
    pkg = importlib.import_module(FAMILY_PACKAGE)
    return [f"{FAMILY_PACKAGE}.{info.name}" for info in pkgutil.iter_modules(pkg.__path__)]


def load_families(refresh: bool = False) -> dict[str, FamilyEntry]:
    """Discover every family (import every module of the family package) and return the registry in listing order.
    Discovery runs once per package path and import path (`refresh`: again)."""
    global _discovered
    key = (tuple(importlib.import_module(FAMILY_PACKAGE).__path__), tuple(sys.path))
    if refresh or _discovered != key:
        for module in family_modules():
            try:
                importlib.import_module(module)
            except Exception as e:
                raise SptbenchError(f"family module '{module}' failed to import: {describe(e)}") from e
        _discovered = key
    return dict(sorted(FAMILIES.items(), key=lambda item: (item[1].listing_order, item[0])))


def family_for(config) -> Family:
    """The Family of a transformers config, by `model_type`."""
    families = load_families()
    model_type = getattr(config, "model_type", "?")
    if model_type not in families:
        # the checkpoint's architecture, not a typo: list what is supported, suggest nothing
        raise SptbenchError(f"unsupported backbone family '{model_type}' (config.model_type); supported model types: "
                            f"{', '.join(sorted(families))}")
    family = families[model_type].family
    family.check_config(config)
    return family
