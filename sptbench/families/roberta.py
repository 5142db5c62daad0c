"""RoBERTa: BERT's layout with the LM head at `lm_head`; the `tiny-roberta` config and the full-size random
`roberta-large-random`."""

from __future__ import annotations

from sptbench.families.base import TINY_SIZES, Family, register_family, transformers_class

register_family(
    Family("roberta", causal=False, default_pooling="cls", lora_targets=("query", "value"),
           key_value_targets=("key", "value"), lm_head_name="lm_head"),
    label="RoBERTa",
    listing_order=20,
    tiny_configs={
        "tiny-roberta": lambda v: transformers_class("RobertaConfig")(
            vocab_size=v, max_position_embeddings=514, pad_token_id=0, **TINY_SIZES
        ),
    },
    # Full-size random configs (no download): speed and memory checks at the paper's model size
    # (scripts/gpu_check.sh). RoBERTa-large's sizes and vocabulary; its tokenizer is the in-process byte-level BPE
    # (sptbench/models/bpe.py), whose ids all fall inside that vocabulary.
    random_configs={
        "roberta-large-random": lambda v: transformers_class("RobertaConfig")(
            vocab_size=max(v, 50265),
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
            max_position_embeddings=514,
            type_vocab_size=1,
            layer_norm_eps=1e-5,
            pad_token_id=1,  # <pad>, as RoBERTa's (and the in-process BPE tokenizer's)
        ),
    },
    checkpoints={"roberta-large": "roberta-large-random", "FacebookAI/roberta-large": "roberta-large-random"},
)
