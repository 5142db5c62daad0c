"""Training with dev selection: tokenise once, length-grouped dynamic batches, AdamW with warmup and a linear
(constant, cosine) schedule, gradient clipping, evaluation every N steps on dev, best-on-dev checkpoint, early
stopping. Test is never read here. Every choice that differs from a plain PyTorch loop is a `TrainConfig` field, so
the stock loop can be expressed exactly (`STOCK_SETTINGS`, docs/conformance.md).

The pieces (`encode_rows`, `iterate_batches`, `loss_on`, `build_optimizer`, `evaluate`) are public so that
multi-stage methods (SPT-DARTS' alternating search) reuse them instead of writing a loop of their own.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sptbench.core.errors import SptbenchError
from sptbench.core.run_schema import (  # declared there
    TrainConfig,
    check_train_config,
)
from sptbench.data.metrics import compute_metrics
from sptbench.training.batches import _collate, forever, micro_batches, shard
from sptbench.training.batches import encode_rows as encode_rows  # public here too
from sptbench.training.batches import iterate_batches as iterate_batches
from sptbench.training.batches import torch_epochs as torch_epochs
from sptbench.training.resume import Checkpointing, load_state, load_trainable, rng_state, save_state, set_rng_state

# What a plain PyTorch loop does (scripts/stock_loop.py): constant learning rate, no clipping, no head dropout,
# weight decay on every parameter, DataLoader's shuffle. `sptbench run --stock` applies them.
STOCK_SETTINGS = {
    "lr_schedule": "constant",
    "warmup_ratio": 0.0,
    "max_grad_norm": None,
    "head_dropout": 0.0,
    "weight_decay_scope": "all",
    "group_by_length": False,
    "sampler": "torch",
}


@dataclass
class TrainResult:
    best_step: int | None
    best_dev: dict[str, float]
    steps_run: int
    stopped_early: bool
    history: list[dict] = field(default_factory=list)
    train_time_s: float = 0.0  # optimizer steps only, evaluation excluded
    eval_time_s: float = 0.0
    samples_seen: int = 0
    tokens_seen: int = 0  # real (unpadded) tokens
    resumed_at: list[int] = field(default_factory=list)  # steps a rerun resumed from (training/resume.py)
    oom_retries: list[dict] = field(default_factory=list)  # out of memory: the step retried in smaller micro-batches


class NonFiniteLoss(SptbenchError):
    """The loss became NaN or inf: the run stops and is recorded as failed."""


def world() -> tuple[int, int]:
    """(rank, world size) of a data-parallel launch (`accelerate launch`, which the runner's Accelerator joins);
    (0, 1) in a plain process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_grads(params: list[torch.Tensor], bucket_numel: int = 1 << 24) -> None:
    """Sum the gradients of `params` over all ranks, in flat buckets (a missing gradient counts as zero)."""
    import torch.distributed as dist

    def reduce(bucket):
        flat = torch.cat([p.grad.reshape(-1) for p in bucket])
        dist.all_reduce(flat)
        for p, g in zip(bucket, torch.split(flat, [p.numel() for p in bucket]), strict=True):
            p.grad.copy_(g.view_as(p))

    bucket, size = [], 0
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        bucket.append(p)
        size += p.numel()
        if size >= bucket_numel:
            reduce(bucket)
            bucket, size = [], 0
    if bucket:
        reduce(bucket)


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items() if k != "labels"}


def loss_on(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    device = next(model.parameters()).device
    logits = model(**model_inputs(batch, device))
    return F.cross_entropy(logits.float(), batch["labels"].to(device))


def lr_multiplier(step: int, max_steps: int, warmup_ratio: float, schedule: str = "linear") -> float:
    """The learning-rate multiplier at optimizer step `step` (0-based): linear warmup, then `schedule`. Our own
    (not transformers' get_scheduler) because the warmup's first step is (1 / (warmup + 1)), not 0, and every
    recorded run used this form."""
    warmup = int(max_steps * warmup_ratio)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, max_steps - warmup)
    if schedule == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return max(0.0, 1.0 - progress)


