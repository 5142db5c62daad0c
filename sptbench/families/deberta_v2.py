"""DeBERTa-v2: disentangled attention that bypasses `AttentionInterface` (so its own key/value prefix path), a
boolean layer mask, relative positions per layer, the LM head by `legacy`; the `tiny-deberta` config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sptbench.core.errors import SptbenchError
from sptbench.families.base import TINY_SIZES, Family, patch_attention, register_family, transformers_class

if TYPE_CHECKING:
    import torch


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
    import torch
    import torch.nn.functional as F
    from transformers.models.deberta_v2.modeling_deberta_v2 import scaled_size_sqrt

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


@dataclass(frozen=True)
class DebertaV2Family(Family):
    def embed(self, backbone, input_ids, inputs_embeds, token_type_ids, mask):
        import torch

        if token_type_ids is None:
            shape = (input_ids if input_ids is not None else inputs_embeds[..., 0]).shape
            token_type_ids = torch.zeros(shape, dtype=torch.long, device=mask.device)
        return backbone.embeddings(
            input_ids=input_ids, inputs_embeds=inputs_embeds, token_type_ids=token_type_ids, mask=mask.long()
        )

    def layer_mask(self, key_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # DisentangledSelfAttention takes a boolean mask, True = may attend (broadcast over heads and queries).
        return key_mask[:, None, None, :]

    def lm_head(self, lm_model):
        return lm_model.cls if lm_model.config.legacy else lm_model.lm_predictions

    def lm_logits(self, backbone, head, hidden):
        # the non-legacy head takes the word embeddings as its decoder (DebertaV2ForMaskedLM.forward)
        return head(hidden) if backbone.config.legacy else head(hidden, backbone.embeddings.word_embeddings)

    def run_layer(self, backbone, layer, hidden, mask):
        encoder = backbone.encoder
        relative_pos = encoder.get_rel_pos(hidden)
        out, _ = layer(hidden, mask, relative_pos=relative_pos, rel_embeddings=encoder.get_rel_embedding())
        return out

    def check_config(self, config):
        if getattr(config, "conv_kernel_size", 0) > 0:
            raise SptbenchError("DeBERTa-v2 configs with a convolution layer (conv_kernel_size > 0) are not supported")

    def install_prefix_path(self, backbone):
        patch_attention(self, backbone, _deberta_attention_forward)
        return True


register_family(
    DebertaV2Family(
        "deberta-v2", causal=False, default_pooling="cls", lora_targets=("query_proj", "value_proj"),
        key_value_targets=("key_proj", "value_proj"),
        attn_implementation="eager",
    ),
    label="DeBERTa-v2",
    listing_order=30,
    tiny_configs={
        "tiny-deberta": lambda v: transformers_class("DebertaV2Config")(
            vocab_size=v,
            max_position_embeddings=512,
            relative_attention=True,
            position_buckets=32,
            max_relative_positions=-1,
            pos_att_type=["p2c", "c2p"],
            position_biased_input=False,
            pad_token_id=0,
            **TINY_SIZES,
        ),
    },
)
