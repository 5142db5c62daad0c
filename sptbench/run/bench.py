"""`sptbench bench`: training and inference throughput of a method on a synthetic batch, against the floor measured
in the same process: the frozen backbone's forward+backward over the same tokens (what any method that trains
something at the input must pay) and its forward alone (docs/bench.md)."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sptbench.core.errors import SptbenchError
from sptbench.run.provenance import (
    check_device_dtype,
    device_label,
    hardware_id,
    peak_memory_mb,
    resolve_device,
)

if TYPE_CHECKING:  # torch is imported where it is used: `sptbench --help` must not wait for it
    import torch
    from torch import nn

BENCH_VERSION = 1
FLOOR = "floor"  # the row name of the frozen-backbone floor


@dataclass
class Shape:
    batch: int = 16
    seq_len: int = 128
    steps: int = 10
    warmup: int = 3
    num_labels: int = 2


class _Timer:
    """Per-step wall times: CUDA events on a GPU (no host sync inside the loop), perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def time(self, fn: Callable[[], Any]) -> None:
        if self.cuda:
            import torch

            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            self.marks.append((start, end))
        else:
            t0 = time.perf_counter()
            fn()
            self.marks.append(time.perf_counter() - t0)

    def median_s(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return statistics.median(s.elapsed_time(e) / 1000.0 for s, e in self.marks)
        return statistics.median(self.marks)


def _peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated since the last reset; CPU: the process's peak RSS so far (as run records)."""
    return round(peak_memory_mb(device), 1)


def _reset_peak(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def synthetic_batch(
    shape: Shape, vocab: int, device: torch.device, seed: int = 0, mask_token_id: int | None = None
) -> dict[str, torch.Tensor]:
    """Random token ids at full length (no padding), all-ones mask, random labels; with `mask_token_id` (the prompt
    head of an encoder) one mask token per example, second to last, where a template's `<mask> .` would put it."""
    import torch

    g = torch.Generator().manual_seed(seed)
    low = min(1000, vocab // 2)  # above the special tokens of BERT/RoBERTa-like vocabularies
    ids = torch.randint(low, vocab, (shape.batch, shape.seq_len), generator=g)
    if mask_token_id is not None:
        ids[:, max(0, shape.seq_len - 2)] = mask_token_id
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "labels": torch.randint(0, shape.num_labels, (shape.batch,), generator=g).to(device),
    }


def add_input_gradient(model) -> nn.Parameter:
    """Make the floor model differentiate through every layer: a zero shift on the word embeddings' output that
    trains. Nothing else in the backbone trains, so backward computes activation gradients only."""
    import torch
    from torch import nn

    emb = model.family.word_embeddings(model.backbone)
    shift = nn.Parameter(torch.zeros(emb.weight.shape[1], device=emb.weight.device))
    emb.register_parameter("bench_shift", shift)
    emb.register_forward_hook(lambda mod, inputs, out: out + mod.bench_shift.to(out.dtype))
    return shift


def measure(
    model, batch: dict[str, torch.Tensor], shape: Shape, *, lr: float, dtype: str, compile: bool = False
) -> dict[str, Any]:
    """Median train step (forward + loss + backward + clip + AdamW + schedule) and eval step (inference_mode).
    `compile`: the model's forward through `torch.compile` (compiled during the warm-up steps)."""
    import torch
    import torch.nn.functional as F

    from sptbench.training.loop import build_optimizer

    forward = torch.compile(model) if compile else model

    device = batch["input_ids"].device
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)  # fp16 unscaled: throughput only
    autocast = torch.autocast(device.type, dtype=half or torch.bfloat16, enabled=half is not None)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    optimizer, scheduler = build_optimizer(model.parameters(), lr, 0.01, shape.warmup + shape.steps, 0.06)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]

    def train_step():
        with autocast:
            loss = F.cross_entropy(forward(**inputs).logits.float(), batch["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    def eval_step():
        with torch.inference_mode(), autocast:
            forward(**inputs)

    _reset_peak(device)
    model.train()
    for _ in range(shape.warmup):
        train_step()
    timer = _Timer(device)
    for _ in range(shape.steps):
        timer.time(train_step)
    train_s = timer.median_s()
    peak = _peak_memory_mb(device)
    model.eval()
    for _ in range(shape.warmup):
        eval_step()
    timer = _Timer(device)
    for _ in range(shape.steps):
        timer.time(eval_step)
    eval_s = timer.median_s()
    tokens = int(batch["attention_mask"].sum())
    return {
        "train_samples_per_s": round(shape.batch / train_s, 3),
        "train_tokens_per_s": round(tokens / train_s, 1),
        "eval_samples_per_s": round(shape.batch / eval_s, 3),
        "peak_memory_mb": peak,
        "train_step_ms": round(1000 * train_s, 3),
        "eval_step_ms": round(1000 * eval_s, 3),
    }


def bench(
    methods: list[str],
    model_name: str,
    shape: Shape,
    *,
    device: str = "auto",
    dtype: str = "fp32",
    overrides: dict[str, Any] | None = None,
    frozen_layers: str = "dropout",
    compile: bool = False,
    log: Callable[[str], None] | None = None,
    head: str = "linear",
    prompt_loss: str | None = None,
) -> list[dict]:
    """One record per method (plus the floor's numbers in each), all measured in this process on one batch.

    The floor is measured before and after the methods; ratios use the faster of the two. `frozen_layers` is the
    training option of that name: with `cache`, layers below a method's first trainable layer are computed once for
    the (repeated) batch, which is the steady state of few-shot training once every example has been seen.
    `compile`: floor and methods alike run through `torch.compile` (the warm-up steps include compilation).
    `head="prompt"`: every model reads the frozen LM head at a mask token (SST-2's label words); methods that train
    nothing with it (`head`, `zero_shot`) are skipped, as `zero_shot` is with the linear head."""
    import torch

    from sptbench.data.specs import load_spec
    from sptbench.data.templates import head_section, prompt_setup
    from sptbench.methods.registry import build_config, check_config_layers, get_method
    from sptbench.run.assemble import frozen_backbone
    from sptbench.run.provenance import git_state, package_versions

    _check_options(shape, device, dtype, frozen_layers)
    chosen = [get_method(m) for m in methods]
    configs = [build_config(m, overrides) for m in chosen]  # bad --set fails before any measurement
    for cfg in configs:  # and sizes no memory holds
        check_config_layers(cfg, model_name, shape.num_labels if head == "linear" else None)
    dev = resolve_device(device)
    setup = prompt_setup(load_spec("sst2"), head, prompt_loss) if head != "linear" else None
    if setup is not None and shape.num_labels != len(setup.labels):
        raise SptbenchError(f"the prompt head benches SST-2's {len(setup.labels)} label words, not {shape.num_labels}")
    torch.manual_seed(0)
    base, _, info = frozen_backbone(model_name, shape.num_labels, prompt=setup)  # once: methods start from a copy
    vocab = base.family.word_embeddings(base.backbone).weight.shape[0]
    limit = getattr(base.backbone.config, "max_position_embeddings", None) or getattr(
        base.backbone.config, "n_positions", None
    )
    if limit is not None and shape.seq_len > limit - 2:
        raise SptbenchError(f"--seq-len {shape.seq_len} is too long for {model_name} (at most {limit - 2})")
    _check_lengths(chosen, configs, base, shape.seq_len, head)
    mask_id = base.head.mask_token_id if base.head_kind == "prompt" else None
    batch = synthetic_batch(shape, vocab, dev, mask_token_id=mask_id)
    say = log or (lambda msg: None)

    floor_model = copy.deepcopy(base)
    add_input_gradient(floor_model)
    floor_model.to(dev)
    say(f"{FLOOR}: frozen {model_name} forward+backward to the input, and forward only")
    floor_before = measure(floor_model, batch, shape, lr=1e-3, dtype=dtype, compile=compile)

    common = {
        "backbone": {"id": model_name, "family": info.family, "num_parameters": info.num_parameters},
        "head": head_section(setup),
        "shape": {"batch_size": shape.batch, "seq_len": shape.seq_len, "steps": shape.steps, "warmup": shape.warmup},
        "versions": package_versions(),
        "git": dict(git_state()),
    }
    measured, skipped = _measure_methods(list(zip(chosen, configs, strict=True)), base, batch, shape, dev, say,
                                         head=head, dtype=dtype, compile=compile, frozen_layers=frozen_layers)
    for line in skipped:
        say(f"skipped {line}")
    if not measured:
        raise SptbenchError(f"nothing to measure: skipped {'; '.join(skipped)}")
    # The floor again, after the methods: clocks, caches and allocators warm up over a process (a GPU's first
    # measurement is often its slowest). Ratios use the faster floor of the two, so they never flatter a method.
    say(f"{FLOOR}: again")
    floor_after = measure(floor_model, batch, shape, lr=1e-3, dtype=dtype, compile=compile)
    del floor_model
    floor = _faster_floor(floor_before, floor_after)
    common |= {"throughput_extra": {"device": device_label(dev), "hardware": hardware_id(dev), "dtype": dtype},
               "frozen_layers": frozen_layers, "compile": compile}
    return [_bench_record(method, cfg, params, got, floor, common) for method, cfg, params, got in measured]


def _measure_methods(methods: list, base, batch, shape: Shape, dev, say, *, head: str, dtype: str, compile: bool,
                     frozen_layers: str) -> tuple[list[tuple], list[str]]:
    """Each (method, config) applied to a copy of `base` and measured; the methods that cannot be timed are named."""
    import torch

    measured, skipped = [], []
    for method, cfg in methods:
        if head not in method.heads:  # `head` trains the linear head, `zero_shot` reads the prompt head untrained
            skipped.append(f"{method.name} (works with --head {' or '.join(method.heads)})")
            continue
        torch.manual_seed(0)
        model = copy.deepcopy(base)
        method.apply(model, cfg)
        if not any(p.requires_grad for p in model.parameters()):  # zero_shot: nothing to time a training step of
            skipped.append(f"{method.name} (trains nothing)")
            continue
        say(f"{method.name}" + (f" (frozen layers: {frozen_layers})" if frozen_layers != "dropout" else ""))
        model.frozen_mode = frozen_layers
        model.to(dev)
        got = measure(model, batch, shape, lr=method.default_lr, dtype=dtype, compile=compile)
        measured.append((method, cfg, model.count_parameters(), got))
        del model
    return measured, skipped


def _check_lengths(methods: list, configs: list, base, seq_len: int, head: str) -> None:
    """Before anything is measured: `seq_len` plus each method's input prompt tokens fits the backbone's positions
    (each method applied to a throw-away copy; only the position count is read from it)."""
    import torch

    for method, cfg in zip(methods, configs, strict=True):
        if head not in method.heads:
            continue
        with torch.random.fork_rng(devices=[]):
            model = copy.deepcopy(base)
            method.apply(model, cfg)
        model.check_length(seq_len, f"--seq-len with {method.name}")
        del model


def _check_options(shape: Shape, device: str, dtype: str, frozen_layers: str) -> None:
    """The bench options, checked before any model is built."""
    from sptbench.core.run_schema import FROZEN_MODES

    check_device_dtype(device, dtype)
    for name, value in (("batch", shape.batch), ("seq-len", shape.seq_len), ("steps", shape.steps)):
        if value < 1:
            raise SptbenchError(f"--{name} must be positive, got {value}")
    if shape.warmup < 0:
        raise SptbenchError(f"--warmup must be >= 0, got {shape.warmup}")
    if frozen_layers not in FROZEN_MODES:
        raise SptbenchError(f"unknown frozen layers mode '{frozen_layers}'. Choices: {', '.join(FROZEN_MODES)}")


def _faster_floor(before: dict, after: dict) -> dict:
    """The floor's numbers: the faster of its two measurements (ratios never flatter a method), both kept."""
    floor = dict(max((before, after), key=lambda f: f["train_samples_per_s"]))
    floor["eval_samples_per_s"] = max(before["eval_samples_per_s"], after["eval_samples_per_s"])
    floor["eval_step_ms"] = min(before["eval_step_ms"], after["eval_step_ms"])
    floor["measurements"] = {
        "train_samples_per_s": [before["train_samples_per_s"], after["train_samples_per_s"]],
        "eval_samples_per_s": [before["eval_samples_per_s"], after["eval_samples_per_s"]],
    }
    return floor


def _bench_record(method, cfg, params: dict, got: dict, floor: dict, common: dict) -> dict:
    """One method's bench record (the order of its keys is the file's)."""
    from sptbench.methods.registry import config_dict
    from sptbench.records.build import now_iso

    return {
        "bench_version": BENCH_VERSION,
        "created": now_iso(),
        "method": {"name": method.name, "config": config_dict(cfg)},
        **{k: common[k] for k in ("backbone", "head", "shape", "versions", "git")},
        "params": params,
        "throughput": {
            k: got[k] for k in ("train_samples_per_s", "train_tokens_per_s", "eval_samples_per_s", "peak_memory_mb")
        }
        | common["throughput_extra"],
        "frozen_layers": common["frozen_layers"],
        "compile": common["compile"],
        "step_ms": {"train": got["train_step_ms"], "eval": got["eval_step_ms"]},
        "floor": floor,
        "ratios": {
            "train_vs_floor": round(got["train_samples_per_s"] / floor["train_samples_per_s"], 4),
            "eval_vs_floor": round(got["eval_samples_per_s"] / floor["eval_samples_per_s"], 4),
        },
    }


def format_table(records: list[dict]) -> str:
    """The floor, then one row per method."""
    from tabulate import tabulate

    floor = records[0]["floor"]
    rows = [
        [
            f"{FLOOR} (frozen fwd+bwd / fwd)",
            "",
            floor["train_samples_per_s"],
            floor["train_tokens_per_s"],
            floor["eval_samples_per_s"],
            floor["peak_memory_mb"],
            1.0,
            1.0,
        ]
    ]
    for r in records:
        t = r["throughput"]
        rows.append(
            [
                r["method"]["name"],
                r["params"]["trainable"],
                t["train_samples_per_s"],
                t["train_tokens_per_s"],
                t["eval_samples_per_s"],
                t["peak_memory_mb"],
                r["ratios"]["train_vs_floor"],
                r["ratios"]["eval_vs_floor"],
            ]
        )
    head = records[0]
    shape = head["shape"]
    kind = (head.get("head") or {}).get("kind", "linear")  # bench records before the prompt head lack it
    title = (
        f"{head['backbone']['id']} ({kind} head) on {head['throughput']['device']}, {head['throughput']['dtype']}, "
        f"batch {shape['batch_size']} x {shape['seq_len']} tokens, median of {shape['steps']} steps after "
        f"{shape['warmup']}"
    )
    headers = ["method", "trainable", "train samples/s", "train tokens/s", "eval samples/s", "peak MB",
               "train/floor", "eval/floor"]
    return title + "\n" + tabulate(rows, headers=headers, tablefmt="github", intfmt=",", floatfmt=".4g")
