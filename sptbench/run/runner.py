"""One run: spec -> data -> model -> trained state -> record. The runner knows no method by name."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sptbench.core.errors import SptbenchError, describe
from sptbench.core.run_schema import RunSpec, check_choices, check_train_config
from sptbench.data.metrics import warm_up as warm_up_metrics
from sptbench.data.tasks import TaskData, load_task
from sptbench.data.templates import encode_prompt_rows, head_section, prompt_setup
from sptbench.methods.registry import (
    FitContext,
    FitResult,
    Method,
    build_config,
    check_config_layers,
    coerce_overrides,
    config_dict,
    get_method,
)
from sptbench.models.backbones import check_backbone_name
from sptbench.records.build import now_iso, run_record
from sptbench.records.io import append_record, check_appendable, check_writable_dir, dump_record, table_path
from sptbench.records.keys import setting_name
from sptbench.run.assemble import frozen_backbone
from sptbench.run.persist import pending_dir, save_trained
from sptbench.run.provenance import (
    device_label,
    git_state,
    hardware_id,
    package_versions,
    peak_memory_mb,
    resolve_device,
)
from sptbench.training.loop import (
    NonFiniteLoss,
    TrainConfig,
    encode_rows,
    evaluate,
    train,
    world,
)


@dataclass
class RunOutcome:
    record: dict
    table: Path
    model: Any = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_config(spec: RunSpec, method: Method) -> TrainConfig:
    """The run's training options: the method's default lr, then the overrides, coerced and range-checked."""
    if "seed" in spec.train_overrides:  # the run's seed is one option, not also a training one that would lose
        raise SptbenchError(f"'seed' is a run option, not a training one: give it as seed: "
                            f"{spec.train_overrides['seed']!r} (or --seed), not under train:")
    overrides = {"lr": method.default_lr, **spec.train_overrides}
    values = coerce_overrides(TrainConfig, overrides, "training option") | {"seed": spec.seed}
    tcfg = TrainConfig(**values)
    check_train_config(tcfg)
    return tcfg


MAX_SEED = 2**32  # numpy's seeds are 32-bit


def check_seed(seed: Any) -> int:
    """A run seed: an integer in [0, 2^32) (numpy's range), not a bool or a float."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < MAX_SEED:
        raise SptbenchError(f"seed must be an integer in [0, 2^32), got {seed!r}")
    return seed


def _check_path(value: Any, what: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise SptbenchError(f"{what} must be a non-empty path, got {value!r}")


def check_spec(spec: RunSpec) -> tuple[Method, Any, TrainConfig, Path]:
    """Everything about a run that can be checked without data or a model (what `sptbench sweep` checks at every
    grid point before any run): names, types and ranges of every option. Returns the method, its config, the
    training config and the table the record will go to."""
    from sptbench.data.specs import load_spec
    from sptbench.data.tasks import check_protocol

    for name, value in (("method", spec.method), ("task", spec.task), ("model", spec.model)):
        if not isinstance(value, str) or not value:
            raise SptbenchError(f"{name} must be a non-empty name, got {value!r}")
    check_seed(spec.seed)
    check_backbone_name(spec.model)
    method = get_method(spec.method)
    method.check_head(spec.head)
    if spec.head != "prompt" and (spec.template is not None or spec.prompt_loss is not None):
        raise SptbenchError("template and prompt_loss apply to the prompt head only (--head prompt)")
    cfg = build_config(method, spec.method_overrides)
    tcfg = train_config(spec, method)
    check_choices(spec)  # every option with declared choices (dtype, device, pooling, head, ...)
    _check_path(spec.results_dir, "results_dir")
    for name in ("data_dir", "save_dir"):
        if getattr(spec, name) is not None:
            _check_path(getattr(spec, name), name)
    setting = setting_name(spec.shots, spec.train_size)
    task_spec = load_spec(spec.task)
    check_protocol(task_spec, spec.shots, spec.seed, spec.split_source, spec.train_size)
    check_config_layers(cfg, spec.model, None if spec.head == "prompt" else task_spec.num_labels)
    return method, cfg, tcfg, table_path(spec.results_dir, spec.model, setting)


def check_save_dir(save_dir: str, overwrite: bool) -> None:
    """`--save-dir`: a folder (or a path one can be made at) that holds no saved run, unless `overwrite`."""
    out = Path(save_dir)
    if out.exists() and not out.is_dir():
        raise SptbenchError(f"--save-dir {out} is a file, not a folder")
    held = [name for name in ("trained.safetensors", "record.yaml") if (out / name).exists()]
    if held and not overwrite:
        raise SptbenchError(f"--save-dir {out} already holds a saved run ({held[0]}); pass --overwrite to replace it")
    check_writable_dir(out)


def _recover(record: dict) -> str:
    """Put a record that could not be appended where the user finds it: a file in the temp folder, else stdout."""
    import tempfile

    text = dump_record(record)
    try:
        fd, name = tempfile.mkstemp(prefix=f"sptbench-record-{record['run_id']}-", suffix=".yaml")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return name
    except OSError:
        print(text, end="", flush=True)
        return "the YAML printed above"


def _device(name: str):
    """accelerate picks the device (and, for bf16, autocast); `auto` means CUDA when there is one."""
    from accelerate import Accelerator

    # cpu=True also without CUDA: then a data-parallel launch (torchrun / accelerate launch) is MULTI_CPU (gloo)
    return Accelerator(cpu=resolve_device(name).type == "cpu")


# Libraries that load on first use (seconds each on a small machine): methods import them when they build a model.
LAZY_LIBRARIES = ("peft",)


def warm_up() -> float:
    """The process's one-time start-up, done before a run's clock starts: evaluate (the metrics) and the libraries
    methods import lazily. Returns the seconds it took (0 after the first run of a process)."""
    t0 = time.perf_counter()
    warm_up_metrics()
    for name in LAZY_LIBRARIES:
        importlib.import_module(name)
    return time.perf_counter() - t0


def default_fit(method: Method, ctx: FitContext) -> FitResult:
    """Single-stage methods: apply, train with dev selection."""
    model = ctx.build_model()
    method.apply(model, ctx.method_cfg)
    result = ctx.train(model, ctx.encode(ctx.task.train), ctx.encode(ctx.task.dev))
    return FitResult(model=model, result=result)


def run(spec: RunSpec) -> RunOutcome:
    """Run one configuration end to end and append its record (also for a failed run). Test is evaluated once."""
    start = time.perf_counter()
    created = now_iso()
    git_state()  # the code this process runs: read before it runs anything
    # everything checkable is checked before any training: a finished run must never be lost to a bad option, an
    # unwritable results folder or table, or a save folder that is a file or holds another run
    method, cfg, tcfg, path = check_spec(spec)
    resolve_device(spec.device)  # `cuda` where there is none (a sweep checks it where it runs: launcher local)
    check_appendable(path)
    if spec.save_dir:
        check_save_dir(spec.save_dir, spec.overwrite)
    start += warm_up()  # one-time imports are no part of this run's wall_s or eval_s
    task: TaskData = load_task(
        spec.task,
        data_dir=spec.data_dir,
        shots=spec.shots,
        seed=spec.seed,
        split_source=spec.split_source,
        train_size=spec.train_size,
    )
    setup = prompt_setup(task.spec, spec.head, spec.prompt_loss, spec.template, causal=prompt_head_is_causal(spec))
    accelerator = _device(spec.device)
    device = accelerator.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    ctx, info, pad_id = _fit_context(spec, task, setup, cfg, tcfg, device)
    status, error, fit, test, eval_s = _fit_and_test(spec, method, ctx, device, pad_id)

    untested = spec.defer_test and status == "ok"
    record = run_record(
        **_what_ran(spec, task, info, setup, tcfg, device), created=created, status=status, error=error,
        method=method.name, method_config=config_dict(cfg), result=fit.result if fit else None, test=test,
        eval_s=eval_s, params=fit.model.count_parameters() if fit else {}, peak_memory_mb=peak_memory_mb(device),
        wall_s=time.perf_counter() - start, stages=fit.stages if fit else {}, extra=fit.record_extra() if fit else {},
        versions=package_versions(), git=dict(git_state()),
        sweep=dict(spec.sweep) if spec.sweep is not None else None, selection={"tested": False} if untested else None,
    )
    rank, world_size = world()
    if untested:
        if rank == 0:  # the state first: a record that says "untested" always has the state its test needs
            save_trained(fit.model, record, pending_dir(spec.results_dir, record["run_id"]))
    if world_size > 1:  # data-parallel launch: one record (rank 0's), with the throughput of all processes
        record["throughput"]["num_processes"] = world_size
    main = rank == 0
    if main:
        _write_outputs(spec, path, record, fit.model if status == "ok" else None)
    if status != "ok":
        raise SptbenchError(f"run failed and was recorded as failed in {path}: {error}")
    return RunOutcome(record=record, table=path, model=fit.model)


def prompt_head_is_causal(spec: RunSpec) -> bool:
    """Whether the run's prompt head reads a causal LM (it then takes the task's causal template); the sweep's plan
    keys ask the same."""
    if spec.head == "linear":
        return False
    from sptbench.models.backbones import backbone_is_causal

    return backbone_is_causal(spec.model)


def _fit_context(spec: RunSpec, task: TaskData, setup, cfg, tcfg: TrainConfig, device) -> tuple[FitContext, Any, int]:
    """What a method's fit gets: a model builder (seeded, frozen backbone on the device), the encoder and the
    training loop bound to this run. The first model is built here: it loads the tokenizer and provenance once and
    fails early on a bad --model. Returns the context, the backbone's provenance and the pad id."""
    info_box: dict[str, Any] = {}

    def build_model():
        seed_everything(spec.seed)
        model, tokenizer, info = frozen_backbone(  # quiet: transformers' load report and bar off, as ours is
            spec.model, task.spec.num_labels, pooling=spec.pooling, head_dropout=tcfg.head_dropout, prompt=setup,
            quiet=not spec.progress,
        )
        info_box.update(tokenizer=tokenizer, info=info, causal=model.family.causal)
        return model.to(device)

    check_max_length(build_model(), info_box["tokenizer"], task.spec)
    tokenizer, info = info_box["tokenizer"], info_box["info"]
    pad_id = tokenizer.pad_token_id or 0

    def encode(rows):
        if setup is not None:
            return encode_prompt_rows(rows, tokenizer, setup, task.spec.max_length, causal=info_box["causal"])
        return encode_rows(rows, tokenizer, task.spec)

    def run_train(model, train_enc, dev_enc, tcfg_=None, **kw):
        model.check_length(task.spec.max_length, f"task '{task.spec.name}' max_length")  # the method's prompts too
        kw.setdefault("pad_id", pad_id)
        kw.setdefault("progress", spec.progress)
        return train(model, train_enc, dev_enc, task.spec, tcfg_ or tcfg, **kw)

    ctx = FitContext(
        task=task,
        method_cfg=cfg,
        tcfg=tcfg,
        tokenizer=tokenizer,
        build_model=build_model,
        encode=encode,
        train=run_train,
        log=lambda msg: print(msg, file=sys.stderr) if world()[0] == 0 else None,  # once per data-parallel launch
    )
    return ctx, info, pad_id


def check_max_length(model, tokenizer, spec) -> None:
    """The task's max_length leaves room for text after the tokenizer's special tokens (at least one token per text
    column) and fits the backbone's positions: both checked before any training."""
    special = tokenizer.num_special_tokens_to_add(pair=len(spec.text_columns) == 2)
    need = special + len(spec.text_columns)
    if spec.max_length < need:
        raise SptbenchError(f"task '{spec.name}' max_length {spec.max_length} leaves no room for text: the "
                            f"tokenizer adds {special} special tokens; use at least {need}")
    model.check_length(spec.max_length, f"task '{spec.name}' max_length")


def _fit_and_test(spec: RunSpec, method: Method, ctx: FitContext, device, pad_id: int) -> tuple:
    """Fit (the method's stages, or one training run) and evaluate test once unless deferred. Returns (status,
    error, fit, test metrics, eval seconds); a failure a sweep records is returned, any other raises."""
    task, tcfg, encode = ctx.task, ctx.tcfg, ctx.encode
    dtype = torch.bfloat16 if spec.dtype == "bf16" else None
    status, error, fit, test, eval_s = "ok", None, None, {}, 0.0
    try:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            fit = method.fit(ctx) if method.fit else default_fit(method, ctx)
            if not spec.defer_test:
                fit.model.check_length(task.spec.max_length, f"task '{task.spec.name}' max_length")
                test_enc = encode(task.test)
                t0 = time.perf_counter()
                test = evaluate(fit.model, test_enc, task.spec, tcfg.eval_batch_size, pad_id)
                eval_s = time.perf_counter() - t0
    except Exception as e:
        # a sweep records any run-time failure and goes on (docs/sweeps.md); a lone run records a non-finite loss
        if not (isinstance(e, NonFiniteLoss) or spec.sweep is not None):
            raise
        status, error, fit = "failed", str(e) if isinstance(e, SptbenchError) else describe(e), None
    return status, error, fit, test, eval_s


def _what_ran(spec: RunSpec, task: TaskData, info, setup, tcfg: TrainConfig, device) -> dict:
    """The `run_record` arguments that say what ran: the task and its data, the backbone and head, the training
    options, the device."""
    return {
        "task": {"name": task.spec.name, "version": task.spec.version,  # + the spec file (not in the key)
                 "spec_path": task.spec.path, "spec_sha256": task.spec.sha256},
        "protocol": dict(task.protocol),
        "backbone": info.as_record(),
        "head": head_section(setup),
        "data": {"source": task.source, "location": task.location, "fingerprint": task.fingerprint,
                 "notes": list(task.notes)},
        "training": training_section(tcfg, device.type, spec.dtype),
        "selection_metric": task.spec.selection_metric,
        "n_test": len(task.test),
        "device": device_label(device),
        "hardware": hardware_id(device),
        "dtype": spec.dtype,
    }


def _write_outputs(spec: RunSpec, path: Path, record: dict, model) -> None:
    """Append the record (and save the model with --save-dir). Checked before the run, these can still fail (a full
    disk, a table changed meanwhile): then the record goes to a recovery file and the error names it."""
    try:
        append_record(path, record)
    except (OSError, SptbenchError) as e:
        where = _recover(record)
        hint = f" (append it: cat {where} >> {path})" if where.startswith("/") else ""
        saved = ""
        if model is not None and spec.save_dir:
            try:
                save_trained(model, record, Path(spec.save_dir))
                saved = f"; the model is saved in {spec.save_dir}"
            except (OSError, SptbenchError):
                saved = f"; saving the model to {spec.save_dir} failed too"
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise SptbenchError(
            f"the run finished but its record could not be appended to {path} ({reason}); it is in {where}{hint}{saved}"
        ) from None
    if model is not None and spec.save_dir:
        try:
            save_trained(model, record, Path(spec.save_dir))
        except (OSError, SptbenchError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise SptbenchError(
                f"the record is in {path} (run {record['run_id']}), but saving the model to {spec.save_dir} failed: "
                f"{reason}"
            ) from None


def training_section(tcfg: TrainConfig, device_type: str, dtype: str) -> dict:
    """The record's `training` section (part of the record key): every training option but the seed, + device, dtype."""
    return {k: v for k, v in dataclasses.asdict(tcfg).items() if k != "seed"} | {"device": device_type, "dtype": dtype}

