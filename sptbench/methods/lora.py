"""LoRA (Hu et al., 2021) through peft, the reference implementation.

peft injects its LoRA layers into the backbone in place (`inject_adapter_in_model`), so the Classifier's own
forward stays the one path: W x + (alpha / r) B A dropout(x), with A Kaiming-uniform and B zero at init.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sptbench.core.errors import SptbenchError
from sptbench.methods.registry import register_method

if TYPE_CHECKING:  # peft, transformers and torch load when a model is built, not when methods are listed
    from sptbench.models.classifier import Classifier


@dataclass
class LoraMethodConfig:
    """LoRA."""

    rank: int = field(default=8, metadata={"size": True, "help": "r, the rank of the update B A"})
    alpha: float = field(default=16.0, metadata={"help": "the update is scaled by alpha / r (peft's default scaling)"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on the input of the LoRA branch"})
    targets: list[str] | None = field(default=None, metadata={
        "help": "module names inside each layer to adapt (none: the family's query and value projections; GPT-2's "
                "fused c_attn, whose Conv1D weight is stored transposed, handled with peft's fan_in_fan_out)"})
    layers: list[int] | None = field(default=None, metadata={
        "help": "restrict LoRA to these layer indices (none: all); layers below the lowest run without autograd"})

    def validate(self) -> None:
        if self.rank < 1:
            raise SptbenchError(f"rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise SptbenchError(f"dropout must be in [0, 1), got {self.dropout}")


def target_names(model: Classifier, targets: list[str] | tuple[str, ...], layers: list[int] | None) -> list[str]:
    """Full module names (relative to the backbone) of the targets inside the chosen layers."""
    names = {id(m): n for n, m in model.backbone.named_modules()}
    num_layers = len(model.layers)
    chosen = range(num_layers) if layers is None else sorted(set(layers))
    if layers is not None and (not layers or any(not 0 <= i < num_layers for i in layers)):
        raise SptbenchError(f"lora layers must be a non-empty list of indices in [0, {num_layers}), got {layers}")
    out = []
    for i in chosen:
        layer_name = names[id(model.layers[i])]
        subs = [sub for sub, _ in model.layers[i].named_modules() if sub.rpartition(".")[2] in targets]
        out += [f"{layer_name}.{sub}" for sub in subs]
    if not out:
        raise SptbenchError(f"no module named {list(targets)} in the backbone's layers ({model.family.name})")
    return out


def apply(model: Classifier, cfg: LoraMethodConfig) -> None:
    inject_lora(model, cfg)


def inject_lora(model: Classifier, cfg: LoraMethodConfig, use_dora: bool = False) -> None:
    """peft's LoRA layers (DoRA's with `use_dora`) on the targets in the chosen layers; only they train."""
    from peft import LoraConfig, inject_adapter_in_model
    from transformers.pytorch_utils import Conv1D

    targets = tuple(cfg.targets) if cfg.targets else model.family.lora_targets
    names = target_names(model, targets, cfg.layers)
    transposed = {isinstance(model.backbone.get_submodule(n), Conv1D) for n in names}
    if len(transposed) > 1:
        raise SptbenchError(f"lora targets {list(targets)} mix Conv1D and Linear modules; target one kind")
    config = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=names,
        fan_in_fan_out=transposed.pop(),
        bias="none",
        use_dora=use_dora,
    )
    inject_adapter_in_model(config, model.backbone)
    # peft marks its own parameters trainable; make sure nothing else in the backbone does.
    for name, p in model.backbone.named_parameters():
        p.requires_grad_("lora_" in name)


register_method(
    "lora",
    LoraMethodConfig,
    apply,
    "LoRA (Hu et al. 2021) via peft on the query/value projections, frozen backbone",
    default_lr=5e-4,
)
