"""Gemma 3 (text): Llama's decoder with four RMSNorms per layer, query/key norms, scaled input embeddings and two
kinds of layers, local (sliding-window attention, its own RoPE base) and global (full attention); `model_type:
gemma3_text`; the `tiny-gemma3` config.

Positions and prompts as Llama (sptbench/families/llama.py): positions count real tokens and prompts; each layer gets
the rotary embedding of its kind. Local layers attend within `sliding_window` keys; sptbench builds full causal masks,
so an input (with its prompts) longer than the window is refused in one line rather than attended differently
(gemma-3-270m's window, 512, holds every packaged task's inputs: max_length 256 at most, plus prompts). The embedding
module multiplies by sqrt(hidden) in its forward, so prompts initialised from the vocabulary are drawn through it
(sptbench/methods/prompt_tuning `initial_prompt`). Configs with logit soft-capping or bidirectional attention are
refused: sptbench's attention and LM-head paths apply neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sptbench.core.errors import SptbenchError
from sptbench.families.base import TINY_SIZES, register_family, transformers_class
from sptbench.families.llama import LlamaFamily

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class Gemma3Family(LlamaFamily):
    def check_config(self, config) -> None:
        for name in ("final_logit_softcapping", "attn_logit_softcapping"):
            if getattr(config, name, None) is not None:
                raise SptbenchError(f"Gemma 3 configs with {name} are not supported: sptbench's attention and LM head "
                                    "apply no soft-capping")
        if getattr(config, "use_bidirectional_attention", False):
            raise SptbenchError("Gemma 3 configs with bidirectional attention (EmbeddingGemma) are not supported")

    def run_layer(self, backbone: nn.Module, layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor
                  ) -> torch.Tensor:
        config = backbone.config
        if _kind(backbone, layer) == "sliding_attention" and hidden.shape[1] > config.sliding_window:
            raise SptbenchError(f"an input of {hidden.shape[1]} positions (tokens and prompts) exceeds Gemma 3's "
                                f"sliding window of {config.sliding_window}, which sptbench does not apply: shorten "
                                "the inputs (the task's max_length) or the prompts")
        return super().run_layer(backbone, layer, hidden, mask)

    def rotary(self, backbone: nn.Module, layer: nn.Module, hidden: torch.Tensor, positions: torch.Tensor):
        """Each kind of layer has its own RoPE base (local 10,000, global 1,000,000 in the released models)."""
        return backbone.rotary_emb(hidden, positions, _kind(backbone, layer))


def _kind(backbone: nn.Module, layer: nn.Module) -> str:
    """`sliding_attention` (local) or `full_attention` (global)."""
    return backbone.config.layer_types[layer.layer_idx]


register_family(
    Gemma3Family("gemma3_text", causal=True, default_pooling="last", lora_targets=("q_proj", "v_proj"),
                 key_value_targets=("k_proj", "v_proj"), lm_head_name="lm_head"),
    label="Gemma 3",
    listing_order=70,
    tiny_configs={
        "tiny-gemma3": lambda v: transformers_class("Gemma3TextConfig")(
            vocab_size=v,
            **TINY_SIZES,
            num_key_value_heads=2,
            head_dim=8,
            # both kinds of layer (the released models: five local, then one global), each with its RoPE base
            layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
            sliding_window=512,
            max_position_embeddings=512,
            tie_word_embeddings=True,
            pad_token_id=0,
            bos_token_id=101,
            eos_token_id=102,
        ),
    },
)
