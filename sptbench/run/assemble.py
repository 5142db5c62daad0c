"""Assemble a model: a backbone (alias, hub id or folder) frozen under a fresh head, with a method applied.

The one way to build a model, shared by `sptbench run`, `sptbench bench`, `sptbench params`, the Python API and the
saved-model loader (`run/persist.py`).
"""

from __future__ import annotations

from typing import Any

from sptbench.data.templates import PromptSetup
from sptbench.methods.registry import Method
from sptbench.models.backbones import BackboneInfo, load_backbone
from sptbench.models.classifier import Classifier


def frozen_backbone(
    model: str,
    num_labels: int,
    *,
    pooling: str | None = None,
    head_dropout: float = 0.1,
    prompt: PromptSetup | None = None,
    quiet: bool = False,
    revision: str | None = None,
) -> tuple[Classifier, Any, BackboneInfo]:
    """A backbone (alias, hub id or folder) as a `Classifier` with a fresh head and every backbone parameter
    frozen: the starting point of every method. Returns the model, its tokenizer and provenance. `quiet`: no
    transformers load report or progress bar. `revision`: the hub repository's commit, branch or tag."""
    classifier, tokenizer, info = load_backbone(
        model, num_labels, pooling=pooling, head_dropout=head_dropout, prompt=prompt, quiet=quiet, revision=revision
    )
    classifier.freeze_backbone()
    return classifier, tokenizer, info


def build_classifier(
    method: Method,
    cfg: Any,
    model: str,
    num_labels: int,
    *,
    pooling: str | None = None,
    head_dropout: float = 0.1,
    prompt: PromptSetup | None = None,
    quiet: bool = False,
    revision: str | None = None,
) -> tuple[Classifier, Any, BackboneInfo]:
    """`frozen_backbone` with `method` applied with its config `cfg` (see `registry.build_config`)."""
    classifier, tokenizer, info = frozen_backbone(
        model, num_labels, pooling=pooling, head_dropout=head_dropout, prompt=prompt, quiet=quiet, revision=revision
    )
    method.apply(classifier, cfg)
    return classifier, tokenizer, info
