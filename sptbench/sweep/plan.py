"""`sptbench sweep`: a grid of runs from one YAML file (regimes x tasks x methods x hyper-parameter values x seeds),
resumable (runs already recorded are skipped), run here one after another or as a submitit (Slurm) job array
(docs/sweeps.md). Dev selection over a grid, and the test-once protocol, live in sptbench/reports/selection.py.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import itertools
import json
import os
import re
import statistics
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from sptbench.core import run_schema as schema
from sptbench.core import safe_yaml
from sptbench.core.argtypes import nonempty, nonneg_int, positive_int
from sptbench.core.errors import SptbenchError, unknown_choice
from sptbench.records.io import TABLE_DIR, canonical_json, read_records, record_key, record_table_path, setting_name
from sptbench.sweep.claims import claim, claim_name, claims_dir

if TYPE_CHECKING:  # the runner imports torch; the CLI imports this module before it needs torch
    from sptbench.run.runner import RunSpec

# The keys of a sweep file: its own, then those that give a run's fields (declared in sptbench/core/run_schema.py, as a
# value, a list of values for an axis, or a per-method mapping), then how it runs.
SWEEP_KEYS = (
    "name",
    "description",
    *schema.sweep_keys(),
    "tasks_dir",
    "launcher",
    "slurm",
    "test",
    "select_within",
)
TEST_MODES = ("all", "selected")  # every grid point tested, or only each group's dev-selected one (selection.py)
SLURM_KEYS = ("partition", "gpus", "time", "mem", "cpus", "array_parallelism")
LAUNCHERS = ("local", "slurm")
# Launcher -> (package it needs, how to install it). `local` needs nothing beyond sptbench.
LAUNCHER_PACKAGES = {"slurm": ("submitit", "pip install 'sptbench[slurm]' (or: pip install submitit)")}
DEFAULT_RUN_S = 120.0  # ETA of a run with no recorded run of the same method on the same backbone
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# keys whose value is one non-empty string: the sweep's name, launcher, and the run fields given as one value
# (head, prompt_loss and template may be lists: the head axis, checked by _heads)
_STRING_KEYS = ("name", "launcher", *(k for k, f in schema.sweep_keys().items() if k == f.name and f.type in (
    "str", "str | None") and k not in ("head", "prompt_loss", "template")))


@dataclass
class Sweep:
    """A parsed, validated sweep file: everything `specs()` needs to expand the grid."""

    name: str
    path: str
    model: str
    tasks: list[str]
    methods: list[str]
    regimes: list[tuple[int | None, int | None]]  # (shots, train_size); (None, None) = full data
    seeds: list[int]
    configs: dict[str, list[tuple[dict, dict]]]  # method -> [(method overrides, train overrides)], grid order
    split_source: str = "sample"
    pooling: str | None = None
    heads: list[tuple[str, str | None, str | None]] = field(default_factory=lambda: [("linear", None, None)])
    data_dir: str | None = None
    results_dir: str = "results"
    device: str = "auto"
    dtype: str = "fp32"
    launcher: str = "local"
    slurm: dict[str, Any] = field(default_factory=dict)
    description: str | None = None
    test: str = "all"
    # method -> config keys whose values split its selection groups (`test: selected` picks one winner per value:
    # e.g. lpt: [layer] tests each layer's dev-best learning rate, for the layer analysis)
    select_within: dict[str, list[str]] = field(default_factory=dict)

    def selection_groups(self, method: str) -> list[tuple[str, int]]:
        """Per configuration of `method`: its selection group's label and how many configurations that group has."""
        keys = self.select_within.get(method, [])
        labels = [canonical_json({k: {**t, **m}.get(k) for k in keys}) for m, t in self.configs[method]]
        counts = Counter(labels)
        return [(label, counts[label]) for label in labels]

    def specs(self, progress: bool = False) -> list:
        """The runs, in order: regime, task, method, head (head, prompt loss, template), configuration (grid order),
        seed."""
        from sptbench.run.runner import RunSpec

        out = []
        for (shots, train_size), task, method, (head, prompt_loss, template) in itertools.product(
            self.regimes, self.tasks, self.methods, self.heads
        ):
            configs = self.configs[method]
            groups = self.selection_groups(method)
            for index, (method_overrides, train_overrides) in enumerate(configs):
                group, group_configs = groups[index]
                for seed in self.seeds:
                    out.append(
                        RunSpec(
                            method=method,
                            task=task,
                            seed=seed,
                            shots=shots,
                            train_size=train_size,
                            split_source=self.split_source,
                            model=self.model,
                            pooling=self.pooling,
                            head=head,
                            prompt_loss=prompt_loss,
                            template=template,
                            data_dir=self.data_dir,
                            results_dir=self.results_dir,
                            method_overrides=dict(method_overrides),
                            train_overrides=dict(train_overrides),
                            device=self.device,
                            dtype=self.dtype,
                            progress=progress,
                            sweep={"name": self.name, "config_index": index, "configs": len(configs),
                                   **({"group": group, "group_configs": group_configs}
                                      if method in self.select_within else {})},
                            defer_test=self.test == "selected",
                        )
                    )
        return out


