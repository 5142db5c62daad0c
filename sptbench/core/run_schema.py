"""The shape of a run, declared once: `RunSpec` (what defines a run) and `TrainConfig` (its training options).

Each field carries its metadata: the command-line flag and help (`sptbench run --help` is generated from it),
its choices, the sweep-file key that gives it (`sweep`), and the record-key component that records it (`key`) or,
for a field that cannot move a recorded number, why not (`not_in_key`). From this module come:

- the `run` flags and the `--config FILE` keys (sptbench/cli/run.py),
- the scalar keys and axes of a sweep file (sptbench/sweep/spec.py),
- the record key (`record_key`) that `table`, `check`, `compare` and `sweep` resume all use.

tests/test_schema.py enumerates the fields: one that is in no key component and names no reason fails it, and so
does a key field whose change does not change the key. Light on purpose (no torch): `--help` imports it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sptbench.core.argtypes import nonempty, positive_int
from sptbench.core.errors import SptbenchError, unknown_choice

POOLINGS = ("cls", "mean", "last")
HEADS = ("linear", "prompt")
PROMPT_LOSSES = ("label_words", "vocab")
SPLIT_SOURCES = ("sample", "lm-bff")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("fp32", "bf16", "fp16")
FROZEN_MODES = ("dropout", "eval", "cache")
LR_SCHEDULES = ("linear", "constant", "cosine")
DECAY_SCOPES = ("matrices", "all")
SAMPLERS = ("python", "torch")
CHECKPOINT_TIE_BREAKS = ("first", "dev_loss")
# Where a user's runs and sweeps write by default: a git-ignored folder, so that a first run never edits the committed
# reproduction tables (results/v1, results/tuned, ...). The packaged sweep files that write those say so themselves
# (`results_dir: results`).
LOCAL_RESULTS_DIR = "results/local"
LOGGERS = ("none", "tensorboard", "wandb")
RECORD_TO = ("table", "file")


def option(default: Any = None, *, help: str, flag: bool = True, type: Callable | None = None,
           choices: tuple | None = None, key: str | None = None, not_in_key: str | None = None,
           sweep: tuple[str, ...] = (), boolean: bool = False, factory: Callable | None = None) -> Any:
    """A dataclass field with its schema metadata (see the module docstring). `boolean`: an on/off flag."""
    meta = {"help": help, "flag": flag, "type": type, "choices": choices, "key": key, "not_in_key": not_in_key,
            "sweep": sweep, "boolean": boolean}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ------------------------------------------------------------------------------------------------ the record key


LINEAR_HEAD = {"kind": "linear"}


def head_of(rec: dict) -> dict:
    """A record's head section; records without one ran the linear head."""
    head = rec.get("head")
    return head if isinstance(head, dict) else dict(LINEAR_HEAD)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class KeyField:
    """One component of the record key: its name and how a record gives it."""

    name: str
    read: Callable[[dict], Any]


# What makes two runs "the same experiment". Configs, the head and the training section are canonical JSON.
KEY: tuple[KeyField, ...] = (
    KeyField("method", lambda r: r["method"]["name"]),
    KeyField("method_config", lambda r: _canonical(r["method"]["config"])),
    KeyField("task", lambda r: r["task"]["name"]),
    KeyField("task_version", lambda r: r["task"]["version"]),
    KeyField("shots", lambda r: r["protocol"]["shots"]),
    KeyField("train_size", lambda r: r["protocol"]["train_size"]),
    KeyField("split_source", lambda r: r["protocol"]["split_source"]),
    KeyField("seed", lambda r: r["protocol"]["seed"]),
    KeyField("backbone", lambda r: backbone_key(r["backbone"])),
    KeyField("pooling", lambda r: r["backbone"]["pooling"]),
    KeyField("head", lambda r: _canonical(head_of(r))),
    KeyField("data_fingerprint", lambda r: r["data"]["fingerprint"]),
    KeyField("training", lambda r: _canonical(r["training"])),
)
KEY_FIELDS = tuple(k.name for k in KEY)


def backbone_key(backbone: dict) -> str:
    """The backbone's key component: its id, with `@revision` where the run asked for one (records without the field
    asked for none: the hub's default branch)."""
    revision = backbone.get("requested_revision")
    return backbone["id"] if revision is None else f"{backbone['id']}@{revision}"


