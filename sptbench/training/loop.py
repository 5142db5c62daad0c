"""Training with dev selection: tokenise once, length-grouped dynamic batches, AdamW with warmup and a linear
(constant, cosine) schedule, gradient clipping, evaluation every N steps on dev, best-on-dev checkpoint, early
stopping. Test is never read here. Every choice that differs from a plain PyTorch loop is a `TrainConfig` field, so
the stock loop can be expressed exactly (`STOCK_SETTINGS`, docs/conformance.md).

The pieces (`encode_rows`, `iterate_batches`, `loss_on`, `build_optimizer`, `evaluate`) are public so that
multi-stage methods (SPT-DARTS' alternating search) reuse them instead of writing a loop of their own.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
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


class NonFiniteLoss(SptbenchError):
    """The loss became NaN or inf: the run stops and is recorded as failed."""


def encode_rows(rows: list[dict], tokenizer, spec) -> list[dict]:
    """Tokenise rows once (truncated to the task's max length); padding happens per batch."""
    columns = [[row[c] for row in rows] for c in spec.text_columns]
    enc = tokenizer(*columns, truncation=True, max_length=spec.max_length)
    out = []
    for i, row in enumerate(rows):
        item = {"input_ids": enc["input_ids"][i], "label": int(row["label"])}
        if "token_type_ids" in enc:
            item["token_type_ids"] = enc["token_type_ids"][i]
        out.append(item)
    return out


def _collate(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    types = torch.zeros((len(items), width), dtype=torch.long) if "token_type_ids" in items[0] else None
    for i, it in enumerate(items):
        n = len(it["input_ids"])
        ids[i, :n] = torch.tensor(it["input_ids"])
        mask[i, :n] = 1
        if types is not None:
            types[i, :n] = torch.tensor(it["token_type_ids"])
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([it["label"] for it in items])}
    if types is not None:
        batch["token_type_ids"] = types
    return batch


def iterate_batches(
    encoded: list[dict],
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    group_by_length: bool,
    pad_id: int = 0,
    order: list[int] | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """One epoch of padded batches. Length grouping sorts within shuffled chunks of 50 batches (as HF's sampler).
    `order`: the epoch's shuffled order, drawn by the caller (the "torch" sampler); else shuffled with `seed`."""
    rng = random.Random(seed)
    if order is None:
        order = list(range(len(encoded)))
        if shuffle:
            rng.shuffle(order)
    if group_by_length:
        chunk = batch_size * 50
        order = [
            i
            for start in range(0, len(order), chunk)
            for i in sorted(order[start : start + chunk], key=lambda j: -len(encoded[j]["input_ids"]))
        ]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if shuffle and group_by_length:
        rng.shuffle(batches)
    for idx in batches:
        yield _collate([encoded[i] for i in idx], pad_id)


def torch_epochs(n: int, seed: int) -> Iterator[list[int]]:
    """The epoch orders of `DataLoader(range(n), shuffle=True, generator=torch.Generator().manual_seed(seed))`:
    each epoch's iterator first draws its base seed from the generator, then `RandomSampler` a permutation, and
    one more (the empty remainder slice of `num_samples % n`) when the epoch is exhausted.
    Our own copy (checked against DataLoader in tests/test_train.py) because the trainer batches tokenised rows
    itself and must not consume the global RNG the way a DataLoader without a generator would."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        torch.empty((), dtype=torch.int64).random_(generator=generator)
        order = torch.randperm(n, generator=generator).tolist()
        torch.randperm(n, generator=generator)
        yield order


def forever(
    encoded: list[dict], batch_size: int, *, seed: int, group_by_length: bool, pad_id: int = 0, sampler: str = "python"
):
    """Endless shuffled batches, a new order every epoch (`sampler`: see TrainConfig.sampler)."""
    orders = torch_epochs(len(encoded), seed) if sampler == "torch" else None
    epoch = 0
    while True:
        yield from iterate_batches(
            encoded,
            batch_size,
            shuffle=True,
            seed=seed * 1000 + epoch,
            group_by_length=group_by_length,
            pad_id=pad_id,
            order=next(orders) if orders is not None else None,
        )
        epoch += 1


def world() -> tuple[int, int]:
    """(rank, world size) of a data-parallel launch (`accelerate launch`, which the runner's Accelerator joins);
    (0, 1) in a plain process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(batch: dict[str, torch.Tensor], rank: int, world_size: int) -> dict[str, torch.Tensor]:
    """This rank's contiguous part of a global batch, trimmed to its own longest sequence."""
    n = batch["labels"].shape[0]
    per = -(-n // world_size)
    lo, hi = min(n, rank * per), min(n, (rank + 1) * per)
    part = {k: v[lo:hi] for k, v in batch.items()}
    width = int(part["attention_mask"].sum(1).max()) if hi > lo else 1
    return {k: (v[:, :width] if v.ndim == 2 else v) for k, v in part.items()}


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
    return model(**model_inputs(batch, device), labels=batch["labels"].to(device)).loss


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
        logits = model(**model_inputs(batch, device)).logits.float()
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
    preds, losses, probs = scored_predictions(model, encoded, batch_size, pad_id)
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


def default_step(params, tcfg: TrainConfig, sharded: bool, rank: int, world_size: int):
    """One optimizer step on a batch (AdamW with the run's schedule and clipping); in a data-parallel launch on this
    rank's shard, its loss scaled by the shard's share of the batch and the gradients summed over ranks."""
    optimizer, scheduler = optimizer_for(params, tcfg)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]

    def step_fn(model, batch, step):
        if sharded:
            part = shard(batch, rank, world_size)
            share = part["labels"].shape[0] / batch["labels"].shape[0]
            loss = loss_on(model, part) * share if share else torch.zeros((), device=trainable[0].device)
            if share:
                loss.backward()
            all_reduce_grads(trainable)
        else:
            loss = loss_on(model, batch)
            loss.backward()
        clip_gradients(trainable, tcfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step_fn


def _mean_loss(losses: list[torch.Tensor], sharded: bool) -> float:
    """The mean training loss since the last evaluation (the only host sync between evaluations)."""
    stacked = torch.stack(losses).float()
    if sharded:  # each rank's loss is its share of the global batch's mean loss
        import torch.distributed as dist

        dist.all_reduce(stacked)
    return float(stacked.mean())


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
) -> TrainResult:
    """Train for `tcfg.max_steps`, evaluating on dev every `eval_every` steps; ends with the best dev checkpoint.

    In a data-parallel launch (`world()` > 1) every rank draws the same global batch; the default step trains on this
    rank's shard of it and sums the gradients over ranks (each shard's loss is scaled by its share of the batch), so
    the update is the single-process one. A custom `step_fn` gets the whole batch on every rank (no speed-up, same
    result). Samples and tokens count the global batch."""
    if not train_enc or not dev_enc:
        raise SptbenchError("training needs a non-empty train and dev split")
    check_train_config(tcfg)
    if hasattr(model, "frozen_mode"):
        model.frozen_mode = tcfg.frozen_layers
        model.frozen_cache.clear()
    model.train()
    rank, world_size = world()
    sharded = world_size > 1 and step_fn is None
    if step_fn is None:
        step_fn = default_step(params if params is not None else model.parameters(), tcfg, sharded, rank, world_size)
    res = TrainResult(best_step=None, best_dev={}, steps_run=0, stopped_early=False)
    best_score, best_snap, bad_evals = (-math.inf, -math.inf), None, 0
    batches = forever(train_enc, tcfg.batch_size, seed=tcfg.seed, group_by_length=tcfg.group_by_length, pad_id=pad_id,
                      sampler=tcfg.sampler)
    bar = tqdm(total=tcfg.max_steps, desc="train", disable=not progress or rank != 0, leave=False, dynamic_ncols=True)
    losses: list[torch.Tensor] = []
    for step in range(1, tcfg.max_steps + 1):
        batch = next(batches)
        t0 = time.perf_counter()
        loss = step_fn(model, batch, step)
        res.train_time_s += time.perf_counter() - t0
        res.samples_seen += batch["labels"].shape[0]
        res.tokens_seen += int(batch["attention_mask"].sum())
        losses.append(torch.as_tensor(loss))
        res.steps_run = step
        bar.update(1)
        if step % tcfg.eval_every and step != tcfg.max_steps:
            continue
        mean_loss = _mean_loss(losses, sharded)
        losses.clear()
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
        if rank_now > best_score:
            best_score, best_snap, bad_evals = rank_now, _snapshot(model), 0
            res.best_step, res.best_dev = step, dev
        else:
            bad_evals += 1
            if tcfg.patience is not None and bad_evals >= tcfg.patience:
                res.stopped_early = True
                break
    bar.close()
    if best_snap is not None:
        _restore(model, best_snap)
    if hasattr(model, "frozen_cache"):
        model.frozen_cache.clear()
    model.eval()
    return res

