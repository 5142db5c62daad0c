"""(IA)^3 (Liu et al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning") through peft's IA3 layers, the reference implementation.

Three learned vectors per layer rescale the keys, the values and the FFN's intermediate activations:
k' = l_k ⊙ k, v' = l_v ⊙ v, and the FFN output projection sees l_ff ⊙ γ(W_1 x). peft scales the output of the key and
value projections and the input of the FFN output projection (its `feedforward_modules`); all vectors start at one,
so the model starts as the frozen one. The family names the projections (`Family.key_value_targets`,
`Family.ffn_out_proj`); a family that names none gets a one-line refusal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sptbench.core.errors import SptbenchError
from sptbench.methods.registry import register_method

if TYPE_CHECKING:  # peft, transformers and torch load when a model is built, not when methods are listed
    from sptbench.models.classifier import Classifier


@dataclass
class IA3MethodConfig:
    """(IA)^3."""

    feedforward: bool = field(default=True, metadata={
        "help": "also scale the FFN's intermediate activations (l_ff, the paper's third vector); off: keys and values "
                "only"})
    layers: list[int] | None = field(default=None, metadata={
        "help": "restrict (IA)^3 to these layer indices (none: all); layers below the lowest run without autograd"})


def target_names(model: Classifier, cfg: IA3MethodConfig) -> tuple[list[str], list[str]]:
    """Full module names (relative to the backbone) of the key/value projections and of the FFN output projections
    in the chosen layers: (every target, the feedforward ones)."""
    family, num_layers = model.family, len(model.layers)
    if not family.key_value_targets:
        raise SptbenchError(f"method 'ia3' needs the key/value projections, which family '{family.name}' does not name")
    if cfg.layers is not None and (not cfg.layers or any(not 0 <= i < num_layers for i in cfg.layers)):
        raise SptbenchError(f"ia3 layers must be a non-empty list of indices in [0, {num_layers}), got {cfg.layers}")
    names = {id(m): n for n, m in model.backbone.named_modules()}
    targets, feedforward = [], []
    for i in range(num_layers) if cfg.layers is None else sorted(set(cfg.layers)):
        layer = model.layers[i]
        prefix = names[id(layer)]
        targets += [f"{prefix}.{sub}" for sub, _ in layer.named_modules()
                    if sub.rpartition(".")[2] in family.key_value_targets]
        if cfg.feedforward:
            feedforward.append(names[id(family.ffn_out_proj(layer))])
    return targets + feedforward, feedforward


def apply(model: Classifier, cfg: IA3MethodConfig) -> None:
    from peft import IA3Config, inject_adapter_in_model
    from transformers.pytorch_utils import Conv1D

    targets, feedforward = target_names(model, cfg)
    transposed = {isinstance(model.backbone.get_submodule(n), Conv1D) for n in targets}
    if len(transposed) > 1:
        raise SptbenchError("ia3 targets mix Conv1D and Linear modules in this family")
    config = IA3Config(target_modules=targets, feedforward_modules=feedforward, fan_in_fan_out=transposed.pop())
    inject_adapter_in_model(config, model.backbone)
    for name, p in model.backbone.named_parameters():  # only peft's vectors train
        p.requires_grad_(".ia3_l." in name)


register_method(
    "ia3",
    IA3MethodConfig,
    apply,
    "(IA)^3 (Liu et al. 2022) via peft: learned vectors scaling keys, values and FFN activations, frozen backbone",
    default_lr=3e-3,
)
