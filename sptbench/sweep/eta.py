"""A sweep's ETA: each run to do is estimated from the recorded times of ok runs like it (same method and backbone,
the same task and setting where there are some; else any method on the backbone: its measured cost), scaled to its
training budget, else `DEFAULT_RUN_S`. Where the sweep's own folder says nothing, the records of the whole results
tree are asked (`results_tree`). Also the matching rules resume shares with it (a spec's pooling and device against
a record's).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from sptbench.core.errors import SptbenchError
from sptbench.records.keys import setting_name

if TYPE_CHECKING:  # the runner imports torch; the CLI imports this module before it needs torch
    from sptbench.run.runner import RunSpec
    from sptbench.sweep.spec import Sweep

DEFAULT_RUN_S = 120.0  # ETA of a run with no recorded run on the same backbone


def results_tree(results_dir: str | Path) -> Path:
    """The root of the results tree a results folder belongs to: its highest ancestor (or itself) named `results`
    (`results/local` and `results/tuned` belong to `results`), else the folder itself."""
    path = Path(results_dir).resolve()
    tops = [p for p in (path, *path.parents) if p.name == "results"]
    return tops[-1] if tops else path


def _setting(rec: dict) -> str:
    return setting_name(rec["protocol"]["shots"], rec["protocol"]["train_size"])


def _train_samples(training: dict) -> int | None:
    """Training examples a run is set to see (max_steps x batch_size), the unit the ETA scales train time by."""
    steps, batch = training.get("max_steps"), training.get("batch_size")
    return steps * batch if isinstance(steps, int) and isinstance(batch, int) and steps * batch > 0 else None


class _Timing(NamedTuple):
    """One ok record's times, as the ETA uses them."""

    wall: float
    eval_s: float
    samples: int | None  # training examples it was set to see
    test_s: float  # of eval_s, its test evaluation
    device: str | None  # `throughput.device`: `cpu (2 threads)` or the GPU's name


def wall_index(records: Iterable[dict]) -> list[tuple[str, dict]]:
    """Recorded times of ok runs by (method, task, backbone, setting), (method, task, backbone), (method, backbone,
    setting), (method, backbone), then any method's by (backbone, setting) and (backbone): the backbone's measured
    cost. The same method on another backbone says little about this one's time."""
    levels: list[tuple[str, dict]] = [
        ("method/task/backbone/setting", defaultdict(list)),
        ("method/task/backbone", defaultdict(list)),
        ("method/backbone/setting", defaultdict(list)),
        ("method/backbone", defaultdict(list)),
        ("backbone/setting (any method)", defaultdict(list)),
        ("backbone (any method)", defaultdict(list)),
    ]
    for rec in records:
        time = rec.get("time") or {}
        if rec.get("status") != "ok" or not isinstance(time.get("wall_s"), int | float):
            continue
        eval_s = time.get("eval_s") if isinstance(time.get("eval_s"), int | float) else 0.0
        wall = float(time["wall_s"])
        throughput = rec.get("throughput") or {}
        rate = throughput.get("eval_samples_per_s")
        n_test = (rec.get("protocol") or {}).get("n_test")
        test_s = n_test / rate if isinstance(rate, int | float) and rate > 0 and isinstance(n_test, int) else 0.0
        entry = _Timing(wall, min(float(eval_s), wall), _train_samples(rec.get("training") or {}),
                        min(test_s, eval_s), throughput.get("device"))
        m, t, b, st = rec["method"]["name"], rec["task"]["name"], rec["backbone"]["id"], _setting(rec)
        for (_, index), key in zip(levels, ((m, t, b, st), (m, t, b), (m, b, st), (m, b), (b, st), (b,)), strict=True):
            index[key].append(entry)
    return levels


