"""Qwen2: Llama's layout (RoPE, grouped-query attention, RMSNorm, SwiGLU, the same module names) with bias terms on
the query, key and value projections; so the Llama family runs it unchanged (sptbench/families/llama.py: RoPE and
prompts, prefixes through transformers' attention interface), registered for `model_type: qwen2`; the `tiny-qwen2`
config.

Sliding-window attention (`use_sliding_window: true`, off in the released Qwen2 and Qwen2.5 configs) is refused:
sptbench builds full causal masks, so such a config would silently attend further than its stock model.
"""

from __future__ import annotations

from dataclasses import dataclass

from sptbench.core.errors import SptbenchError
from sptbench.families.base import TINY_SIZES, register_family, transformers_class
from sptbench.families.llama import LlamaFamily


@dataclass(frozen=True)
class Qwen2Family(LlamaFamily):
    def check_config(self, config) -> None:
        windowed = getattr(config, "use_sliding_window", False) or "sliding_attention" in (
            getattr(config, "layer_types", None) or ())
        if windowed:
            raise SptbenchError("Qwen2 configs with sliding-window attention (use_sliding_window: true) are not "
                                "supported: sptbench builds full causal masks")


register_family(
    Qwen2Family("qwen2", causal=True, default_pooling="last", lora_targets=("q_proj", "v_proj"),
                key_value_targets=("k_proj", "v_proj"), lm_head_name="lm_head"),
    label="Qwen2",
    listing_order=65,
    tiny_configs={
        "tiny-qwen2": lambda v: transformers_class("Qwen2Config")(
            vocab_size=v,
            **TINY_SIZES,
            num_key_value_heads=2,  # grouped-query attention, as every released Qwen2
            max_position_embeddings=512,
            tie_word_embeddings=True,  # as Qwen2-0.5B and Qwen2.5-0.5B
            pad_token_id=0,
            bos_token_id=101,
            eos_token_id=102,
        ),
    },
)
