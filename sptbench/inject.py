"""The one injection layer every prompt-like method goes through.

Three ways in, written once for all families:
- input prompts: vectors prepended to the token embeddings before the embedding module (positions, LayerNorm
  and dropout applied to them as to tokens, exactly as peft's prompt tuning does);
- hidden-state prompts at layer l: the prompt hidden states that enter layer l (inserted, or replacing the prompt
  positions propagated from layer l-1), as in deep prompt tuning, LPT and SPT;
- key/value prefixes at layer l: extra keys and values seen by every query, no query rows of their own and no
  output positions (P-tuning v2).
Module wrappers (adapters) need no runtime hook; LoRA comes from peft.

Prompt positions always sit at the front of the sequence; pooling reads the token positions only.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.deberta_v2.modeling_deberta_v2 import scaled_size_sqrt

ATTN_IMPLEMENTATION = "sptbench_prefix"


class Injection(nn.Module):
    """Base class of a method's prompt-like pieces. Override what the method uses; the defaults inject nothing."""

    def input_prompt(self, batch_size: int) -> torch.Tensor | None:
        """(batch, m, hidden) vectors prepended to the token embeddings, or None."""
        return None

    def layer_prompt(
        self, layer: int, tokens: torch.Tensor, token_mask: torch.Tensor, prompt: torch.Tensor | None
    ) -> torch.Tensor | None:
        """The (batch, m, hidden) prompt hidden states entering `layer`, or None to keep `prompt` as it is.

        `tokens` are the token hidden states entering the layer, `token_mask` their (batch, n) padding mask and
        `prompt` the prompt hidden states propagated from the layer below (None where there are none yet).
        """
        return None

    def kv_prefix(self, layer: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(keys, values), each (batch, heads, p, head_dim), prepended to the attention keys of `layer`, or None."""
        return None

    def first_layer(self) -> int:
        """The lowest layer this injection touches (0 = the input); layers below it need no autograd."""
        return 0

    def export_state(self) -> dict[str, torch.Tensor] | None:
        """What save writes for this injection (None: its trainable parameters as they are)."""
        return None

    def import_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load what `export_state` wrote."""
        self.load_state_dict(state, strict=True)


def prefix_attention(module: nn.Module, query, key, value, attention_mask, **kwargs):
    """An `AttentionInterface` function: sdpa, with the module's current key/value prefix (if any) prepended."""
    prefix = getattr(module, "_sptbench_prefix", None)
    if prefix is not None:
        pk, pv = prefix
        key = torch.cat([pk.to(key.dtype), key], dim=2)
        value = torch.cat([pv.to(value.dtype), value], dim=2)
        if attention_mask is not None:  # the prefix is visible to every query (bool: True, additive: 0 = attend)
            visible = True if attention_mask.dtype == torch.bool else 0.0
            attention_mask = F.pad(attention_mask, (pk.shape[2], 0), value=visible)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(ATTN_IMPLEMENTATION, prefix_attention)
# The stock forward (e.g. peft's wrappers, comparisons in tests) builds its masks as for eager: additive floats.
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, eager_mask)


def _deberta_attention_forward(
    self,
    hidden_states,
    attention_mask,
    output_attentions=False,
    query_states=None,
    relative_pos=None,
    rel_embeddings=None,
):
    """DisentangledSelfAttention.forward with a key/value prefix.

    DeBERTa's attention does not go through `AttentionInterface`. Prefix keys have no position, so they get the
    content-to-content score only: their content-to-position and position-to-content terms are zero.
    """
    prefix = getattr(self, "_sptbench_prefix", None)
    if prefix is None:
        return self._sptbench_original_forward(
            hidden_states, attention_mask, output_attentions, query_states, relative_pos, rel_embeddings
        )
    if query_states is None:
        query_states = hidden_states
    heads = self.num_attention_heads
    q = self.transpose_for_scores(self.query_proj(query_states), heads)  # (batch*heads, n, d)
    k = self.transpose_for_scores(self.key_proj(hidden_states), heads)
    v = self.transpose_for_scores(self.value_proj(hidden_states), heads)
    pk, pv = (t.reshape(-1, t.shape[2], t.shape[3]).to(q.dtype) for t in prefix)  # (batch*heads, p, d)
    p = pk.shape[1]
    scale_factor = 1 + ("c2p" in self.pos_att_type) + ("p2c" in self.pos_att_type)
    scale = scaled_size_sqrt(q, scale_factor).to(q.dtype)
    scores = torch.bmm(q, torch.cat([pk, k], 1).transpose(-1, -2) / scale)
    if self.relative_attention:
        rel = self.disentangled_attention_bias(q, k, relative_pos, self.pos_dropout(rel_embeddings), scale_factor)
        scores = scores + F.pad(rel, (p, 0))
    scores = scores.view(-1, heads, scores.size(-2), scores.size(-1))
    mask = F.pad(attention_mask.bool(), (p, 0), value=True)
    scores = scores.masked_fill(~mask, torch.finfo(q.dtype).min)
    probs = self.dropout(F.softmax(scores, dim=-1))
    context = torch.bmm(probs.view(-1, probs.size(-2), probs.size(-1)), torch.cat([pv, v], 1))
    context = context.view(-1, heads, context.size(-2), context.size(-1)).permute(0, 2, 1, 3).contiguous()
    context = context.view(*context.shape[:-2], -1)
    return (context, probs if output_attentions else None)


def enable_prefixes(backbone: nn.Module, family) -> None:
    """Route every layer's attention through the prefix-aware path (idempotent). Without prefixes it is stock."""
    if family.install_prefix_path(backbone):  # a family whose attention bypasses AttentionInterface owns its path
        return
    if family.name == "deberta-v2":
        for layer in family.layers(backbone):
            attn = family.self_attention(layer)
            if not hasattr(attn, "_sptbench_original_forward"):
                attn._sptbench_original_forward = attn.forward
                attn.forward = types.MethodType(_deberta_attention_forward, attn)
    else:
        backbone.config._attn_implementation = ATTN_IMPLEMENTATION
        for module in backbone.modules():
            if getattr(module, "config", None) is not None and module.config is not backbone.config:
                module.config._attn_implementation = ATTN_IMPLEMENTATION
