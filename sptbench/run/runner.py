"""One run: spec -> data -> model -> trained state -> record. The runner knows no method by name."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
import json
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
from sptbench.core.run_schema import RunSpec
from sptbench.data.metrics import warm_up as warm_up_metrics
from sptbench.data.tasks import TaskData, load_task
from sptbench.data.templates import encode_prompt_rows, head_section, prompt_setup
from sptbench.methods.registry import (
    FitContext,
    FitResult,
    Method,
    config_dict,
)
from sptbench.records.build import now_iso, run_record
from sptbench.records.io import append_record, dump_record
from sptbench.records.keys import canonical_json
from sptbench.records.runfiles import write_run_file
from sptbench.run.assemble import frozen_backbone
from sptbench.run.checks import (  # noqa: F401 (re-exported)
    MAX_SEED,
    check_run,
    check_seed,
    check_spec,
    make_train_config,
    train_config,
)
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
from sptbench.training.monitor import Monitor, make_backend
from sptbench.training.resume import RunCheckpoints


@dataclass
class RunOutcome:
    record: dict
    table: Path
    model: Any = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def fit_method(method: Method, ctx: FitContext) -> FitResult:
    """A method's whole protocol on `ctx`: its own stages (`Method.fit`: SPT's search -> select -> re-train), or
    apply + one training run; dev selection throughout. The runner and `sptbench.fit` both run this."""
    return method.fit(ctx) if method.fit else default_fit(method, ctx)


def run(spec: RunSpec) -> RunOutcome:
    """Run one configuration end to end and append its record (also for a failed run). Test is evaluated once."""
    start = time.perf_counter()
    created = now_iso()
    git_state()  # the code this process runs: read before it runs anything
    # everything checkable is checked before any training: a finished run must never be lost to a bad option, an
    # unwritable results folder or table, or a save folder that is a file or holds another run
    method, cfg, tcfg, path = check_run(spec)
    resolve_device(spec.device)  # `cuda` where there is none (a sweep checks it where it runs: launcher local)
    start += warm_up()  # one-time imports are no part of this run's wall_s or eval_s
    task: TaskData = load_task(
        spec.task,
        data_dir=spec.data_dir,
        shots=spec.shots,
        seed=spec.seed,
        split_source=spec.split_source,
        train_size=spec.train_size,
        strict_data=spec.strict_data,
    )
    setup = prompt_setup(task.spec, spec.head, spec.prompt_loss, spec.template, causal=prompt_head_is_causal(spec))
    accelerator = _device(spec.device)
    device = accelerator.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    checkpoints = _checkpoints(spec, tcfg, task)
    monitor = _monitor(spec, tcfg, task)
    ctx, info, pad_id = _fit_context(spec, task, setup, cfg, tcfg, device, checkpoints, monitor)
    try:
        status, error, fit, test, eval_s = _fit_and_test(spec, method, ctx, device, pad_id)
    finally:
        if monitor is not None:
            monitor.close()

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
        path = _write_outputs(spec, path, record, fit.model if status == "ok" else None)
        if checkpoints is not None:  # recorded: the resumable state has served its purpose
            checkpoints.remove()
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


def run_identity(spec: RunSpec, tcfg: TrainConfig, task: TaskData) -> str:
    """Text naming what a run computes (its key options, training options and data): a rerun of the same run gives
    the same, and so finds its checkpoints."""
    keyed = {f.name: getattr(spec, f.name) for f in dataclasses.fields(RunSpec) if f.metadata.get("key")}
    return canonical_json({"spec": keyed, "training": dataclasses.asdict(tcfg), "data": task.fingerprint})


def _checkpoints(spec: RunSpec, tcfg: TrainConfig, task: TaskData) -> RunCheckpoints | None:
    """The run's resumable state (--checkpoint-every), under --checkpoint-dir or <results>/checkpoints."""
    if spec.checkpoint_every is None:
        return None
    root = spec.checkpoint_dir or Path(spec.results_dir) / "checkpoints"
    return RunCheckpoints(root, run_identity(spec, tcfg, task), spec.checkpoint_every)


