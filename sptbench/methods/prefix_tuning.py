"""Prefix tuning (Li & Liang, 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation"): key/value prefixes
at every layer, produced in training by an MLP reparameterisation and folded into plain prefixes for storage and
inference.

P = MLP(P'), P' ∈ R^{p×H} trainable, MLP = Linear(H, r) -> tanh -> Linear(r, L·2·H), reshaped per layer into keys then
values (the prefix-tuning code's `control_trans`; P-tuning v2's `prefix_projection`). The prefixes enter the
attention through the injection layer as P-tuning v2's do (sptbench/methods/p_tuning_v2/nn.py, `KVPrefix` with its
MLP); saving stores the computed prefixes only, and a loaded model (or `KVPrefix.fold()`) uses them directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sptbench.core.errors import SptbenchError
from sptbench.methods.registry import register_method

if TYPE_CHECKING:  # torch loads when a model is built, not when methods are listed (the injection: p_tuning_v2/nn)
    from sptbench.models.classifier import Classifier


@dataclass
class PrefixTuningConfig:
    """Prefix tuning with the MLP reparameterisation."""

    prefix_len: int = field(default=20, metadata={
        "help": "p, the number of prefix keys/values per layer (Li & Liang used 10 for table-to-text; 20 here, as "
                "p_tuning_v2, so that the two differ in the reparameterisation only)"})
    mlp_hidden: int = field(default=512, metadata={
        "help": "r, the MLP's hidden size (Li & Liang's mid_dim, 512)"})
    dropout: float = field(default=0.0, metadata={
        "help": "dropout on the prefixes, a fresh mask per example (Li & Liang's prefix dropout, 0 by default)"})
    init_std: float = field(default=1.0, metadata={
        "help": "std of the MLP's input embeddings P' (nn.Embedding's N(0, 1), as Li & Liang's code)"})

    def validate(self) -> None:
        if self.prefix_len < 1:
            raise SptbenchError(f"prefix_len must be >= 1, got {self.prefix_len}")
        if self.mlp_hidden < 1:
            raise SptbenchError(f"mlp_hidden must be >= 1, got {self.mlp_hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise SptbenchError(f"dropout must be in [0, 1), got {self.dropout}")


def apply(model: Classifier, cfg: PrefixTuningConfig) -> None:
    from sptbench.methods.p_tuning_v2 import PTuningV2Config
    from sptbench.methods.p_tuning_v2.nn import KVPrefix

    backbone, family = model.backbone, model.family
    num_heads, hidden = family.num_heads(backbone), family.hidden_size(backbone)
    if hidden % num_heads:
        raise SptbenchError(f"hidden size {hidden} is not a multiple of the {num_heads} attention heads")
    kv_heads = family.num_kv_heads(backbone)  # grouped-query attention (Llama): the keys' heads
    mlp = PTuningV2Config(prefix_len=cfg.prefix_len, reparam=True, reparam_hidden=cfg.mlp_hidden,
                          dropout=cfg.dropout, init_std=cfg.init_std)
    model.add_injection(KVPrefix(len(model.layers), kv_heads, kv_heads * (hidden // num_heads), mlp))


register_method(
    "prefix_tuning",
    PrefixTuningConfig,
    apply,
    "prefix tuning (Li & Liang 2021): key/value prefixes at every layer from an MLP, stored folded, frozen backbone",
    default_lr=5e-3,
)
