"""Reference methods: `finetune` (every parameter trains), `head` (frozen backbone, linear head only) and `zero_shot`
(the prompt head with nothing trained: the template and label words alone)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from sptbench.core.errors import SptbenchError
from sptbench.methods.registry import FitContext, FitResult, config_dict, register_method

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


CONTENT_FREE = ("N/A", "", "[MASK]")  # Zhao et al. 2021's content-free inputs, in every text slot of the template


@dataclass
class ZeroShotConfig:
    """Zero-shot prompting: nothing trains; the prompt head scores the label words at the template's mask."""

    calibration: Literal["none", "content_free"] = field(default="none", metadata={
        "help": "none, or content_free: contextual calibration (Zhao et al. 2021), the label words' scores divided "
                "by their mean probability given content-free inputs (N/A, empty, [MASK]) in the template"})
    content_free_log_probs: tuple[float, ...] | None = field(default=None, metadata={
        "help": "set by the run, not by hand: the content-free inputs' mean label-word log-probabilities (how a "
                "saved calibrated model is rebuilt: the record's extra.final_config holds them)"})

    def validate(self) -> None:
        if self.calibration not in ("none", "content_free"):
            raise SptbenchError(f"calibration must be none or content_free, got '{self.calibration}'")


def apply_finetune(model: Classifier, cfg: FinetuneConfig) -> None:
    for p in model.backbone.parameters():
        p.requires_grad_(True)


def apply_head(model: Classifier, cfg: HeadConfig) -> None:
    """Nothing to add: the runner has frozen the backbone and the linear head always trains."""
    if model.head_kind != "linear":
        raise SptbenchError("method 'head' trains the linear head; with --head prompt nothing would train "
                            "(zero_shot evaluates the prompt head as it is)")


def apply_zero_shot(model: Classifier, cfg: ZeroShotConfig) -> None:
    """Nothing to add (with the linear head the head would still train: `fit` refuses that), but a calibration."""
    if cfg.content_free_log_probs is not None:
        import torch

        if model.head_kind != "prompt" or len(cfg.content_free_log_probs) != len(model.head.label_word_ids):
            raise SptbenchError("content_free_log_probs needs the prompt head, one value per label word")
        model.head.calibration = torch.tensor(cfg.content_free_log_probs, dtype=torch.float32)


def content_free_log_probs(ctx: FitContext, model: Classifier) -> list[float]:
    """The mean label-word probabilities given the content-free inputs, as logs (contextual calibration)."""
    import torch

    from sptbench.training.loop import model_inputs

    rows = [{"label": 0, **{c: text for c in ctx.task.spec.text_columns}} for text in CONTENT_FREE]
    encoded = ctx.encode(rows)
    device = next(model.parameters()).device
    probs = []
    with torch.inference_mode():
        for row in encoded:
            ids = torch.tensor([row["input_ids"]], device=device)
            probs.append(model(**model_inputs({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, device))
                         .logits.float().softmax(-1)[0])
    return [round(float(x), 6) for x in torch.stack(probs).mean(0).log()]


def fit_zero_shot(ctx: FitContext) -> FitResult:
    """No training: evaluate the frozen model with its prompt head on dev (recorded), the runner then on test."""
    import time

    from sptbench.training.loop import TrainResult, evaluate

    model = ctx.build_model()
    if model.head_kind != "prompt":
        raise SptbenchError("zero_shot reads the pretrained LM head at the template's mask: it needs --head prompt")
    model.eval()
    cfg: ZeroShotConfig = ctx.method_cfg
    extra, final = {}, None
    if cfg.calibration == "content_free":
        log_probs = content_free_log_probs(ctx, model)
        apply_zero_shot(model, ZeroShotConfig(cfg.calibration, tuple(log_probs)))
        extra["content_free_log_probs"] = log_probs
        final = {**config_dict(cfg), "content_free_log_probs": log_probs}
    t0 = time.perf_counter()
    dev = evaluate(model, ctx.encode(ctx.task.dev), ctx.task.spec, ctx.tcfg.eval_batch_size,
                   ctx.tokenizer.pad_token_id or 0)
    result = TrainResult(best_step=None, best_dev=dev, steps_run=0, stopped_early=False,
                         eval_time_s=time.perf_counter() - t0)
    return FitResult(model=model, result=result, extra=extra, final_config=final)


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