def _monitor(spec: RunSpec, tcfg: TrainConfig, task: TaskData) -> Monitor | None:
    """Progress lines in sweep runs (one per dev evaluation), and the --logger's curves; None when neither."""
    lines = spec.sweep is not None and world()[0] == 0
    if not lines and spec.logger == "none":
        return None
    label = f"{spec.method} {spec.task} seed {spec.seed}"
    name = f"{spec.method}-{spec.task}-s{spec.seed}-" + hashlib.sha256(
        run_identity(spec, tcfg, task).encode()).hexdigest()[:8]
    backend = make_backend(spec.logger, spec.log_dir or Path(spec.results_dir) / "logs", name,
                           {"run": json.loads(run_identity(spec, tcfg, task))}) if world()[0] == 0 else None
    return Monitor(label, lines=lines, backend=backend)


def _fit_context(spec: RunSpec, task: TaskData, setup, cfg, tcfg: TrainConfig, device,
                 checkpoints: RunCheckpoints | None = None, monitor: Monitor | None = None
                 ) -> tuple[FitContext, Any, int]:
    """`fit_context` for a run spec."""
    return fit_context(task, setup, cfg, tcfg, device, model=spec.model, seed=spec.seed, pooling=spec.pooling,
                       progress=spec.progress, revision=spec.revision, fp16=spec.dtype == "fp16",
                       gradient_checkpointing=spec.gradient_checkpointing, checkpoints=checkpoints, monitor=monitor)


def fit_context(task: TaskData, setup, cfg, tcfg: TrainConfig, device, *, model: str, seed: int,
                pooling: str | None, progress: bool, revision: str | None = None, fp16: bool = False,
                gradient_checkpointing: bool = False, checkpoints: RunCheckpoints | None = None,
                monitor: Monitor | None = None) -> tuple[FitContext, Any, int]:
    """What a method's fit gets: a model builder (seeded, frozen backbone on the device), the encoder and the
    training loop bound to this run (fp16 loss scaling, checkpoints, monitor). The first model is built here: it
    loads the tokenizer and provenance once and fails early on a bad --model. Returns the context, the backbone's
    provenance and the pad id."""
    info_box: dict[str, Any] = {}
    backbone = model

    def build_model():
        seed_everything(seed)
        model, tokenizer, info = frozen_backbone(  # quiet: transformers' load report and bar off, as ours is
            backbone, task.spec.num_labels, pooling=pooling, head_dropout=tcfg.head_dropout, prompt=setup,
            quiet=not progress, revision=revision,
        )
        info_box.update(tokenizer=tokenizer, info=info, causal=model.family.causal)
        if gradient_checkpointing:
            model.gradient_checkpointing = True
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
        kw.setdefault("progress", progress)
        kw.setdefault("fp16", fp16)
        kw.setdefault("monitor", monitor)
        if checkpoints is not None:  # one file per training call, in call order (a method's stages)
            kw.setdefault("checkpoint", checkpoints.next())
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
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec.dtype)
    status, error, fit, test, eval_s = "ok", None, None, {}, 0.0
    try:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            fit = fit_method(method, ctx)
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


def _write_outputs(spec: RunSpec, path: Path, record: dict, model) -> Path:
    """Append the record, or write it as its own file (--record-to file), and save the model with --save-dir.
    Checked before the run, these can still fail (a full disk, a table changed meanwhile): then the record goes to a
    recovery file and the error names it. Returns where the record went."""
    try:
        if spec.record_to == "file":
            path = write_run_file(spec.results_dir, record)
        else:
            append_record(path, record)
    except (OSError, SptbenchError) as e:
        where = _recover(record)
        hint = f" (append it: cat {where} >> {path})" if where.startswith("/") else ""
        saved = ""
        if model is not None and spec.save_dir:
            try:
                save_trained(model, record, Path(spec.save_dir), overwrite=spec.overwrite)
                saved = f"; the model is saved in {spec.save_dir}"
            except (OSError, SptbenchError):
                saved = f"; saving the model to {spec.save_dir} failed too"
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise SptbenchError(
            f"the run finished but its record could not be appended to {path} ({reason}); it is in {where}{hint}{saved}"
        ) from None
    if model is not None and spec.save_dir:
        try:
            save_trained(model, record, Path(spec.save_dir), overwrite=spec.overwrite)
        except (OSError, SptbenchError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise SptbenchError(
                f"the record is in {path} (run {record['run_id']}), but saving the model to {spec.save_dir} failed: "
                f"{reason}"
            ) from None
    return path


def training_section(tcfg: TrainConfig, device_type: str, dtype: str) -> dict:
    """The record's `training` section (part of the record key): every training option but the seed, + device, dtype."""
    return {k: v for k, v in dataclasses.asdict(tcfg).items() if k != "seed"} | {"device": device_type, "dtype": dtype}

