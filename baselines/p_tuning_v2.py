"""P-tuning v2 (Liu et al., 2022): trainable key/value prefixes of length p at every layer.

Each layer's attention sees p extra keys and values before the tokens' own; the prefixes have no query rows
and no output positions. With `reparam`, the prefixes are computed by an MLP from p embeddings (the prefix-tuning
reparameterization of the official code); saving stores the computed prefixes, never the MLP.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sptbench.errors import SptbenchError
from sptbench.inject import Injection
from sptbench.model import Classifier
from sptbench.registry import register_method


@dataclass
class PTuningV2Config:
    """P-tuning v2."""

    prefix_len: int = field(default=20, metadata={"help": "p, the number of prefix keys/values per layer"})
    reparam: bool = field(default=False, metadata={
        "help": "compute the prefixes with an MLP (embedding(p, hidden) -> Linear -> tanh -> Linear to "
                "layers*2*hidden), as the official code's prefix_projection; off, as in its GLUE/SuperGLUE runs"})
    reparam_hidden: int = field(default=512, metadata={"help": "the reparam MLP's hidden size (official default 512)"})
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


class KVPrefix(Injection):
    """Per-layer key/value prefixes, stored as one (layers, 2, p, hidden) tensor: [:, 0] keys, [:, 1] values."""

    def __init__(self, num_layers: int, num_heads: int, hidden: int, cfg: PTuningV2Config):
        super().__init__()
        self.num_layers, self.num_heads, self.hidden, self.p = num_layers, num_heads, hidden, cfg.prefix_len
        self.dropout = nn.Dropout(cfg.dropout)
        if cfg.reparam:
            self.register_parameter("prefix", None)
            self.embedding = nn.Parameter(torch.randn(cfg.prefix_len, hidden) * cfg.init_std)
            self.mlp_in = nn.Linear(hidden, cfg.reparam_hidden)
            self.mlp_out = nn.Linear(cfg.reparam_hidden, num_layers * 2 * hidden)
        else:
            self.prefix = nn.Parameter(torch.randn(num_layers, 2, cfg.prefix_len, hidden) * cfg.init_std)

    @property
    def reparameterized(self) -> bool:
        return self.prefix is None

    def _layer_kv(self, layer: int) -> torch.Tensor:
        """(2, p, hidden) keys and values of one layer; with the MLP, only that layer's rows of the output Linear."""
        if not self.reparameterized:
            return self.prefix[layer]
        rows = slice(layer * 2 * self.hidden, (layer + 1) * 2 * self.hidden)
        h = torch.tanh(self.mlp_in(self.embedding))
        kv = F.linear(h, self.mlp_out.weight[rows], self.mlp_out.bias[rows])
        return kv.view(self.p, 2, self.hidden).transpose(0, 1)

    def kv_prefix(self, layer: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        kv = self.dropout(self._layer_kv(layer).unsqueeze(1).expand(2, batch_size, self.p, self.hidden))
        kv = kv.view(2, batch_size, self.p, self.num_heads, self.hidden // self.num_heads).transpose(2, 3)
        return kv[0], kv[1]  # each (batch, heads, p, head_dim)

    def all_prefixes(self) -> torch.Tensor:
        """The (layers, 2, p, hidden) prefixes the model uses (no dropout)."""
        return torch.stack([self._layer_kv(i) for i in range(self.num_layers)])

    def export_state(self) -> dict[str, torch.Tensor] | None:
        if not self.reparameterized:
            return None  # the prefix parameter itself, under the same name
        with torch.no_grad():
            return {"prefix": self.all_prefixes()}

    def import_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load stored prefixes; a reparameterized injection drops its MLP and uses them directly from now on."""
        if set(state) != {"prefix"}:
            raise ValueError(f"p_tuning_v2 state must hold exactly 'prefix', got {sorted(state)}")
        prefix = state["prefix"]
        expected = (self.num_layers, 2, self.p, self.hidden)
        if tuple(prefix.shape) != expected:
            raise ValueError(f"stored prefix has shape {tuple(prefix.shape)}, this model expects {expected}")
        if self.reparameterized:
            device = self.embedding.device
            trainable = self.embedding.requires_grad
            del self.embedding, self.mlp_in, self.mlp_out
            self.prefix = nn.Parameter(prefix.detach().clone().to(device), requires_grad=trainable)
        else:
            with torch.no_grad():
                self.prefix.copy_(prefix)


def apply(model: Classifier, cfg: PTuningV2Config) -> None:
    backbone, family = model.backbone, model.family
    num_heads, hidden = family.num_heads(backbone), family.hidden_size(backbone)
    if hidden % num_heads:
        raise SptbenchError(f"hidden size {hidden} is not a multiple of the {num_heads} attention heads")
    model.add_injection(KVPrefix(len(model.layers), num_heads, hidden, cfg))


register_method(
    "p_tuning_v2",
    PTuningV2Config,
    apply,
    "P-tuning v2 (Liu et al. 2022): trainable key/value prefixes at every layer, frozen backbone",
    default_lr=1e-2,
)