def record_key(rec: dict) -> tuple:
    """A record's key: the components declared in KEY, in order."""
    return tuple(k.read(rec) for k in KEY)


# ------------------------------------------------------------------------------------------------ the run


@dataclass
class TrainConfig:
    """Training hyper-parameters, the same for every method unless a sweep says otherwise. All of them (but the
    seed, which is the run's) form the record's `training` section, which is one component of the record key."""

    max_steps: int = option(100, help="optimizer steps", type=int, key="training")
    batch_size: int = option(16, help="training batch size (the optimizer's; see --grad-accum)", type=int,
                             key="training")
    grad_accum: int = option(
        1, help="split each batch into this many micro-batches and accumulate their gradients (the same batch in "
        "less memory; dropout draws differ, hence in the key)", type=int, key="training")
    eval_batch_size: int = option(64, help="evaluation batch size", flag=False, key="training")
    lr: float = option(1e-3, help="learning rate, > 0 (default: the method's)", type=float, key="training")
    weight_decay: float = option(0.01, help="AdamW weight decay, >= 0", type=float, key="training")
    weight_decay_scope: str = option(
        "matrices", help="matrices: no decay on biases and norms (as transformers' Trainer); all: every parameter",
        choices=DECAY_SCOPES, key="training")
    warmup_ratio: float = option(0.06, help="share of the steps with linear warmup, in [0, 1)", type=float,
                                 key="training")
    lr_schedule: str = option("linear", help="after warmup: linear decay to zero, constant, or cosine decay to zero",
                              choices=LR_SCHEDULES, key="training")
    max_grad_norm: float | None = option(1.0, help="clip the gradient norm to this (0 or none: no clipping)",
                                         type=float, key="training")
    head_dropout: float = option(0.1, help="dropout in front of the linear head, in [0, 1)", type=float,
                                 key="training")
    eval_every: int = option(20, help="steps between dev evaluations (and at the end)", type=int, key="training")
    patience: int | None = option(
        None, help="early stopping after this many evaluations (>= 1) without improvement (default: never)",
        type=int, key="training")
    group_by_length: bool = option(
        True, help="batches of similar length (less padding); --no-group-by-length: plain random batches",
        boolean=True, key="training")
    sampler: str = option(
        "python", help="the shuffle: python (random.Random(seed * 1000 + epoch)) or torch (DataLoader(shuffle=True) "
        "seeded with the run seed)", choices=SAMPLERS, key="training")
    checkpoint_tie_break: str = option(
        "first", help="which of several dev evaluations tied on the dev score is the kept checkpoint: first (the "
        "earliest) or dev_loss (the lowest dev loss; docs/statistics.md)", choices=CHECKPOINT_TIE_BREAKS,
        key="training")
    frozen_layers: str = option(
        "dropout", help="layers below the first trainable one: dropout (as the stock model trains), eval (no dropout), "
        "cache (no dropout, outputs computed once per sample: few-shot speed)", choices=FROZEN_MODES,
        key="training")
    seed: int = option(13, help="the run's seed (RunSpec.seed)", flag=False, key="seed")