def build_optimizer(
    params,
    lr: float,
    weight_decay: float,
    max_steps: int,
    warmup_ratio: float,
    *,
    schedule: str = "linear",
    decay_scope: str = "matrices",
):
    """AdamW (`decay_scope` "matrices": no decay on biases and norms; "all": decay everything) with linear warmup
    and the `schedule` after it. A parameter with an attribute `sptbench_lr` (set by its method, e.g. DePT's
    low-rank pair; a method option, so in the record key) gets that learning rate instead of `lr`."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise SptbenchError("the method left no trainable parameters")
    groups: dict[tuple[float, float], list] = {}  # (weight decay, lr) -> parameters, in first-seen order
    for p in params:
        decay = weight_decay if decay_scope == "all" or p.ndim >= 2 else 0.0
        groups.setdefault((decay, getattr(p, "sptbench_lr", lr)), []).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": ps, "weight_decay": wd, "lr": group_lr} for (wd, group_lr), ps in groups.items()], lr=lr)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, max_steps, warmup_ratio, schedule)
    )


def optimizer_for(params, tcfg: TrainConfig, lr: float | None = None, weight_decay: float | None = None):
    """`build_optimizer` with the schedule, decay scope and budget of `tcfg` (lr / weight decay overridable)."""
    return build_optimizer(
        params,
        tcfg.lr if lr is None else lr,
        tcfg.weight_decay if weight_decay is None else weight_decay,
        tcfg.max_steps,
        tcfg.warmup_ratio,
        schedule=tcfg.lr_schedule,
        decay_scope=tcfg.weight_decay_scope,
    )


def clip_gradients(params, max_grad_norm: float | None) -> None:
    """Clip the global gradient norm to `max_grad_norm`; None or 0 leaves the gradients as they are."""
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_grad_norm)


def predict(model, encoded: list[dict], batch_size: int, pad_id: int = 0) -> list[int]:
    """Predictions in input order (`scored_predictions` without the losses)."""
    return scored_predictions(model, encoded, batch_size, pad_id)[0]


@torch.inference_mode()
def scored_predictions(model, encoded: list[dict], batch_size: int,
                       pad_id: int = 0) -> tuple[list[int], list[float], list[float]]:
    """Predictions, per-example cross-entropy and probability of the gold label, in input order (batches grouped by
    length for speed). In a data-parallel launch every rank scores every world-size-th example and the results are
    gathered, so every rank returns all of them."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    rank, world_size = world()
    order = order[rank::world_size]
    out: list[tuple[int, float, float]] = [(0, 0.0, 0.0)] * len(encoded)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = _collate([encoded[i] for i in idx], pad_id)
        logits = model(**model_inputs(batch, device)).float()
        labels = batch["labels"].to(logits.device)
        logp = F.log_softmax(logits, dim=-1).gather(1, labels[:, None])[:, 0]
        rows = zip(logits.argmax(-1).tolist(), (-logp).tolist(), logp.exp().tolist(), strict=True)
        for i, row in zip(idx, rows, strict=True):
            out[i] = row
    if world_size > 1:
        import torch.distributed as dist

        parts: list = [None] * world_size
        dist.all_gather_object(parts, [(i, out[i]) for i in order])
        for part in parts:
            for i, row in part:
                out[i] = row
    model.train(was_training)
    return [r[0] for r in out], [r[1] for r in out], [r[2] for r in out]


