"""BitFit (Ben Zaken, Ravfogel & Goldberg, ACL 2022): train the backbone's bias terms only (and the head).

Every parameter of the backbone named `bias` trains: in each layer the query, key and value biases, the attention
output and both feed-forward biases and the LayerNorm biases (β), and the embedding LayerNorm's bias; weights stay
frozen. The method adds nothing (`trains="subset"`, its predicate `is_bias`). A backbone without bias terms (LLaMA)
is a one-line error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sptbench.core.errors import SptbenchError
from sptbench.methods.registry import register_method

if TYPE_CHECKING:
    from sptbench.models.classifier import Classifier


@dataclass
class BitFitConfig:
    """BitFit: no options (every bias term of the backbone trains)."""


def is_bias(name: str) -> bool:
    """A backbone parameter BitFit trains: one named `bias` (by its name in `backbone.named_parameters()`)."""
    return name.rpartition(".")[2] == "bias"


def apply(model: Classifier, cfg: BitFitConfig) -> None:
    biases = [p for name, p in model.backbone.named_parameters() if is_bias(name)]
    if not biases:
        raise SptbenchError(f"bitfit: the {model.family.name} backbone has no bias terms to train")
    for p in biases:
        p.requires_grad_(True)


register_method(
    "bitfit",
    BitFitConfig,
    apply,
    "BitFit (Ben Zaken et al. 2022): only the backbone's bias terms train (and the head)",
    default_lr=1e-3,
    trains="subset",
    subset=is_bias,
)
