"""Batches: tokenised rows, padded per batch, shuffled per epoch (python or torch sampler), length-grouped, and the
data-parallel shard / micro-batch of a batch. A batch stream is a pure function of the seed and its position, which
is what lets a resumed run (training/resume.py) continue on the very batch it stopped at."""

from __future__ import annotations

import random
from collections.abc import Iterator

import torch


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
    start: int = 0,
) -> Iterator[dict[str, torch.Tensor]]:
    """One epoch of padded batches. Length grouping sorts within shuffled chunks of 50 batches (as HF's sampler).
    `order`: the epoch's shuffled order, drawn by the caller (the "torch" sampler); else shuffled with `seed`.
    `start`: the epoch's batches from this one on (the earlier ones are drawn but not collated)."""
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
    for idx in batches[start:]:
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
    encoded: list[dict], batch_size: int, *, seed: int, group_by_length: bool, pad_id: int = 0, sampler: str = "python",
    skip: int = 0,
):
    """Endless shuffled batches, a new order every epoch (`sampler`: see TrainConfig.sampler). `skip`: start after
    that many batches (a resumed run), exactly where an uninterrupted stream would be."""
    orders = torch_epochs(len(encoded), seed) if sampler == "torch" else None
    per_epoch = -(-len(encoded) // batch_size)
    epoch, start = divmod(skip, per_epoch) if per_epoch else (0, 0)
    for _ in range(epoch if orders is not None else 0):
        next(orders)
    while True:
        yield from iterate_batches(
            encoded,
            batch_size,
            shuffle=True,
            seed=seed * 1000 + epoch,
            group_by_length=group_by_length,
            pad_id=pad_id,
            order=next(orders) if orders is not None else None,
            start=start,
        )
        epoch, start = epoch + 1, 0


def shard(batch: dict[str, torch.Tensor], rank: int, world_size: int) -> dict[str, torch.Tensor]:
    """This rank's contiguous part of a global batch, trimmed to its own longest sequence."""
    n = batch["labels"].shape[0]
    per = -(-n // world_size)
    lo, hi = min(n, rank * per), min(n, (rank + 1) * per)
    part = {k: v[lo:hi] for k, v in batch.items()}
    width = int(part["attention_mask"].sum(1).max()) if hi > lo else 1
    return {k: (v[:, :width] if v.ndim == 2 else v) for k, v in part.items()}


def micro_batches(batch: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    """A batch split into `parts` contiguous micro-batches (fewer when it has fewer rows), each trimmed to its own
    longest sequence: gradient accumulation."""
    if parts <= 1:
        return [batch]
    parts_ = (shard(batch, i, parts) for i in range(parts))
    return [part for part in parts_ if part["labels"].shape[0]]
