"""P-tuning v2's injection: key/value prefixes at every layer (config and registration: this package's __init__)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from sptbench.models.inject import Injection

if TYPE_CHECKING:
    from sptbench.methods.p_tuning_v2 import PTuningV2Config


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

    def fold(self) -> None:
        """Replace the MLP by the prefixes it computes (Li & Liang: the reparameterisation is dropped after training);
        the model's outputs stay the same. Without the MLP: nothing to do."""
        if self.reparameterized:
            self.import_state(self.export_state())

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