# ---------------------------------------------------------------------------------------------------- parsing


def _values(raw: Any, where: str) -> list:
    """A scalar or a non-empty list of values (a list is a grid)."""
    if isinstance(raw, list):
        if not raw:
            raise SptbenchError(f"{where}: empty grid (an empty list); give at least one value")
        return list(raw)
    return [raw]


def _grid(mapping: Any, where: str) -> list[dict]:
    """Every combination of a `{key: value or [values]}` mapping, in grid order (the last key varies fastest)."""
    if mapping is None:
        return [{}]
    if not isinstance(mapping, dict):
        raise SptbenchError(f"{where} must be a mapping of option -> value or [values], got {type(mapping).__name__}")
    axes = [[(key, v) for v in _values(value, f"{where}.{key}")] for key, value in mapping.items()]
    return [dict(combo) for combo in itertools.product(*axes)]


def _ints(raw: Any, where: str, allow_none: bool = False) -> list:
    values = _values(raw, where)
    for v in values:
        if v is None and allow_none:
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise SptbenchError(f"{where}: expected positive integers, got {v!r}")
    return values


def _names(raw: Any, where: str) -> list[str]:
    values = _values(raw, where)
    bad = [v for v in values if not isinstance(v, str)]
    if bad:
        raise SptbenchError(f"{where}: expected names, got {bad[0]!r}")
    dup = [v for v, n in Counter(values).items() if n > 1]
    if dup:
        raise SptbenchError(f"{where}: '{dup[0]}' is listed twice")
    return values


def _per_method(raw: Any, key: str, methods: list[str], where: str, kind: str = "mapping") -> dict[str, Any]:
    """A `{method: options}` mapping over the sweep's methods; `kind` says what each method's options are."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SptbenchError(f"{where}: '{key}' must be a mapping of method -> options")
    extra = [m for m in raw if m not in methods]
    if extra:
        names = ", ".join(methods)
        raise SptbenchError(f"{where}: {key} names method '{extra[0]}', which is not in 'methods' ({names})")
    for m, options in raw.items():
        if kind == "mapping" and options is not None and not isinstance(options, dict):
            raise SptbenchError(f"{where}: {key}.{m} must be a mapping of option -> value or [values]")
        if kind == "list" and not isinstance(options, list):
            raise SptbenchError(f"{where}: {key}.{m} must be a list of grid keys")
    return raw


def require_launcher(launcher: str) -> None:
    """Fail now, with how to install it, when the launcher's package is missing."""
    if launcher not in LAUNCHERS:
        raise unknown_choice("launcher", launcher, LAUNCHERS)
    if launcher in LAUNCHER_PACKAGES:
        package, how = LAUNCHER_PACKAGES[launcher]
        try:
            importlib.import_module(package)
        except ImportError:
            raise SptbenchError(f"launcher '{launcher}' needs the package '{package}': {how}") from None


def _heads(raw: dict, tasks: list[str], where: str) -> list[tuple[str, str | None, str | None]]:
    """The head axis: `head` x (for the prompt head) `prompt_loss` x `template`, each a value or a list; every
    combination is checked against every task (a template name must exist in each)."""
    from sptbench.data.tasks import load_spec
    from sptbench.data.templates import prompt_setup

    kinds = _values("linear" if raw.get("head") is None else raw["head"], f"{where}: head")
    losses = _values(raw.get("prompt_loss"), f"{where}: prompt_loss")
    templates = _values(raw.get("template"), f"{where}: template")
    combos: list[tuple[str, str | None, str | None]] = []
    for kind in kinds:
        for combo in [(kind, None, None)] if kind == "linear" else [(kind, x, t) for x in losses for t in templates]:
            if combo not in combos:
                combos.append(combo)
    for task, combo in itertools.product(tasks, combos):
        try:
            prompt_setup(load_spec(task), *combo)
        except SptbenchError as e:
            raise SptbenchError(f"{where}: {task}: {e}") from None
    return combos


