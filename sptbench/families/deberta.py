"""DeBERTa (v1, `model_type: deberta`, the paper's DeBERTa-large): DeBERTa-v2's layout and quirks (boolean layer
mask, relative positions per layer, the LM head by `legacy`, `sptbench/families/deberta_v2.py`) with v1's attention:
one fused `in_proj` for queries, keys and values (LoRA's target, as GPT-2's `c_attn`), separate query and value
biases, optional talking heads. Its own key/value prefix path, since v1's attention bypasses `AttentionInterface`
too. The `tiny-deberta-v1` config and the full-size random `deberta-large-random`."""

from __future__ import annotations

from dataclasses import dataclass

from sptbench.core.errors import SptbenchError
from sptbench.families.base import TINY_SIZES, patch_attention, register_family, transformers_class
from sptbench.families.deberta_v2 import DebertaV2Family


def _deberta_v1_attention_forward(
    self,
    hidden_states,
    attention_mask,
    output_attentions=False,
    query_states=None,
    relative_pos=None,
    rel_embeddings=None,
):
    """DisentangledSelfAttention.forward (v1) with a key/value prefix (batch, heads, p, head_dim).

    Prefix keys have no position: they get the content-to-content score only (their content-to-position and
    position-to-content terms are zero), scaled as every score by sqrt(d x (1 + relative terms)).
    """
    import torch
    import torch.nn.functional as F
    from transformers.models.deberta.modeling_deberta import scaled_size_sqrt

    prefix = getattr(self, "_sptbench_prefix", None)
    if prefix is None:
        return self._sptbench_original_forward(
            hidden_states, attention_mask, output_attentions, query_states, relative_pos, rel_embeddings
        )
    if query_states is not None:  # DeBERTa's z_steps (enhanced mask decoder); the Classifier never passes them
        raise SptbenchError("DeBERTa key/value prefixes do not support separate query states")
    q, k, v = self.transpose_for_scores(self.in_proj(hidden_states)).chunk(3, dim=-1)  # (batch, heads, n, d)
    q = q + self.transpose_for_scores(self.q_bias[None, None, :])
    v = v + self.transpose_for_scores(self.v_bias[None, None, :])
    pk, pv = (t.to(q.dtype) for t in prefix)
    p = pk.shape[2]
    scale_factor = 1 + len(self.pos_att_type)
    q = q / scaled_size_sqrt(q, scale_factor).to(dtype=q.dtype)
    scores = torch.matmul(q, torch.cat([pk, k], 2).transpose(-1, -2))
    if self.relative_attention and rel_embeddings is not None and relative_pos is not None:
        rel = self.disentangled_att_bias(q, k, relative_pos, self.pos_dropout(rel_embeddings), scale_factor)
        scores = scores + F.pad(rel, (p, 0))
    if self.head_logits_proj is not None:
        scores = self.head_logits_proj(scores.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    mask = F.pad(attention_mask.bool(), (p, 0), value=True)
    scores = scores.masked_fill(~mask, torch.finfo(q.dtype).min)
    probs = self.dropout(F.softmax(scores, dim=-1))
    if self.head_weights_proj is not None:
        probs = self.head_weights_proj(probs.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    context = torch.matmul(probs, torch.cat([pv, v], 2)).permute(0, 2, 1, 3).contiguous()
    context = context.view(*context.shape[:-2], -1)
    return (context, probs if output_attentions else None)


@dataclass(frozen=True)
class DebertaFamily(DebertaV2Family):
    def check_config(self, config):
        """v1 has no convolution layer: nothing to refuse."""

    def install_prefix_path(self, backbone):
        patch_attention(self, backbone, _deberta_v1_attention_forward)
        return True


def _deberta_config(vocab_size: int, **sizes):
    """A DeBERTa (v1) config as DeBERTa-base/large are built: relative attention with both disentangled terms, no
    absolute positions in the input, no token types; pad id 0 (the MiniLM tokenizer's) unless given."""
    sizes.setdefault("pad_token_id", 0)
    return transformers_class("DebertaConfig")(
        vocab_size=vocab_size,
        max_position_embeddings=512,
        relative_attention=True,
        max_relative_positions=-1,
        pos_att_type=["c2p", "p2c"],
        position_biased_input=False,
        type_vocab_size=0,
        **sizes,
    )


register_family(
    DebertaFamily("deberta", causal=False, default_pooling="cls", lora_targets=("in_proj",),
                  attn_implementation="eager"),
    label="DeBERTa",
    listing_order=25,
    tiny_configs={"tiny-deberta-v1": lambda v: _deberta_config(v, **TINY_SIZES)},
    # DeBERTa-large's sizes and vocabulary (microsoft/deberta-large), random weights: speed and memory checks
    random_configs={
        "deberta-large-random": lambda v: _deberta_config(
            max(v, 50265), hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
            layer_norm_eps=1e-7, pad_token_id=1,
        ),
    },
    checkpoints={"microsoft/deberta-large": "deberta-large-random"},
)
