"""Reference methods: `finetune` (every parameter trains), `head` (frozen backbone, linear head only) and `zero_shot`
(the prompt head with nothing trained: the template and label words alone)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sptbench.core.errors import SptbenchError
from sptbench.methods.registry import FitContext, FitResult, register_method

if TYPE_CHECKING:  # torch loads when a model is built, not when methods are listed
    from sptbench.models.classifier import Classifier


@dataclass
class FinetuneConfig:
    """Full fine-tuning: no extra parameters; the backbone and the linear head train. With the prompt head this is
    LM-BFF's prompt-based fine-tuning: the backbone trains, and with it the LM head's decoder (tied to the word
    embeddings); the rest of the LM head (its transform) stays frozen, like every method's."""


@dataclass
class HeadConfig:
    """Linear probing: only the head trains."""


@dataclass
class ZeroShotConfig:
    """Zero-shot prompting: nothing trains; the prompt head scores the label words at the template's mask."""


def apply_finetune(model: Classifier, cfg: FinetuneConfig) -> None:
    for p in model.backbone.parameters():
        p.requires_grad_(True)


def apply_head(model: Classifier, cfg: HeadConfig) -> None:
    """Nothing to add: the runner has frozen the backbone and the linear head always trains."""
    if model.head_kind != "linear":
        raise SptbenchError("method 'head' trains the linear head; with --head prompt nothing would train "
                            "(zero_shot evaluates the prompt head as it is)")


def apply_zero_shot(model: Classifier, cfg: ZeroShotConfig) -> None:
    """Nothing to add (with the linear head the head would still train: `fit` refuses that)."""


def fit_zero_shot(ctx: FitContext) -> FitResult:
    """No training: evaluate the frozen model with its prompt head on dev (recorded), the runner then on test."""
    import time

    from sptbench.training.loop import TrainResult, evaluate

    model = ctx.build_model()
    if model.head_kind != "prompt":
        raise SptbenchError("zero_shot reads the pretrained LM head at the template's mask: it needs --head prompt")
    model.eval()
    t0 = time.perf_counter()
    dev = evaluate(model, ctx.encode(ctx.task.dev), ctx.task.spec, ctx.tcfg.eval_batch_size,
                   ctx.tokenizer.pad_token_id or 0)
    result = TrainResult(best_step=None, best_dev=dev, steps_run=0, stopped_early=False,
                         eval_time_s=time.perf_counter() - t0)
    return FitResult(model=model, result=result)


register_method(
    "finetune", FinetuneConfig, apply_finetune, "full fine-tuning of every backbone parameter", default_lr=2e-5,
    trains="backbone",
)
register_method(
    "head", HeadConfig, apply_head, "frozen backbone, linear head on the pooled representation", default_lr=1e-2,
    heads=("linear",), trains="nothing",
)
register_method(
    "zero_shot", ZeroShotConfig, apply_zero_shot,
    "no training: the prompt head's label words at the template's mask (--head prompt)", fit=fit_zero_shot,
    heads=("prompt",), trains="nothing",
)