def parse_sweep(raw: Any, where: str = "sweep", *, overrides: dict[str, Any] | None = None) -> Sweep:
    """Check a sweep mapping field by field and every grid point (method configs, training options, protocols)."""
    from sptbench.data.tasks import apply_tasks_dirs, check_protocol, list_tasks, load_spec
    from sptbench.methods.registry import build_config, get_method, load_methods
    from sptbench.run.runner import RunSpec, check_seed, check_spec, train_config

    if not isinstance(raw, dict):
        raise SptbenchError(f"{where}: a sweep file must be a mapping")
    for key in raw:
        if key not in SWEEP_KEYS:
            raise unknown_choice(f"key in {where}", str(key), SWEEP_KEYS)
    raw = {**raw, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    for key in ("tasks", "methods", "seeds"):
        if raw.get(key) is None:
            raise SptbenchError(f"{where}: '{key}' is required")
    for key in _STRING_KEYS:
        if raw.get(key) is not None and (not isinstance(raw[key], str) or not raw[key].strip()):
            raise SptbenchError(f"{where}: '{key}' must be a non-empty string, got {raw[key]!r}")

    name = raw.get("name") or Path(where).stem
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise SptbenchError(f"{where}: 'name' must be letters, digits, '.', '_' or '-', got {name!r}")
    if raw.get("tasks_dir") is not None:  # user task folders: searched first, here and in every worker (env var)
        apply_tasks_dirs(_names(raw["tasks_dir"], f"{where}: tasks_dir"), f"{where}: tasks_dir")
    tasks = _names(raw["tasks"], f"{where}: tasks")
    known_tasks = list_tasks()
    for t in tasks:
        if t not in known_tasks:
            raise unknown_choice(f"task in {where}", t, known_tasks)
    registry = load_methods()
    # `methods: all`: every registered method that works with the sweep's head(s) (e.g. the reference suite)
    every = raw["methods"] == "all"
    methods = sorted(registry) if every else _names(raw["methods"], f"{where}: methods")
    for m in methods:
        if m not in registry:
            raise unknown_choice(f"method in {where}", m, registry)
    seeds = _values(raw["seeds"], f"{where}: seeds")
    for seed in seeds:
        try:
            check_seed(seed)
        except SptbenchError as e:
            raise SptbenchError(f"{where}: seeds: {e}") from None
    if len(set(seeds)) != len(seeds):
        raise SptbenchError(f"{where}: seeds must be distinct, got {seeds}")

    shots = _ints(raw["shots"], f"{where}: shots") if raw.get("shots") is not None else []
    sizes = _ints(raw["train_size"], f"{where}: train_size") if raw.get("train_size") is not None else []
    regimes = [(k, None) for k in shots] + [(None, n) for n in sizes] or [(None, None)]

    split_source = raw.get("split_source") or "sample"
    run_fields = schema.sweep_keys()
    for key in _STRING_KEYS:  # one value with declared choices (device, dtype, pooling, split_source)
        choices = run_fields[key].metadata["choices"] if key in run_fields else None
        if raw.get(key) is not None and choices is not None and raw[key] not in choices:
            raise unknown_choice(f"{key} in {where}", str(raw[key]), choices)
    pooling = raw.get("pooling")
    model = raw.get("model") or "minilm-l6"
    if not isinstance(model, str):
        raise SptbenchError(f"{where}: 'model' must be a backbone name, hub id or folder")
    heads = _heads(raw, tasks, where)
    if every:
        methods = [m for m in methods if all(head in registry[m].heads for head, _, _ in heads)]
    for m, (head, _, _) in itertools.product(methods, heads):
        try:
            registry[m].check_head(head)
        except SptbenchError as e:
            raise SptbenchError(f"{where}: {e}") from None

    for task in tasks:
        spec = load_spec(task)
        for (k, n), seed in itertools.product(regimes, seeds):
            try:
                check_protocol(spec, k, seed, split_source, n)
            except SptbenchError as e:
                raise SptbenchError(f"{where}: {task} ({setting_name(k, n)}, seed {seed}): {e}") from None

    shared_train = raw.get("train")
    if shared_train is not None and not isinstance(shared_train, dict):
        raise SptbenchError(f"{where}: 'train' must be a mapping of training option -> value or [values]")
    method_train = _per_method(raw.get("method_train"), "method_train", methods, where)
    method_set = _per_method(raw.get("method_set"), "method_set", methods, where)
    configs: dict[str, list[tuple[dict, dict]]] = {}
    for m in methods:
        method = get_method(m)
        set_grid = _grid(method_set.get(m), f"{where}: method_set.{m}")
        train_raw = {**(shared_train or {}), **(method_train.get(m) or {})}
        train_grid = _grid(train_raw, f"{where}: train (for {m})")
        for overrides in set_grid:
            try:
                build_config(method, overrides)
            except SptbenchError as e:
                raise SptbenchError(f"{where}: method_set.{m}: {e}") from None
        for overrides in train_grid:
            try:
                train_config(RunSpec(method=m, task=tasks[0], train_overrides=overrides), method)
            except SptbenchError as e:
                raise SptbenchError(f"{where}: training options for {m}: {e}") from None
        configs[m] = [(s, t) for s in set_grid for t in train_grid]

    data_dir = raw.get("data_dir")
    if split_source == "lm-bff" and not data_dir:
        raise SptbenchError(
            f"{where}: split_source 'lm-bff' reads the published splits from a local mirror: "
            "set data_dir, pass --data-dir or set SPTBENCH_DATA_DIR"
        )
    if data_dir is not None and not Path(str(data_dir)).expanduser().is_dir():
        raise SptbenchError(f"{where}: data dir '{data_dir}' does not exist or is not a folder")

    slurm = raw.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise SptbenchError(f"{where}: 'slurm' must be a mapping")
    for key, value in slurm.items():
        if key not in SLURM_KEYS:
            raise unknown_choice(f"slurm option in {where}", str(key), SLURM_KEYS)
        if key != "partition" and value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                                         or value < (0 if key == "gpus" else 1)):
            raise SptbenchError(f"{where}: slurm.{key} must be a positive integer, got {value!r}")
    launcher = raw.get("launcher") or "local"
    require_launcher(launcher)
    test = raw.get("test") or "all"
    if test not in TEST_MODES:
        raise unknown_choice(f"test mode in {where}", str(test), TEST_MODES)
    select_within = _per_method(raw.get("select_within"), "select_within", methods, where, kind="list")
    for m, keys in select_within.items():
        known = {k for mo, t in configs[m] for k in (*mo, *t)}
        if not isinstance(keys, list) or not all(isinstance(k, str) and k in known for k in keys):
            raise SptbenchError(f"{where}: select_within.{m} must list grid keys of {m} ({', '.join(sorted(known))})")
    sweep = Sweep(
        name=name,
        path=where,
        model=model,
        tasks=tasks,
        methods=methods,
        regimes=regimes,
        seeds=seeds,
        configs=configs,
        split_source=split_source,
        pooling=pooling,
        heads=heads,
        # absolute, so that jobs started elsewhere (Slurm) read and write the same folders
        data_dir=str(Path(str(data_dir)).expanduser().resolve()) if data_dir else None,
        results_dir=str(Path(str(raw.get("results_dir") or "results")).expanduser().resolve()),
        device=raw.get("device") or "auto",
        dtype=raw.get("dtype") or "fp32",
        launcher=launcher,
        slurm=dict(slurm),
        description=raw.get("description"),
        test=test,
        select_within={m: list(k) for m, k in select_within.items()},
    )
    for spec in sweep.specs():  # every grid point as `sptbench run` checks it (the same function)
        try:
            check_spec(spec)
        except SptbenchError as e:
            raise SptbenchError(f"{where}: {_label(spec)}: {e}") from None
    return sweep


