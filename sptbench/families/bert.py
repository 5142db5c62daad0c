"""BERT (and MiniLM, a BERT): the Family's defaults as they are, and the `tiny-bert` config."""

from __future__ import annotations

from sptbench.families.base import TINY_SIZES, Family, register_family, transformers_class

register_family(
    Family("bert", causal=False, default_pooling="cls", lora_targets=("query", "value"),
           key_value_targets=("key", "value")),
    label="BERT",
    listing_order=10,
    tiny_configs={
        "tiny-bert": lambda v: transformers_class("BertConfig")(
            vocab_size=v, max_position_embeddings=512, **TINY_SIZES
        ),
    },
)
