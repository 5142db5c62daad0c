"""MPNet: BERT-like layers whose attention adds a relative position bias (its own key/value prefix path, the bias
per layer); the `tiny-mpnet` config."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sptbench.families.base import TINY_SIZES, Family, patch_attention, register_family, transformers_class

if TYPE_CHECKING:
    import torch
    from torch import nn


def _mpnet_attention_forward(self, hidden_states, attention_mask=None, position_bias=None, output_attentions=False,
                             **kwargs):
    """MPNetSelfAttention.forward with a key/value prefix (`_sptbench_prefix`, each (batch, heads, p, head_dim)).

    Prefix keys have no position: they get the content score q.k / sqrt(d) only, no relative position bias (zero
    bias columns), and are visible to every query. Without a prefix this is the stock forward.
    """
    import torch
    import torch.nn.functional as F

    prefix = getattr(self, "_sptbench_prefix", None)
    if prefix is None:
        return self._sptbench_original_forward(hidden_states, attention_mask, position_bias, output_attentions)
    shape = (*hidden_states.shape[:-1], -1, self.attention_head_size)
    q, k, v = (proj(hidden_states).view(shape).transpose(1, 2) for proj in (self.q, self.k, self.v))
    pk, pv = (t.to(k.dtype) for t in prefix)
    p = pk.shape[2]
    scores = q @ torch.cat([pk, k], 2).transpose(-1, -2) / math.sqrt(self.attention_head_size)
    if position_bias is not None:
        scores = scores + F.pad(position_bias, (p, 0))
    if attention_mask is not None:  # additive, (batch, 1, 1|queries, keys): 0 = attend, as for every prefix key
        scores = scores + F.pad(attention_mask, (p, 0))
    probs = self.dropout(F.softmax(scores, dim=-1))
    context = (probs @ torch.cat([pv, v], 2)).transpose(1, 2).reshape(*hidden_states.shape[:-1], self.all_head_size)
    out = self.o(context)
    return (out, probs) if output_attentions else (out,)


@dataclass(frozen=True)
class MPNetFamily(Family):
    """MPNet: BERT-like post-LN layers whose attention adds a relative position bias (one scalar per head and
    bucketed distance), which `MPNetEncoder` computes once per forward and hands to every layer.

    Here each layer gets the bias for the sequence it runs on, prompt positions included: prompts sit at the
    front and are biased by their distance like tokens there (as they are when peft's prompt tuning feeds them
    to the stock model as input embeddings); between tokens the bias is the stock one, since it depends on
    distance only. Key/value prefixes have no position and get no bias (`_mpnet_attention_forward`).
    """

    def self_attention(self, layer: nn.Module) -> nn.Module:
        return layer.attention.attn

    def attention_out_proj(self, layer: nn.Module) -> nn.Module:
        return layer.attention.attn.o

    def position_bias(self, backbone: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """The stock relative position bias for `hidden`'s length: (1, heads, n, n), broadcast over the batch."""
        return backbone.encoder.compute_position_bias(hidden[:1])

    def run_layer(self, backbone, layer, hidden, mask):
        return layer(hidden, mask, self.position_bias(backbone, hidden))[0]

    def install_prefix_path(self, backbone):
        patch_attention(self, backbone, _mpnet_attention_forward)
        return True


register_family(
    MPNetFamily("mpnet", causal=False, default_pooling="cls", lora_targets=("q", "v"), key_value_targets=("k", "v"),
                attn_implementation="eager", lm_head_name="lm_head"),
    label="MPNet",
    listing_order=40,
    tiny_configs={
        "tiny-mpnet": lambda v: transformers_class("MPNetConfig")(
            vocab_size=v, max_position_embeddings=514, **TINY_SIZES
        ),
    },
)