def restrict(sweep: Sweep, tasks: list[str] | None = None, methods: list[str] | None = None) -> Sweep:
    """The part of `sweep` over these of its tasks and methods (None = all), in the file's order: lets processes or
    machines share one sweep file (same name, same records, each tests only its own selection groups)."""
    def subset(kind: str, chosen: list[str] | None, available: list[str]) -> list[str]:
        for name in chosen or []:
            if name not in available:
                raise unknown_choice(f"{kind} of sweep '{sweep.name}'", name, available)
        return [name for name in available if chosen is None or name in chosen]

    return replace(sweep, tasks=subset("task", tasks, sweep.tasks),
                               methods=subset("method", methods, sweep.methods))


def load_sweep(path: str | Path, *, overrides: dict[str, Any] | None = None) -> Sweep:
    """Read and validate a sweep file. `overrides` (CLI values; None = not given) replace the file's values."""
    path = Path(path)
    raw = safe_yaml.load_file(path, "sweep file")
    return parse_sweep(raw, str(path), overrides=overrides)


# ---------------------------------------------------------------------------------------------------- resume, ETA


def _plan_key(key: tuple) -> tuple:
    """A record key as sweep resume matches it: without the data fingerprint (known only once the data is loaded),
    the pooling (a spec's None is the backbone's default: `_pooling_matches`) and the device (`_device_matches`)."""
    parts = dict(zip(schema.KEY_FIELDS, key, strict=True))
    parts["training"] = canonical_json({k: v for k, v in json.loads(parts["training"]).items() if k != "device"})
    return tuple(v for name, v in parts.items() if name not in ("data_fingerprint", "pooling"))


@functools.cache
def _task_spec(task: str):
    from sptbench.data.tasks import load_spec

    return load_spec(task)


def spec_record(spec) -> dict:
    """The sections of the record a planned run will write, as far as they are known before it runs."""
    from sptbench.data.templates import head_section, prompt_setup
    from sptbench.methods.registry import build_config, config_dict, get_method
    from sptbench.run.runner import train_config, training_section

    method = get_method(spec.method)
    task = _task_spec(spec.task)
    return {
        "method": {"name": spec.method, "config": config_dict(build_config(method, spec.method_overrides))},
        "task": {"name": spec.task, "version": task.version},
        "protocol": {"shots": spec.shots, "train_size": spec.train_size, "split_source": spec.split_source,
                     "seed": spec.seed},
        "backbone": {"id": spec.model, "pooling": spec.pooling},
        "head": head_section(prompt_setup(task, spec.head, spec.prompt_loss, spec.template)),
        "data": {"fingerprint": None},
        "training": training_section(train_config(spec, method), "", spec.dtype),
    }


