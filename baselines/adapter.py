"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2021 placement).

An adapter is h -> h + W_up f(W_down h + b_down) + b_up, added right after a layer's attention output projection
and/or its FFN output projection, before the residual connection and LayerNorm. The family says where those
projections are; the projection module is wrapped, never edited (GPT-2's `Conv1D` keeps its transposed weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from sptbench.errors import SptbenchError, unknown_choice
from sptbench.model import Classifier
from sptbench.registry import register_method

PLACEMENTS = ("houlsby", "pfeiffer")
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh, "swish": nn.SiLU}


@dataclass
class AdapterConfig:
    """Bottleneck adapters."""

    bottleneck: int = field(
        default=64, metadata={"help": "the adapter's inner size (Houlsby et al. report 64 as a good default on BERT)"}
    )
    placement: Literal["houlsby", "pfeiffer"] = field(default="houlsby", metadata={
        "help": "houlsby = after the attention output projection and after the FFN output projection (two per layer); "
                "pfeiffer = after the FFN output projection only (one per layer)"})
    activation: Literal["gelu", "relu", "tanh", "swish"] = field(default="gelu", metadata={
        "help": "the bottleneck nonlinearity: gelu (the original adapter-bert code), relu, tanh or swish"})
    layers: list[int] | None = field(default=None, metadata={
        "help": "restrict adapters to these layer indices (none: all); layers below the lowest run without autograd"})
    train_layer_norms: bool = field(default=False, metadata={
        "help": "also train the LayerNorms inside the adapted layers, as Houlsby et al. did (off: the count is "
                "adapters only, as peft and most reproductions report)"})

    def validate(self) -> None:
        if self.bottleneck < 1:
            raise SptbenchError(f"bottleneck must be >= 1, got {self.bottleneck}")
        if self.placement not in PLACEMENTS:
            raise unknown_choice("adapter placement", self.placement, PLACEMENTS)
        if self.activation not in ACTIVATIONS:
            raise unknown_choice("adapter activation", self.activation, ACTIVATIONS)


class Adapter(nn.Module):
    """h -> h + up(f(down(h))), with `up` zero-initialised so that the adapter starts as the identity."""

    def __init__(self, hidden: int, bottleneck: int, activation: str):
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck)  # torch's default (Kaiming-uniform) init, as LoRA's A
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))


class WithAdapter(nn.Module):
    """A frozen projection followed by an adapter; the projection itself is left untouched."""

    def __init__(self, base: nn.Module, adapter: Adapter):
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, *args, **kwargs):
        return self.adapter(self.base(*args, **kwargs))


def wrap_module(root: nn.Module, target: nn.Module, adapter: Adapter) -> None:
    """Replace `target` (a submodule of `root`, found by identity) with `WithAdapter(target, adapter)`."""
    for name, module in root.named_modules():
        if module is target and name:
            parent_name, _, attr = name.rpartition(".")
            parent = root.get_submodule(parent_name) if parent_name else root
            setattr(parent, attr, WithAdapter(target, adapter))
            return
    raise RuntimeError(f"module {type(target).__name__} not found inside the layer")


def adapted_layers(num_layers: int, layers: list[int] | None) -> list[int]:
    if layers is None:
        return list(range(num_layers))
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad or not layers:
        raise SptbenchError(f"adapter layers must be a non-empty list of indices in [0, {num_layers}), got {layers}")
    return sorted(set(layers))


def apply(model: Classifier, cfg: AdapterConfig) -> None:
    family, backbone = model.family, model.backbone
    hidden = family.hidden_size(backbone)
    for i in adapted_layers(len(model.layers), cfg.layers):
        layer = model.layers[i]
        if cfg.train_layer_norms:  # before wrapping, so adapters' own modules are not touched
            for module in layer.modules():
                if isinstance(module, nn.LayerNorm):
                    module.requires_grad_(True)
        targets = [family.ffn_out_proj(layer)]
        if cfg.placement == "houlsby":
            targets.insert(0, family.attention_out_proj(layer))
        for target in targets:
            adapter = Adapter(hidden, cfg.bottleneck, cfg.activation)
            ref = next(iter(target.parameters()))
            wrap_module(layer, target, adapter.to(device=ref.device, dtype=ref.dtype))


register_method(
    "adapter",
    AdapterConfig,
    apply,
    "bottleneck adapters (Houlsby et al. 2019) after the attention and FFN output projections, frozen backbone",
    default_lr=1e-3,
)
