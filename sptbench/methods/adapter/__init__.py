"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2021 placement).

An adapter is h -> h + W_up f(W_down h + b_down) + b_up, added right after a layer's attention output projection
and/or its FFN output projection, before the residual connection and LayerNorm. The family says where those
projections are; the projection module is wrapped, never edited (GPT-2's `Conv1D` keeps its transposed weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from sptbench.core.errors import SptbenchError, unknown_choice
from sptbench.methods.registry import register_method

if TYPE_CHECKING:  # torch loads when a model is built, not when methods are listed (the modules: nn/)
    from sptbench.models.classifier import Classifier

PLACEMENTS = ("houlsby", "pfeiffer")


@dataclass
class AdapterConfig:
    """Bottleneck adapters."""

    bottleneck: int = field(
        default=64, metadata={"size": True,
            "help": "the adapter's inner size (Houlsby et al. report 64 as a good default on BERT)"}
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
        from sptbench.methods.adapter.nn import ACTIVATIONS

        if self.activation not in ACTIVATIONS:
            raise unknown_choice("adapter activation", self.activation, ACTIVATIONS)


def adapted_layers(num_layers: int, layers: list[int] | None) -> list[int]:
    if layers is None:
        return list(range(num_layers))
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad or not layers:
        raise SptbenchError(f"adapter layers must be a non-empty list of indices in [0, {num_layers}), got {layers}")
    return sorted(set(layers))


def apply(model: Classifier, cfg: AdapterConfig) -> None:
    from torch import nn

    from sptbench.methods.adapter.nn import Adapter, wrap_module

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
