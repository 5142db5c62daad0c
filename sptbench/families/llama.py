"""Llama (and the decoders built like it): a causal decoder with rotary positions (RoPE), grouped-query attention,
RMSNorm and SwiGLU; pooling on the last real token; the `tiny-llama` config.

RoPE and prompts: positions count real tokens and prompts (as GPT-2's do here), so prompts at the front take
positions 0..m-1 and the tokens m..m+n-1 in every layer that has them. RoPE is relative, so that shift leaves the
token-token attention of the layers below a late prompt unchanged; key/value prefixes (P-tuning v2) are added after
the rotation and carry none, as peft's prefix keys do. Left and right padding give the same positions to the same
real tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sptbench.families.base import TINY_SIZES, Family, register_family, transformers_class

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class LlamaFamily(Family):
    def embeddings(self, backbone: nn.Module) -> nn.Module:
        return backbone.embed_tokens

    def layers(self, backbone: nn.Module) -> nn.ModuleList:
        return backbone.layers

    def self_attention(self, layer: nn.Module) -> nn.Module:
        return layer.self_attn

    def attention_out_proj(self, layer: nn.Module) -> nn.Module:
        return layer.self_attn.o_proj

    def ffn_out_proj(self, layer: nn.Module) -> nn.Module:
        return layer.mlp.down_proj

    def num_kv_heads(self, backbone: nn.Module) -> int:
        return backbone.config.num_key_value_heads

    def embed(self, backbone, input_ids, inputs_embeds, token_type_ids, mask):
        return backbone.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds

    def run_layer(self, backbone, layer, hidden, mask):
        # the real keys are those the last query may see (causal: every real key); positions count them
        real = mask[:, 0, -1, :] == 0
        positions = (real.long().cumsum(1) - 1).clamp(min=0)
        cos_sin = self.rotary(backbone, layer, hidden, positions)
        return layer(hidden, attention_mask=mask, position_ids=positions, position_embeddings=cos_sin)

    def rotary(self, backbone, layer, hidden: torch.Tensor, positions: torch.Tensor):
        """The (cos, sin) RoPE tables `layer` takes for these positions (one rotary embedding for every layer)."""
        return backbone.rotary_emb(hidden, position_ids=positions)

    def final(self, backbone, hidden: torch.Tensor) -> torch.Tensor:
        return backbone.norm(hidden)


register_family(
    LlamaFamily("llama", causal=True, default_pooling="last", lora_targets=("q_proj", "v_proj"),
                key_value_targets=("k_proj", "v_proj"),
                lm_head_name="lm_head"),
    label="Llama",
    listing_order=60,
    tiny_configs={
        "tiny-llama": lambda v: transformers_class("LlamaConfig")(
            vocab_size=v,
            **TINY_SIZES,
            num_key_value_heads=2,  # grouped-query attention, as SmolLM2 (9 heads, 3 key/value heads)
            max_position_embeddings=512,
            tie_word_embeddings=True,
            pad_token_id=0,
            bos_token_id=101,
            eos_token_id=102,
        ),
    },
)
