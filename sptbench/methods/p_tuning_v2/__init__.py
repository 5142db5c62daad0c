"""P-tuning v2 (Liu et al., 2022): trainable key/value prefixes of length p at every layer.

Each layer's attention sees p extra keys and values before the tokens' own; the prefixes have no query rows
and no output positions. With `reparam`, the prefixes are computed by an MLP from p embeddings (the prefix-tuning
reparameterization of the official code); saving stores the computed prefixes, never the MLP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sptbench.core.errors import SptbenchError
from sptbench.methods.registry import register_method

if TYPE_CHECKING:  # torch loads when a model is built, not when methods are listed (the injection: nn/)
    from sptbench.models.classifier import Classifier


@dataclass
class PTuningV2Config:
    """P-tuning v2."""

    prefix_len: int = field(default=20, metadata={"size": True,
        "help": "p, the number of prefix keys/values per layer"})
    reparam: bool = field(default=False, metadata={
        "help": "compute the prefixes with an MLP (embedding(p, hidden) -> Linear -> tanh -> Linear to "
                "layers*2*hidden), as the official code's prefix_projection; off, as in its GLUE/SuperGLUE runs"})
    reparam_hidden: int = field(default=512, metadata={"size": True,
        "help": "the reparam MLP's hidden size (official default 512)"})
    dropout: float = field(default=0.1, metadata={
        "help": "dropout on the prefixes, a fresh mask per example (the official code uses the backbone's "
                "hidden_dropout_prob, 0.1 for BERT/RoBERTa)"})
    init_std: float = field(default=1.0, metadata={
        "help": "std of the initial prefixes (or of the MLP input embeddings with reparam); the official code uses "
                "torch.nn.Embedding's default, N(0, 1)"})

    def validate(self) -> None:
        if self.prefix_len < 1:
            raise SptbenchError(f"prefix_len must be >= 1, got {self.prefix_len}")
        if self.reparam_hidden < 1:
            raise SptbenchError(f"reparam_hidden must be >= 1, got {self.reparam_hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise SptbenchError(f"dropout must be in [0, 1), got {self.dropout}")


def apply(model: Classifier, cfg: PTuningV2Config) -> None:
    from sptbench.methods.p_tuning_v2.nn import KVPrefix

    backbone, family = model.backbone, model.family
    num_heads, hidden = family.num_heads(backbone), family.hidden_size(backbone)
    if hidden % num_heads:
        raise SptbenchError(f"hidden size {hidden} is not a multiple of the {num_heads} attention heads")
    # prefixes have the keys' heads: fewer than the queries' under grouped-query attention (Llama), else all
    kv_heads = family.num_kv_heads(backbone)
    model.add_injection(KVPrefix(len(model.layers), kv_heads, kv_heads * (hidden // num_heads), cfg))


register_method(
    "p_tuning_v2",
    PTuningV2Config,
    apply,
    "P-tuning v2 (Liu et al. 2022): trainable key/value prefixes at every layer, frozen backbone",
    default_lr=1e-2,
)
