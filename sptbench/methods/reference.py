"""Reference methods: `finetune` (every parameter trains) and `head` (frozen backbone, linear head only)."""

from __future__ import annotations

from dataclasses import dataclass

from sptbench.model import Classifier
from sptbench.registry import register_method


@dataclass
class FinetuneConfig:
    """Full fine-tuning: no extra parameters; the backbone and the head train."""


@dataclass
class HeadConfig:
    """Linear probing: only the head trains."""


def apply_finetune(model: Classifier, cfg: FinetuneConfig) -> None:
    for p in model.backbone.parameters():
        p.requires_grad_(True)


def apply_head(model: Classifier, cfg: HeadConfig) -> None:
    """Nothing to add: the runner has frozen the backbone and the head always trains."""


register_method(
    "finetune", FinetuneConfig, apply_finetune, "full fine-tuning of every backbone parameter", default_lr=2e-5
)
register_method(
    "head", HeadConfig, apply_head, "frozen backbone, linear head on the pooled representation", default_lr=1e-2
)