def estimate_s(spec, index: list[tuple[str, dict]], train_samples: int | None = None,
               device: str | None = None) -> tuple[float, str]:
    """A run's expected wall time: the mean over recorded runs at the most specific level that has one, else the
    default; at that level, only the runs recorded on `device` (a GPU's name, or `cpu (N threads)`: CPU runs in
    parallel sweep parts take longer per run) where there are any. Each recorded run's time outside evaluation is
    scaled by train_samples / its own (a 300-step budget takes about 3x a 100-step one; the SPT search scales with
    it), its evaluation time is taken as recorded, less its test evaluation for a run that defers its test
    (`test: selected`). At the levels without the task (the method has no run on it), the mean is scaled by the
    task's factor (`_task_factor`) where other methods have run on it in this setting: longer inputs, or larger dev
    sets, take longer for every method."""
    setting = setting_name(spec.shots, spec.train_size)
    keys = (
        (spec.method, spec.task, spec.model, setting),
        (spec.method, spec.task, spec.model),
        (spec.method, spec.model, setting),
        (spec.method, spec.model),
        (spec.model, setting),
        (spec.model,),
    )

    skip_test = getattr(spec, "defer_test", False)

    def scaled(t: _Timing) -> float:
        wall, eval_s = (t.wall - t.test_s, t.eval_s - t.test_s) if skip_test else (t.wall, t.eval_s)
        if train_samples is None or t.samples is None:
            return wall
        return eval_s + (wall - eval_s) * train_samples / t.samples

    for (rule, level), key in zip(index, keys, strict=True):
        if level.get(key):
            here = [t for t in level[key] if t.device == device]
            with_task = spec.task in key[1:2]
            factor = None if with_task else _task_factor(index[0][1], spec.task, spec.model, setting, scaled)
            if factor is not None:
                rule += " x task factor"
            if device is not None and not here:
                rule += " (other devices)"
            return statistics.mean(scaled(t) for t in here or level[key]) * (factor or 1.0), rule
    return DEFAULT_RUN_S, "default"


def _task_factor(by_run: dict, task: str, model: str, setting: str, scaled) -> float | None:
    """How much longer runs on `task` take than on the other tasks, on `model` in `setting`: the mean, over the
    methods recorded there on it and on other tasks, of their mean time on it over their mean time on the others
    (each run scaled to the new run's budget by `scaled`; the method to estimate has only the others); None where
    no such method is recorded. `by_run`: the first index level."""
    ratios = []
    for (m, t, b, st), runs in by_run.items():
        if (t, b, st) == (task, model, setting):
            others = [x for (m2, t2, b2, st2), xs in by_run.items() if (m2, b2, st2) == (m, b, st) and t2 != t
                      for x in xs]
            if others:
                ratios.append(statistics.mean(map(scaled, runs)) / statistics.mean(map(scaled, others)))
    return statistics.mean(ratios) if ratios else None


def spec_train_samples(spec: RunSpec) -> int:
    """Training examples the planned run is set to see (max_steps x batch_size)."""
    from sptbench.methods.registry import get_method
    from sptbench.run.runner import train_config

    tcfg = train_config(spec, get_method(spec.method))
    return tcfg.max_steps * tcfg.batch_size


def pooling_matches(spec, rec: dict) -> bool:
    """An explicit pooling must be the recorded one; the backbone's default (None) is whatever it resolved to."""
    return spec.pooling is None or rec["backbone"]["pooling"] == spec.pooling


def device_matches(spec, rec: dict) -> bool:
    """`auto` accepts a run on any device; an explicit device must be the recorded one."""
    return spec.device == "auto" or rec["training"].get("device") == spec.device


def device_here(sweep: Sweep) -> str | None:
    """The `throughput.device` the sweep's runs will record when they run in this process (local launcher); None
    for Slurm, whose nodes are not this machine, and for a device this machine lacks (preflight says so)."""
    if sweep.launcher != "local":
        return None
    from sptbench.run.provenance import device_label, resolve_device

    try:
        return device_label(resolve_device(sweep.device))
    except SptbenchError:
        return None


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    d, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    if d:
        return f"{d}d{h:02d}h{m:02d}m"
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{s:02d}s"