@dataclass
class RunSpec:
    """Everything that defines a run; all of it goes into the record."""

    method: str = option(help="method name (sptbench list methods)", type=nonempty, key="method",
                         sweep=("methods",))
    task: str = option(help="task name (sptbench list tasks)", type=nonempty, key="task", sweep=("tasks",))
    seed: int = option(13, help="run seed, an integer in [0, 2^32)", type=int, key="seed", sweep=("seeds",))
    shots: int | None = option(
        help="K examples per class for train and another K for dev (LM-BFF); default: full data",
        type=positive_int, key="shots", sweep=("shots",))
    train_size: int | None = option(
        help="N training examples sampled from the pool (dev from the rest); default: full data",
        type=positive_int, key="train_size", sweep=("train_size",))
    split_source: str = option("sample", help="lm-bff: the published 16-shot splits", choices=SPLIT_SOURCES,
                               key="split_source", sweep=("split_source",))
    model: str = option("minilm-l6", help="an alias (sptbench list backbones), a hub id or a model folder",
                        type=nonempty, key="backbone", sweep=("model",))
    revision: str | None = option(
        help="the model repo's branch, tag or commit to load (hub ids only; default: its main branch); the resolved "
        "commit is recorded either way", type=nonempty, key="backbone", sweep=("revision",))
    pooling: str | None = option(help="default: from the backbone", choices=POOLINGS, key="pooling",
                                 sweep=("pooling",))
    head: str = option("linear", help="linear: a fresh linear layer on the pooled tokens; prompt: the pretrained LM "
                       "head, frozen, read at the task template's mask over its label words (needs an LM checkpoint)",
                       choices=HEADS, key="head", sweep=("head",))
    prompt_loss: str | None = option(
        help="prompt head training loss: cross-entropy over the label words (default, LM-BFF) or over the whole "
        "vocabulary with the label word as target (LPT)", choices=PROMPT_LOSSES, key="head", sweep=("prompt_loss",))
    template: str | None = option(help="prompt head: the task's template by name (default: its first)",
                                  type=nonempty, key="head", sweep=("template",))
    data_dir: str | None = option(
        help="local data folders, searched in order (A:B; default: $SPTBENCH_DATA_PATH, then $SPTBENCH_DATA_DIR, "
        "else the Hugging Face hub; a task spec's own `data` folder wins)", type=nonempty,
        not_in_key="where the data is read from; the data itself is keyed by its fingerprint", sweep=("data_dir",))
    strict_data: bool = option(
        False, help="refuse data with empty texts (default: keep them, counted in the record's data notes)",
        boolean=True, sweep=("strict_data",),
        not_in_key="it only refuses: a run it lets through reads the same rows, so records the same numbers")
    results_dir: str = option(LOCAL_RESULTS_DIR, help="root of the result tables (git-ignored by default: the "
                              "committed tables are written by the packaged sweep files)", type=nonempty,
                              not_in_key="where the record goes", sweep=("results_dir",))
    method_overrides: dict[str, Any] = option(
        help="method options (--set KEY=VALUE)", flag=False, factory=dict, key="method_config",
        sweep=("method_set",))
    train_overrides: dict[str, Any] = option(
        help="training options (TrainConfig fields)", flag=False, factory=dict, key="training",
        sweep=("train", "method_train"))
    device: str = option("auto", help="auto: CUDA when there is one", choices=DEVICES, key="training",
                         sweep=("device",))
    dtype: str = option("fp32", help="bf16: autocast; fp16: autocast with a GradScaler (loss scaling)",
                        choices=DTYPES, key="training", sweep=("dtype",))
    gradient_checkpointing: bool = option(
        False, help="recompute the trainable layers' activations in the backward pass (less memory, slower)",
        boolean=True, sweep=("gradient_checkpointing",),
        not_in_key="the same numbers: recomputation restores the RNG state (tests/test_resilience.py checks it)")
    checkpoint_every: int | None = option(
        help="save the training state every N steps (and at the end) under --checkpoint-dir; rerunning the same "
        "run resumes from it exactly (default: no checkpoints; Slurm sweeps: at every dev evaluation)",
        type=positive_int, sweep=("checkpoint_every",),
        not_in_key="resumption is exact: the state, RNG and data position are restored (tests/test_resilience.py)")
    checkpoint_dir: str | None = option(
        help="where --checkpoint-every saves (default: <results-dir>/checkpoints)", type=nonempty,
        sweep=("checkpoint_dir",), not_in_key="where the resumable state is kept")
    logger: str = option("none", help="also log the training curves to tensorboard or wandb (extras; off by "
                         "default; nothing is sent unless asked)", choices=LOGGERS, sweep=("logger",),
                         not_in_key="logging only")
    log_dir: str | None = option(help="the logger's folder (default: <results-dir>/logs)", type=nonempty,
                                 sweep=("log_dir",), not_in_key="logging only")
    record_to: str | None = option(
        help="table: append the record to the shared table; file: write it as its own file under "
        "<results>/v1/<backbone>/runs/ (for clusters; `sptbench merge` folds them in). Default: table here, file "
        "in a Slurm sweep", choices=RECORD_TO, sweep=("record_to",), not_in_key="where the record goes")
    save_dir: str | None = option(help="also write the trained parameters + head (safetensors) and the record to this "
                                  "new or empty folder (outside --results-dir)", type=nonempty,
                                  not_in_key="an extra output")
    overwrite: bool = option(False, help="let --save-dir replace a saved run already there", boolean=True,
                             not_in_key="an extra output's permission")
    progress: bool = option(True, help="progress bars (--quiet: none)", flag=False, not_in_key="display only")
    sweep: dict[str, Any] | None = option(
        help="set by `sptbench sweep` (name, grid index): recorded as-is", flag=False,
        not_in_key="provenance: the same run from a sweep or by hand is the same experiment")
    # the test-once protocol of a dev-selected grid (sweep `test: selected`): no test here; the best-on-dev state is
    # saved under <results>/pending/<run id>/ and sptbench.reports.selection tests the group's winner once
    defer_test: bool = option(
        False, help="test later, only if dev selects this configuration (sweep `test: selected`)", flag=False,
        not_in_key="when test is evaluated, not what it gives: the saved best-on-dev state is tested unchanged")