def spec_key(spec) -> tuple:
    """The plan key of a planned run: `record_plan_key` of the record it will write."""
    return _plan_key(record_key(spec_record(spec)))


def _spec_train_samples(spec: RunSpec) -> int:
    """Training examples the planned run is set to see (max_steps x batch_size)."""
    from sptbench.methods.registry import get_method
    from sptbench.run.runner import train_config

    tcfg = train_config(spec, get_method(spec.method))
    return tcfg.max_steps * tcfg.batch_size


def record_plan_key(rec: dict) -> tuple:
    """A record's key as sweep resume matches it (`_plan_key`)."""
    return _plan_key(record_key(rec))


@dataclass
class Plan:
    """A sweep's runs split by what the results already hold, with an ETA for the rest."""

    runs: list
    done: list  # an ok record with the same key exists: skipped
    failed: list  # only failed records: skipped unless retry_failed
    todo: list
    eta_s: float
    eta_rules: Counter  # how many of `todo` were estimated by each rule
    seen: frozenset[str] = frozenset()  # the run ids recorded when planned (what another process adds is new)


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


def _wall_index(records: Iterable[dict]) -> list[tuple[str, dict]]:
    """Recorded times of ok runs by (method, task, backbone, setting), (method, task, backbone), (method, backbone,
    setting), (method, backbone): the same method on another backbone says little about this one's time."""
    levels: list[tuple[str, dict]] = [
        ("method/task/backbone/setting", defaultdict(list)),
        ("method/task/backbone", defaultdict(list)),
        ("method/backbone/setting", defaultdict(list)),
        ("method/backbone", defaultdict(list)),
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
        for (_, index), key in zip(levels, ((m, t, b, st), (m, t, b), (m, b, st), (m, b)), strict=True):
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
            factor = None if spec.task in key else _task_factor(index[0][1], spec.task, spec.model, setting, scaled)
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


def _pooling_matches(spec, rec: dict) -> bool:
    """An explicit pooling must be the recorded one; the backbone's default (None) is whatever it resolved to."""
    return spec.pooling is None or rec["backbone"]["pooling"] == spec.pooling


def _device_matches(spec, rec: dict) -> bool:
    """`auto` accepts a run on any device; an explicit device must be the recorded one."""
    return spec.device == "auto" or rec["training"].get("device") == spec.device


def _device_here(sweep: Sweep) -> str | None:
    """The `throughput.device` the sweep's runs will record when they run in this process (local launcher); None
    for Slurm, whose nodes are not this machine, and for a device this machine lacks (preflight says so)."""
    if sweep.launcher != "local":
        return None
    from sptbench.run.provenance import device_label, resolve_device

    try:
        return device_label(resolve_device(sweep.device))
    except SptbenchError:
        return None


def plan(sweep: Sweep, records: list[dict] | None = None, *, retry_failed: bool = False) -> Plan:
    """Split the sweep's runs into done / failed / to run (matching records on their key minus the data fingerprint;
    the device only when the sweep names one) and estimate the time of the rest."""
    if records is None:
        root = Path(sweep.results_dir) / TABLE_DIR
        records = read_records([root]) if root.is_dir() else []
    by_key: dict[tuple, list[dict]] = defaultdict(list)
    for rec in records:
        by_key[record_plan_key(rec)].append(rec)
    runs = sweep.specs()
    done, failed, todo = [], [], []
    for spec in runs:
        matches = [r for r in by_key.get(spec_key(spec), []) if _device_matches(spec, r) and _pooling_matches(spec, r)]
        if any(r["status"] == "ok" for r in matches):
            done.append(spec)
        elif matches and not retry_failed:
            failed.append(spec)
        else:
            todo.append(spec)
    index = _wall_index(records)
    here = _device_here(sweep)
    eta, rules = 0.0, Counter()
    for spec in todo:
        seconds, rule = estimate_s(spec, index, _spec_train_samples(spec), here)
        eta += seconds
        rules[rule] += 1
    return Plan(runs=runs, done=done, failed=failed, todo=todo, eta_s=eta, eta_rules=rules,
                seen=frozenset(r["run_id"] for r in records))


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


def format_plan(sweep: Sweep, p: Plan, parallel: int = 1) -> str:
    """Counts per method and in total, and the ETA (sequential, and with `parallel` jobs at once)."""
    from tabulate import tabulate

    rows = []
    for m in sweep.methods:
        count = lambda specs: sum(1 for s in specs if s.method == m)  # noqa: B023
        rows.append([m, len(sweep.configs[m]), count(p.runs), count(p.done), count(p.failed), count(p.todo)])
    rows.append(["total", "", len(p.runs), len(p.done), len(p.failed), len(p.todo)])
    table = tabulate(rows, headers=["method", "configs", "runs", "done", "failed", "to run"], tablefmt="github")
    regimes = ", ".join(setting_name(k, n) for k, n in sweep.regimes)
    heads = "" if sweep.heads == [("linear", None, None)] else (
        f"{len(sweep.heads)} head(s) ({', '.join('/'.join(x for x in h if x) for h in sweep.heads)}) x "
    )
    rules = ", ".join(f"{n} by {rule}" for rule, n in p.eta_rules.most_common())
    eta = f"ETA {format_duration(p.eta_s)} sequential"
    if parallel > 1:
        eta += f", ~{format_duration(p.eta_s / parallel)} with {parallel} jobs at once"
    lines = [
        f"sweep {sweep.name}: {sweep.model}, {regimes}, {len(sweep.tasks)} tasks x {len(sweep.methods)} methods x "
        f"{heads}{len(sweep.seeds)} seeds (split {sweep.split_source}) -> {sweep.results_dir}",
        table,
        f"{len(p.runs)} runs: {len(p.done)} done, {len(p.failed)} failed before (skipped; --retry-failed reruns them), "
        f"{len(p.todo)} to run",
        f"{eta}" + (f" (estimates: {rules}; default {DEFAULT_RUN_S:.0f} s/run)" if p.todo else ""),
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- dispatch


def _label(spec) -> str:
    return f"{spec.method}/{spec.task} {setting_name(spec.shots, spec.train_size)} seed {spec.seed}"


def preflight(sweep: Sweep, specs: list) -> None:
    """What `sptbench run` checks before training, for the runs to do, before the first one starts (and in
    --dry-run): every table they append to can take a record, and every data split they read (from a local mirror)
    loads, decodes and is not empty. Hub data is checked by each run."""
    from sptbench.data.tasks import load_task
    from sptbench.records.io import check_appendable
    from sptbench.run.runner import check_spec

    for path in sorted({check_spec(spec)[3] for spec in specs}):
        check_appendable(path)
    if sweep.data_dir is None:
        return
    for task, shots, size, seed in sorted({(s.task, s.shots, s.train_size, s.seed) for s in specs}, key=str):
        try:
            load_task(task, data_dir=sweep.data_dir, shots=shots, seed=seed, split_source=sweep.split_source,
                      train_size=size)
        except SptbenchError as e:
            raise SptbenchError(f"{sweep.path}: {task} ({setting_name(shots, size)}, seed {seed}): {e}") from None


def _recorded_since(spec, key: tuple, seen: frozenset[str]) -> bool:
    """A record of `spec` (plan key `key`; ok or failed) that was not there when the sweep was planned: another
    process ran it."""
    from sptbench.records.io import read_table, table_path

    path = table_path(spec.results_dir, spec.model, setting_name(spec.shots, spec.train_size))
    if not path.is_file():
        return False
    return any(r["run_id"] not in seen and record_plan_key(r) == key and _device_matches(spec, r)
               and _pooling_matches(spec, r) for r in read_table(path))


@contextmanager
def _claimed(spec, seen: frozenset[str] | None) -> Iterator[str | None]:
    """Claim `spec` for this process (sptbench/sweep/claims.py); yields why it is not ours to run, or None. `seen`: the
    run ids at planning time (None: no claims, run everything given)."""
    if seen is None:
        yield None
        return
    key = spec_key(spec)
    with claim(claims_dir(spec.results_dir), claim_name("run", canonical_json(list(key)))) as mine:
        if not mine:
            yield "another sweep process is running it"
        elif _recorded_since(spec, key, seen):
            yield "another sweep process recorded it meanwhile"
        else:
            yield None


def run_local(specs: list, *, progress: bool = True, after_each=None,
              seen: frozenset[str] | None = None) -> tuple[list[tuple[Any, str]], list]:
    """Run one after another in this process; a failed run is reported (and, when it failed while training,
    recorded as failed) and the sweep goes on. `after_each()` runs after every run (the test-once protocol tests the
    groups that run completed). With `seen` (the run ids recorded when planned), runs are claimed first, so other
    processes given the same runs share them: a run another one holds, or has recorded since, is skipped. Returns
    the failures (spec, why) and the skipped specs."""
    from tqdm.auto import tqdm

    from sptbench.run.runner import run

    failures, skipped = [], []
    bar = tqdm(specs, desc="sweep", unit="run", disable=not progress, dynamic_ncols=True)
    for i, spec in enumerate(bar, 1):
        bar.set_postfix_str(_label(spec))
        with _claimed(spec, seen) as taken:
            if taken is None:
                _run_one(spec, i, len(specs), failures, run, tqdm)
        if taken is not None:
            skipped.append(spec)
            tqdm.write(f"[{i}/{len(specs)}] skipped: {_label(spec)}: {taken}", file=sys.stderr)
        elif after_each is not None:
            after_each()
    bar.close()
    return failures, skipped


def _run_one(spec, i: int, n: int, failures: list, run, tqdm) -> None:
    """One run of `run_local`, its one-line result logged (also with --quiet), a failure appended to `failures`."""
    try:
        rec = run(spec).record
    except Exception as e:  # one run's failure (a user error or a bug) must not cost the rest of the sweep
        why = str(e) if isinstance(e, SptbenchError) else f"{type(e).__name__}: {e}"
        failures.append((spec, why))
        tqdm.write(f"[{i}/{n}] failed: {_label(spec)}: {why}", file=sys.stderr)
    else:
        # one line per run, also with --quiet: a long sweep's log says what finished, when, and how it scored
        test, dev = rec["metrics"]["test"], rec["metrics"]["dev"]
        score = f"test {test['score']:.4f}" if "score" in test else f"dev {dev.get('score', float('nan')):.4f}"
        tqdm.write(f"[{i}/{n}] {_label(spec)}: {score} ({rec['time']['wall_s']:.0f} s)", file=sys.stderr)


def run_job(spec) -> dict:
    """One array job: run `spec` (its record lands in the shared table) and return a short summary."""
    from sptbench.run.runner import run

    try:
        rec = run(spec).record
    except Exception as e:  # reported in the job's result, like a run recorded as failed
        return {"run": _label(spec), "status": "failed", "error": str(e) or type(e).__name__}
    return {"run": _label(spec), "status": rec["status"], "run_id": rec["run_id"], "test": rec["metrics"]["test"]}


def submit(
    specs: list,
    *,
    folder: str | Path,
    cluster: str = "slurm",
    name: str = "sptbench",
    partition: str | None = None,
    gpus: int | None = None,
    time_min: int | None = None,
    mem_gb: int | None = None,
    cpus: int | None = None,
    array_parallelism: int | None = None,
) -> list:
    """Submit one submitit job array (one job per run). `cluster="local"`: submitit's local executor (one process
    per job, here); `cluster="debug"`: in this process, one after another (for tests and debugging)."""
    require_launcher("slurm")
    import submitit

    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    params: dict[str, Any] = {"name": name, "timeout_min": time_min, "gpus_per_node": gpus, "mem_gb": mem_gb}
    params["cpus_per_task"] = cpus
    params["slurm_partition"] = partition
    params["slurm_array_parallelism"] = array_parallelism
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor.map_array(run_job, specs)


# ---------------------------------------------------------------------------------------------------- CLI


def cmd_sweep(args: argparse.Namespace) -> int:
    """Expand, validate, skip what is recorded, then dry-run, run here, or submit a job array."""
    data_dir = args.data_dir or os.environ.get("SPTBENCH_DATA_DIR")
    overrides = {"data_dir": data_dir, "results_dir": args.results_dir, "launcher": args.launcher}
    sweep = restrict(load_sweep(args.sweep, overrides=overrides), args.tasks, args.methods)
    slurm = {**sweep.slurm, **{k: getattr(args, k) for k in SLURM_KEYS if getattr(args, k, None) is not None}}
    p = plan(sweep, retry_failed=args.retry_failed)
    parallel = int(slurm.get("array_parallelism") or 1) if sweep.launcher == "slurm" else 1
    print(format_plan(sweep, p, parallel))
    if sweep.test == "selected":
        print(f"test: selected — {len(awaiting_test(sweep))} group(s) complete and awaiting the test of their "
              "dev-selected configuration")
    if p.todo:
        preflight(sweep, p.todo)
    if args.dry_run:
        return 0
    if sweep.launcher == "local":
        # groups an earlier sitting completed, then each as soon as it is
        tested = [run_pending_tests(sweep, quiet=args.quiet)]
        after_each = None
        if sweep.test == "selected":
            def after_each() -> None:
                tested.append(run_pending_tests(sweep, quiet=args.quiet))
        failures, skipped = run_local(p.todo, progress=not args.quiet, after_each=after_each, seen=p.seen)
        for spec, why in failures:
            print(f"failed: {_label(spec)}: {why}")
        if p.todo:
            ran = len(p.todo) - len(skipped)
            print(f"ran {ran}: {ran - len(failures)} ok, {len(failures)} failed"
                  + (f"; {len(skipped)} left to other sweep processes" if skipped else ""))
        if sum(tested):
            print(f"tested {sum(tested)} dev-selected configuration(s) once each")
        return 1 if failures else 0
    if not p.todo:
        return 0
    folder = Path(args.log_dir or Path(sweep.results_dir) / "submitit" / sweep.name) / "%j"
    jobs = submit(
        p.todo,
        folder=folder,
        cluster=args.cluster,
        name=f"sptbench-{sweep.name}",
        partition=slurm.get("partition"),
        gpus=slurm.get("gpus"),
        time_min=slurm.get("time"),
        mem_gb=slurm.get("mem"),
        cpus=slurm.get("cpus"),
        array_parallelism=slurm.get("array_parallelism"),
    )
    print(f"submitted {len(jobs)} jobs (array {jobs[0].job_id.split('_')[0]}); logs in {folder.parent}")
    if not (args.wait or args.cluster != "slurm"):
        return 0
    results = [job.result() for job in jobs]
    bad = [r for r in results if r["status"] != "ok"]
    for r in bad:
        print(f"failed: {r['run']}: {r.get('error')}", file=sys.stderr)
    print(f"ran {len(results)}: {len(results) - len(bad)} ok, {len(bad)} failed")
    return 1 if bad else 0


def awaiting_test(sweep: Sweep, tables: list[Path] | None = None) -> dict:
    """The groups of a `test: selected` sweep whose configurations are all recorded and none is tested yet, read
    from `tables` (default: every table under the results folder)."""
    from sptbench.sweep.test_once import groups_to_test

    if sweep.test != "selected":
        return {}
    root = Path(sweep.results_dir) / TABLE_DIR
    if tables is None:
        tables = [root] if root.is_dir() else []
    tables = [t for t in tables if t.exists()]
    records = read_records(tables) if tables else []
    # only this (part of the) sweep's runs: another process may be running the rest of the file (--tasks/--methods)
    ours = [r for r in records if r["method"]["name"] in sweep.methods and r["task"]["name"] in sweep.tasks]
    return groups_to_test(ours, sweep.name, {m: len(c) for m, c in sweep.configs.items()})


def run_pending_tests(sweep: Sweep, quiet: bool = False) -> int:
    """Test each complete group's dev-selected configuration once (test-once protocol); returns how many. `quiet`:
    no transformers load report or progress bar (the one-line result is always logged)."""
    from sptbench.sweep.test_once import test_selected

    tested = 0
    for group, candidates in awaiting_test(sweep).items():
        # claimed like a run: another process of this sweep may have found the same group complete
        with claim(claims_dir(sweep.results_dir), claim_name("test", canonical_json(list(group)))) as mine:
            # re-read the group's own table only: another process may have tested the group meanwhile
            if not mine or group not in awaiting_test(sweep, [record_table_path(sweep.results_dir, candidates[0])]):
                continue
            test_selected(candidates, results_dir=sweep.results_dir, data_dir=sweep.data_dir, device=sweep.device,
                          log=lambda msg: print(msg, file=sys.stderr), quiet=quiet)
            tested += 1
    return tested


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `sptbench sweep` to the main parser."""
    from sptbench.data.tasks import add_tasks_dir_argument

    p = subparsers.add_parser("sweep", help="run a grid of runs from a sweep file (resumable; local or Slurm; local "
                              "processes started on one file share its runs)")
    p.add_argument("sweep", type=nonempty, help="sweep YAML file (see docs/sweeps.md and sweeps/)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (counts, ETA) and run nothing")
    p.add_argument("--launcher", choices=LAUNCHERS, help="local: one after another here (default); slurm: submitit")
    p.add_argument("--results-dir", type=nonempty,
                   help="root of the result tables (default: the file's results_dir, else results)")
    p.add_argument("--data-dir", type=nonempty,
                   help="local data mirror (default: $SPTBENCH_DATA_DIR, else the file's data_dir)")
    p.add_argument("--retry-failed", action="store_true", help="rerun runs recorded only as failed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--tasks", nargs="+", type=nonempty, metavar="TASK",
                   help="only these of the file's tasks (default: all); e.g. one part per machine")
    p.add_argument("--methods", nargs="+", type=nonempty, metavar="METHOD",
                   help="only these of the file's methods (default: all)")
    add_tasks_dir_argument(p)
    g = p.add_argument_group("slurm (submitit) options; also settable in the file's `slurm:` mapping")
    g.add_argument("--partition", type=nonempty, help="Slurm partition (default: the cluster's)")
    g.add_argument("--gpus", type=nonneg_int, help="GPUs per job")
    g.add_argument("--time", type=positive_int, help="time limit per job, minutes")
    g.add_argument("--mem", type=positive_int, help="memory per job, GB")
    g.add_argument("--cpus", type=positive_int, help="CPUs per job")
    g.add_argument("--array-parallelism", dest="array_parallelism", type=positive_int,
                   help="jobs of the array at once")
    g.add_argument("--cluster", choices=["slurm", "local", "debug"], default="slurm",
                   help="submitit executor: slurm; local (the same array as processes here) or debug (in this "
                   "process), for testing")
    g.add_argument("--log-dir", type=nonempty, help="submitit folder (default: <results-dir>/submitit/<name>)")
    g.add_argument("--wait", action="store_true", help="wait for the jobs and report (always with local/debug)")
    p.set_defaults(func=cmd_sweep)
