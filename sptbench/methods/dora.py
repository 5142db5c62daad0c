"""DoRA (Liu et al., 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation") through peft, the reference implementation.

Each target weight W is split into a magnitude and a direction: W' = m * (W + s B A) / ||W + s B A||_c, with the
column-wise norm ||.||_c taken per output feature, m initialised to ||W||_c (so that W' = W at init, B being zero)
and trained, and B A the LoRA update of the direction (s = alpha / r). peft's `LoraConfig(use_dora=True)` on the
same targets, rank and defaults as our `lora` method (sptbench/methods/lora.py), so the two differ in the magnitude
vector only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sptbench.methods.lora import LoraMethodConfig, inject_lora
from sptbench.methods.registry import register_method

if TYPE_CHECKING:  # peft, transformers and torch load when a model is built, not when methods are listed
    from sptbench.models.classifier import Classifier


@dataclass
class DoraMethodConfig(LoraMethodConfig):
    """DoRA: LoRA's options (rank, alpha, dropout, targets, layers), with the same defaults."""


def apply(model: Classifier, cfg: DoraMethodConfig) -> None:
    inject_lora(model, cfg, use_dora=True)  # the magnitude vectors are named lora_magnitude_vector: they train


register_method(
    "dora",
    DoraMethodConfig,
    apply,
    "DoRA (Liu et al. 2024) via peft: LoRA on the direction plus a trained magnitude per output, frozen backbone",
    default_lr=5e-4,
)
