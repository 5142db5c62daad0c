"""GPT-2: a causal decoder (pooling on the last real token), its own module names, positions that count real tokens
only, the final LayerNorm; the `tiny-gpt2` config and the full-size random `gpt2-large-random`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sptbench.families.base import Family, register_family, transformers_class

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class GPT2Family(Family):
    def embeddings(self, backbone: nn.Module) -> nn.Module:
        return backbone.wte

    def layers(self, backbone: nn.Module) -> nn.ModuleList:
        return backbone.h

    def self_attention(self, layer: nn.Module) -> nn.Module:
        return layer.attn

    def attention_out_proj(self, layer: nn.Module) -> nn.Module:
        return layer.attn.c_proj

    def ffn_out_proj(self, layer: nn.Module) -> nn.Module:
        return layer.mlp.c_proj

    def num_heads(self, backbone: nn.Module) -> int:
        return backbone.config.n_head

    def hidden_size(self, backbone: nn.Module) -> int:
        return backbone.config.n_embd

    def embed(self, backbone, input_ids, inputs_embeds, token_type_ids, mask):
        # GPT2Model embeds token_type_ids through wte, which a classifier must not do: they are ignored here.
        if inputs_embeds is None:
            inputs_embeds = backbone.wte(input_ids)
        # positions count real tokens (and prompts) only: left padding gives the same positions as none, right padding
        # the stock ones (arange) on every real token
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)
        return backbone.drop(inputs_embeds + backbone.wpe(positions))

    def final(self, backbone, hidden):
        return backbone.ln_f(hidden)


register_family(
    GPT2Family("gpt2", causal=True, default_pooling="last", lora_targets=("c_attn",),
               key_value_targets=("c_attn",), lm_head_name="lm_head"),
    label="GPT-2",
    listing_order=50,
    tiny_configs={
        "tiny-gpt2": lambda v: transformers_class("GPT2Config")(
            vocab_size=v,
            n_positions=512,
            n_embd=32,
            n_layer=4,
            n_head=4,
            pad_token_id=0,
            bos_token_id=101,
            eos_token_id=102,
        ),
    },
    # GPT2-large's sizes and vocabulary, random weights (no download), with the in-process byte-level BPE tokenizer
    # (sptbench/models/bpe.py: <s> 0, <pad> 1, </s> 2): speed and memory checks at the paper's model size
    random_configs={
        "gpt2-large-random": lambda v: transformers_class("GPT2Config")(
            vocab_size=max(v, 50257),
            n_positions=1024,
            n_embd=1280,
            n_layer=36,
            n_head=20,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        ),
    },
    checkpoints={"gpt2-large": "gpt2-large-random", "openai-community/gpt2-large": "gpt2-large-random"},
)