def flag_fields(cls: type) -> list[dataclasses.Field]:
    """The fields that have a command-line flag (and a `--config` key)."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("flag")]


def sweep_keys() -> dict[str, dataclasses.Field]:
    """Sweep-file key -> the RunSpec field it gives."""
    return {name: f for f in dataclasses.fields(RunSpec) for name in f.metadata.get("sweep", ())}


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


TRAIN_FLAGS = tuple(f.name for f in flag_fields(TrainConfig))


def option_value(f: dataclasses.Field, value: Any, where: str) -> Any:
    """A value for the option `f` from a file (a sweep's one value for every run), checked as its flag would be:
    true/false for an on/off option, one of its choices, or what its argument type accepts (same type back)."""
    meta, ok = f.metadata, True
    if meta["boolean"]:
        ok = isinstance(value, bool)
    elif meta["choices"] is not None:
        ok = value in meta["choices"]
    elif meta["type"] is not None:
        try:
            ok = not isinstance(value, bool) and meta["type"](str(value)) == value
        except Exception:  # argparse types raise ArgumentTypeError, ValueError, ...: all mean "not valid"
            ok = False
    if not ok:
        raise SptbenchError(f"{where}: '{f.name}': {value!r} is not a valid value ({meta['help']})")
    return value


def check_choices(obj: Any) -> None:
    """Every field of a RunSpec or TrainConfig with declared choices holds one of them (or None where allowed)."""
    for f in dataclasses.fields(obj):
        choices, value = f.metadata.get("choices"), getattr(obj, f.name)
        if choices is not None and value not in choices and not (value is None and f.default is None):
            raise unknown_choice(f"value for '{f.name}'", str(value), choices)


def check_train_config(tcfg: TrainConfig) -> None:
    """Choices and value ranges of the training options (one line each); nonsense is refused, not silently used."""
    check_choices(tcfg)
    if tcfg.max_steps < 1 or tcfg.eval_every < 1 or tcfg.batch_size < 1 or tcfg.eval_batch_size < 1:
        raise SptbenchError("max_steps, eval_every, batch_size and eval_batch_size must be positive")
    if not isinstance(tcfg.grad_accum, int) or not 1 <= tcfg.grad_accum <= tcfg.batch_size:
        raise SptbenchError(f"training option 'grad_accum' must be an integer in [1, batch_size "
                            f"{tcfg.batch_size}], got {tcfg.grad_accum}")
    for name in ("lr", "weight_decay", "warmup_ratio", "max_grad_norm", "head_dropout"):
        value = getattr(tcfg, name)
        if value is not None and not math.isfinite(value):
            raise SptbenchError(f"training option '{name}' must be a finite number, got {value}")
    if tcfg.lr <= 0:
        raise SptbenchError(f"training option 'lr' must be > 0, got {tcfg.lr}")
    if tcfg.weight_decay < 0:
        raise SptbenchError(f"training option 'weight_decay' must be >= 0, got {tcfg.weight_decay}")
    if not 0 <= tcfg.warmup_ratio < 1:
        raise SptbenchError(f"training option 'warmup_ratio' must be in [0, 1), got {tcfg.warmup_ratio}")
    if tcfg.patience is not None and tcfg.patience < 1:
        raise SptbenchError(f"training option 'patience' must be >= 1 (or null: never stop early), got {tcfg.patience}")
    if not 0.0 <= tcfg.head_dropout < 1.0:
        raise SptbenchError(f"training option 'head_dropout' must be in [0, 1), got {tcfg.head_dropout}")
    if tcfg.max_grad_norm is not None and tcfg.max_grad_norm < 0:
        raise SptbenchError(f"training option 'max_grad_norm' must be >= 0 (0 or none: no clipping), got "
                            f"{tcfg.max_grad_norm}")