def evaluate(model, encoded: list[dict], spec, batch_size: int, pad_id: int = 0) -> dict[str, float]:
    """The spec's metrics and `score`, plus `loss` (mean cross-entropy of the gold label) and `gold_prob` (mean
    probability of the gold label): dev ties on the score are broken on the loss (docs/statistics.md)."""
    while True:  # out of memory: half the batch (the predictions do not depend on it), down to one example
        try:
            preds, losses, probs = scored_predictions(model, encoded, batch_size, pad_id)
            break
        except torch.OutOfMemoryError:
            if batch_size <= 1:
                raise SptbenchError("out of memory evaluating one example at a time") from None
            batch_size //= 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            tqdm.write(f"out of memory in evaluation: retrying with batches of {batch_size}", file=sys.stderr)
    metrics = compute_metrics(spec, preds, [e["label"] for e in encoded])
    metrics["loss"] = round(sum(losses) / len(losses), 6)
    metrics["gold_prob"] = round(sum(probs) / len(probs), 6)
    return metrics


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _restore(model, snap: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in snap.items():
            params[n].copy_(t)


class DefaultStep:
    """One optimizer step on a batch: AdamW with the run's schedule and clipping; the batch's gradient accumulated
    over `grad_accum` micro-batches (each one's loss scaled by its share of the batch); under fp16, a GradScaler.
    In a data-parallel launch, this rank's shard of the batch, the gradients summed over ranks."""

    def __init__(self, params, tcfg: TrainConfig, sharded: bool, rank: int, world_size: int, fp16: bool = False):
        self.optimizer, self.scheduler = optimizer_for(params, tcfg)
        self.trainable = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.max_grad_norm, self.grad_accum = tcfg.max_grad_norm, tcfg.grad_accum
        self.sharded, self.rank, self.world_size = sharded, rank, world_size
        self.scaler = torch.amp.GradScaler(self.trainable[0].device.type) if fp16 else None

    def __call__(self, model, batch: dict[str, torch.Tensor], step: int) -> torch.Tensor:
        part = shard(batch, self.rank, self.world_size) if self.sharded else batch
        n, losses = batch["labels"].shape[0], []
        for micro in micro_batches(part, self.grad_accum) if part["labels"].shape[0] else []:
            loss = loss_on(model, micro)
            if micro["labels"].shape[0] != n:
                loss = loss * (micro["labels"].shape[0] / n)
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            losses.append(loss.detach())
        if self.sharded:
            all_reduce_grads(self.trainable)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        clip_gradients(self.trainable, self.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped when the scaled gradients overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        with warnings.catch_warnings():  # the schedule counts steps, skipped ones too (a GradScaler's first)
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not losses:
            return torch.zeros((), device=self.trainable[0].device)
        return losses[0] if len(losses) == 1 else torch.stack(losses).sum()

    def shrink(self, batch_rows: int) -> bool:
        """After an out-of-memory error: twice the accumulation (half the micro-batch), if a micro-batch still has
        more than one row. The failed step's partial gradients are dropped."""
        self.optimizer.zero_grad(set_to_none=True)
        if -(-batch_rows // self.grad_accum) <= 1:
            return False
        self.grad_accum *= 2
        return True

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None, "grad_accum": self.grad_accum}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.grad_accum = state["grad_accum"]


def default_step(params, tcfg: TrainConfig, sharded: bool, rank: int, world_size: int, fp16: bool = False):
    """The step `train` takes unless a method gives its own (`DefaultStep`)."""
    return DefaultStep(params, tcfg, sharded, rank, world_size, fp16)


def _mean_loss(losses: list[torch.Tensor], sharded: bool) -> float:
    """The mean training loss since the last evaluation (the only host sync between evaluations)."""
    stacked = torch.stack(losses).float()
    if sharded:  # each rank's loss is its share of the global batch's mean loss
        import torch.distributed as dist

        dist.all_reduce(stacked)
    return float(stacked.mean())


@dataclass
class _Loop:
    """The loop's own state between steps (what a checkpoint holds besides the model, the step and the RNG)."""

    res: TrainResult
    best_score: tuple = (-math.inf, -math.inf)
    best_snap: dict | None = None
    bad_evals: int = 0
    losses: list = field(default_factory=list)
    finished: bool = False

    def save(self, ckpt: Checkpointing, model, step_fn) -> None:
        save_state(ckpt.path, {
            "step": self.res.steps_run, "trainable": _snapshot(model), "step_fn": step_fn.state_dict(),
            "rng": rng_state(), "result": dataclasses.asdict(self.res), "best_score": list(self.best_score),
            "best_snap": self.best_snap, "bad_evals": self.bad_evals, "losses": list(self.losses),
            "finished": self.finished,
        })

    @classmethod
    def resume(cls, ckpt: Checkpointing, model, step_fn) -> _Loop | None:
        state = load_state(ckpt.path)
        if state is None:
            return None
        load_trainable(model, state["trainable"], ckpt.path)
        step_fn.load_state_dict(state["step_fn"])
        set_rng_state(state["rng"])
        device = next(model.parameters()).device
        loop = cls(TrainResult(**state["result"]), tuple(state["best_score"]), state["best_snap"], state["bad_evals"],
                   [t.to(device) for t in state["losses"]], state["finished"])
        loop.res.resumed_at.append(state["step"])
        return loop


def _take_step(step_fn, model, batch: dict, step: int, res: TrainResult) -> torch.Tensor:
    """`step_fn` on the batch; out of memory, the default step retries it in micro-batches half as big (recorded in
    `res.oom_retries`) until one row per micro-batch."""
    while True:
        try:
            return step_fn(model, batch, step)
        except torch.OutOfMemoryError as e:
            rows = batch["labels"].shape[0]
            if not isinstance(step_fn, DefaultStep) or not step_fn.shrink(rows):
                first = (str(e).splitlines() or [type(e).__name__])[0]
                raise SptbenchError(f"out of memory at step {step} (batch {rows}): {first}") from None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            res.oom_retries.append({"step": step, "grad_accum": step_fn.grad_accum,
                                    "micro_batch": -(-rows // step_fn.grad_accum)})


def train(
    model,
    train_enc: list[dict],
    dev_enc: list[dict],
    spec,
    tcfg: TrainConfig,
    *,
    step_fn: Callable[[Any, dict, int], float] | None = None,
    on_eval: Callable[[int, dict], None] | None = None,
    params=None,
    pad_id: int = 0,
    progress: bool = True,
    fp16: bool = False,
    checkpoint: Checkpointing | None = None,
    monitor=None,
) -> TrainResult:
    """Train for `tcfg.max_steps`, evaluating on dev every `eval_every` steps; ends with the best dev checkpoint.

    In a data-parallel launch (`world()` > 1) every rank draws the same global batch; the default step trains on this
    rank's shard of it and sums the gradients over ranks (each shard's loss is scaled by its share of the batch), so
    the update is the single-process one. A custom `step_fn` gets the whole batch on every rank (no speed-up, same
    result). Samples and tokens count the global batch. `fp16`: the default step scales the loss (GradScaler).
    `checkpoint`: the default step's loop (no custom `step_fn` or `on_eval`, whose state is the method's) saves its
    state there every `checkpoint.every` steps and at the end, and resumes from it (training/resume.py).
    `monitor`: told the start step and every evaluation (training/monitor.py)."""
    if not train_enc or not dev_enc:
        raise SptbenchError("training needs a non-empty train and dev split")
    check_train_config(tcfg)
    if hasattr(model, "frozen_mode"):
        model.frozen_mode = tcfg.frozen_layers
        model.frozen_cache.clear()
    model.train()
    rank, world_size = world()
    sharded = world_size > 1 and step_fn is None
    if checkpoint is not None and (step_fn is not None or on_eval is not None):
        checkpoint = None
    if step_fn is None:
        step_fn = default_step(params if params is not None else model.parameters(), tcfg, sharded, rank, world_size,
                               fp16)
    loop = _Loop.resume(checkpoint, model, step_fn) if checkpoint is not None else None
    loop = loop or _Loop(TrainResult(best_step=None, best_dev={}, steps_run=0, stopped_early=False))
    if monitor is not None:
        monitor.start(loop.res.steps_run)
    if not loop.finished:
        _run_steps(model, train_enc, dev_enc, spec, tcfg, loop, step_fn, on_eval, pad_id, progress and rank == 0,
                   sharded, checkpoint if rank == 0 else None, monitor)
    if loop.best_snap is not None:
        _restore(model, loop.best_snap)
    if hasattr(model, "frozen_cache"):
        model.frozen_cache.clear()
    model.eval()
    return loop.res


def _run_steps(model, train_enc, dev_enc, spec, tcfg: TrainConfig, loop: _Loop, step_fn, on_eval, pad_id: int,
               progress: bool, sharded: bool, checkpoint: Checkpointing | None, monitor) -> None:
    """The steps from `loop`'s position to the end or an early stop, with the dev evaluations and checkpoints."""
    res = loop.res
    batches = forever(train_enc, tcfg.batch_size, seed=tcfg.seed, group_by_length=tcfg.group_by_length, pad_id=pad_id,
                      sampler=tcfg.sampler, skip=res.steps_run)
    bar = tqdm(total=tcfg.max_steps, initial=res.steps_run, desc="train", disable=not progress, leave=False,
               dynamic_ncols=True)
    for step in range(res.steps_run + 1, tcfg.max_steps + 1):
        batch = next(batches)
        t0 = time.perf_counter()
        loss = _take_step(step_fn, model, batch, step, res)
        res.train_time_s += time.perf_counter() - t0
        res.samples_seen += batch["labels"].shape[0]
        res.tokens_seen += int(batch["attention_mask"].sum())
        loop.losses.append(torch.as_tensor(loss))
        res.steps_run = step
        bar.update(1)
        if step % tcfg.eval_every == 0 or step == tcfg.max_steps:
            _evaluate_step(model, dev_enc, spec, tcfg, loop, step, on_eval, pad_id, sharded, bar, monitor)
        loop.finished = res.stopped_early or step == tcfg.max_steps
        if checkpoint is not None and (loop.finished or step % checkpoint.every == 0):
            loop.save(checkpoint, model, step_fn)
        if res.stopped_early:
            break
    bar.close()


def _evaluate_step(model, dev_enc, spec, tcfg: TrainConfig, loop: _Loop, step: int, on_eval, pad_id: int,
                   sharded: bool, bar, monitor) -> None:
    """A dev evaluation: history, best-on-dev snapshot, patience."""
    res = loop.res
    mean_loss = _mean_loss(loop.losses, sharded)
    loop.losses.clear()
    if not math.isfinite(mean_loss):
        bar.close()
        raise NonFiniteLoss(f"loss became {mean_loss} by step {step}; lower the learning rate (--lr)")
    t0 = time.perf_counter()
    dev = evaluate(model, dev_enc, spec, tcfg.eval_batch_size, pad_id)
    res.eval_time_s += time.perf_counter() - t0
    res.history.append({"step": step, "train_loss": round(mean_loss, 6), **{f"dev_{k}": v for k, v in dev.items()}})
    bar.set_postfix(loss=f"{mean_loss:.4f}", dev=f"{dev['score']:.4f}")
    if on_eval is not None:
        on_eval(step, dev)
    rank_now = (dev["score"], -dev["loss"] if tcfg.checkpoint_tie_break == "dev_loss" else 0.0)
    if rank_now > loop.best_score:
        loop.best_score, loop.best_snap, loop.bad_evals = rank_now, _snapshot(model), 0
        res.best_step, res.best_dev = step, dev
    else:
        loop.bad_evals += 1
        if tcfg.patience is not None and loop.bad_evals >= tcfg.patience:
            res.stopped_early = True
    if monitor is not None:
        monitor.eval(step, tcfg.max_steps, mean_loss, dev, max(loop.best_score[0], dev["score"]))
