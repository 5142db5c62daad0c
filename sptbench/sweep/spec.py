"""A sweep file, parsed (docs/sweeps.md): the `Sweep` it describes (regimes x tasks x methods x hyper-parameter
values x seeds, and how it runs), checked field by field and at every grid point before anything runs, and its grid
expanded to the RunSpecs of its runs (`Sweep.specs`). A value the file leaves out is the run schema's default
(sptbench/core/run_schema.py), or `Sweep`'s for the sweep's own keys.
"""

from __future__ import annotations

import importlib
import itertools
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sptbench.core import run_schema as schema
from sptbench.core import safe_yaml
from sptbench.core.errors import SptbenchError, unknown_choice
from sptbench.records.keys import canonical_json, setting_name
from sptbench.sweep.bounds import check_grid_size
from sptbench.sweep.values import as_grid, as_values, distinct_names, per_method, positive_ints

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
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# keys whose value is one non-empty string: the sweep's name, launcher, and the run fields given as one value
# (head, prompt_loss and template may be lists: the head axis, checked by _heads; split_source may be a list too)
_STRING_KEYS = ("name", "launcher", *(k for k, f in schema.sweep_keys().items() if k == f.name and f.type in (
    "str", "str | None") and k not in ("head", "prompt_loss", "template")))


def _default(key: str) -> Any:
    """The default of the run field that the sweep-file key `key` gives, as the run schema declares it."""
    return schema.default_of(schema.sweep_keys()[key])


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
    # the split sources, an axis crossed with the seeds (one value: every run's)
    split_sources: list[str] = field(default_factory=lambda: [_default("split_source")])
    revision: str | None = None  # the model repo's commit, branch or tag (hub ids)
    pooling: str | None = None
    heads: list[tuple[str, str | None, str | None]] = field(default_factory=lambda: [(_default("head"), None, None)])
    data_dir: str | None = None
    strict_data: bool = False
    results_dir: str = _default("results_dir")
    device: str = _default("device")
    dtype: str = _default("dtype")
    launcher: str = "local"
    slurm: dict[str, Any] = field(default_factory=dict)
    description: str | None = None
    test: str = "all"
    # method -> config keys whose values split its selection groups (`test: selected` picks one winner per value:
    # e.g. lpt: [layer] tests each layer's dev-best learning rate, for the layer analysis)
    select_within: dict[str, list[str]] = field(default_factory=dict)
    # run options outside the record key that the sweep gives every run (checkpoints, logger, where records go)
    options: dict[str, Any] = field(default_factory=dict)

    def selection_groups(self, method: str) -> list[tuple[str, int]]:
        """Per configuration of `method`: its selection group's label and how many configurations that group has."""
        keys = self.select_within.get(method, [])
        labels = [canonical_json({k: {**t, **m}.get(k) for k in keys}) for m, t in self.configs[method]]
        counts = Counter(labels)
        return [(label, counts[label]) for label in labels]

    def specs(self, progress: bool = False) -> list:
        """The runs, in order: regime, task, method, head (head, prompt loss, template), configuration (grid order),
        split source, seed."""
        from sptbench.run.runner import RunSpec

        out = []
        for (shots, train_size), task, method, (head, prompt_loss, template) in itertools.product(
            self.regimes, self.tasks, self.methods, self.heads
        ):
            configs = self.configs[method]
            groups = self.selection_groups(method)
            for index, (method_overrides, train_overrides) in enumerate(configs):
                group, group_configs = groups[index]
                for split_source, seed in itertools.product(self.split_sources, self.seeds):
                    out.append(
                        RunSpec(
                            method=method,
                            task=task,
                            seed=seed,
                            shots=shots,
                            train_size=train_size,
                            split_source=split_source,
                            model=self.model,
                            revision=self.revision,
                            pooling=self.pooling,
                            head=head,
                            prompt_loss=prompt_loss,
                            template=template,
                            data_dir=self.data_dir,
                            strict_data=self.strict_data,
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
                            **self.options,
                        )
                    )
        return out


def run_label(spec, split: bool = False) -> str:
    """`method/task setting seed N`, with `(split S)` when `split` (the runs it tells apart have several sources)."""
    label = f"{spec.method}/{spec.task} {setting_name(spec.shots, spec.train_size)} seed {spec.seed}"
    return label + (f" (split {spec.split_source})" if split else "")


def several_splits(specs) -> bool:
    """Whether these runs have more than one split source (their labels then say which: `run_label`)."""
    return len({spec.split_source for spec in specs}) > 1


# ---------------------------------------------------------------------------------------------------- parsing


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
    from sptbench.data.specs import load_spec
    from sptbench.data.templates import prompt_setup

    kinds = as_values(_default("head") if raw.get("head") is None else raw["head"], f"{where}: head")
    losses = as_values(raw.get("prompt_loss"), f"{where}: prompt_loss")
    templates = as_values(raw.get("template"), f"{where}: template")
    if "prompt" not in kinds and (raw.get("template") is not None or raw.get("prompt_loss") is not None):
        raise SptbenchError(f"{where}: template and prompt_loss apply to the prompt head only (head: prompt)")
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



def _checked_keys(raw: Any, where: str, overrides: dict[str, Any] | None) -> dict:
    """The sweep mapping with the CLI's `overrides` (None = not given) applied: known keys only, the required ones
    given, the one-string ones non-empty strings."""
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
        if _one_value(raw, key) is not None and (not isinstance(raw[key], str) or not raw[key].strip()):
            raise SptbenchError(f"{where}: '{key}' must be a non-empty string, got {raw[key]!r}")
    if not isinstance(raw.get("strict_data", False), bool):
        raise SptbenchError(f"{where}: 'strict_data' must be true or false, got {raw['strict_data']!r}")
    return raw


def _name(raw: dict, where: str) -> str:
    """The sweep's name: the file's `name`, else the file name without its suffix."""
    name = raw.get("name") or Path(where).stem
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise SptbenchError(f"{where}: 'name' must be letters, digits, '.', '_' or '-', got {name!r}")
    return name


def _tasks(raw: dict, where: str) -> list[str]:
    """The tasks, each known (after the file's `tasks_dir` folders are added to the search)."""
    from sptbench.data.specs import apply_tasks_dirs, list_tasks

    if raw.get("tasks_dir") is not None:  # user task folders: searched first, here and in every worker (env var)
        apply_tasks_dirs(distinct_names(raw["tasks_dir"], f"{where}: tasks_dir"), f"{where}: tasks_dir")
    tasks = distinct_names(raw["tasks"], f"{where}: tasks")
    known_tasks = list_tasks()
    for t in tasks:
        if t not in known_tasks:
            raise unknown_choice(f"task in {where}", t, known_tasks)
    return tasks


def _methods(raw: dict, where: str, registry: dict) -> list[str]:
    """The methods, each registered; `methods: all` is every registered one (`_methods_for_heads` then keeps those
    that work with the sweep's heads)."""
    methods = sorted(registry) if raw["methods"] == "all" else distinct_names(raw["methods"], f"{where}: methods")
    for m in methods:
        if m not in registry:
            raise unknown_choice(f"method in {where}", m, registry)
    return methods


def _seeds(raw: dict, where: str) -> list[int]:
    """The seeds: distinct, each one a run accepts."""
    from sptbench.run.runner import check_seed

    seeds = as_values(raw["seeds"], f"{where}: seeds")
    for seed in seeds:
        try:
            check_seed(seed)
        except SptbenchError as e:
            raise SptbenchError(f"{where}: seeds: {e}") from None
    if len(set(seeds)) != len(seeds):
        raise SptbenchError(f"{where}: seeds must be distinct, got {seeds}")
    return seeds


def _regimes(raw: dict, where: str) -> list[tuple[int | None, int | None]]:
    """(shots, train_size) per regime: the `shots` ones, then the `train_size` ones; neither: full data."""
    shots = positive_ints(raw["shots"], f"{where}: shots") if raw.get("shots") is not None else []
    sizes = positive_ints(raw["train_size"], f"{where}: train_size") if raw.get("train_size") is not None else []
    return [(k, None) for k in shots] + [(None, n) for n in sizes] or [(None, None)]


def _one_value(raw: dict, key: str) -> Any:
    """The key's value where it is one value (None where absent, and for split_source's list: `_split_sources`)."""
    value = raw.get(key)
    return None if key == "split_source" and isinstance(value, list) else value


def _check_choices(raw: dict, where: str) -> None:
    """Each one-value key with declared choices (device, dtype, pooling, split_source) holds one of them."""
    run_fields = schema.sweep_keys()
    for key in _STRING_KEYS:
        choices = run_fields[key].metadata["choices"] if key in run_fields else None
        if _one_value(raw, key) is not None and choices is not None and raw[key] not in choices:
            raise unknown_choice(f"{key} in {where}", str(raw[key]), choices)


def _split_sources(raw: dict, where: str) -> list[str]:
    """The split sources: one (checked by `_check_choices`) or a list, an axis crossed with the seeds: not empty, each
    a declared choice, each once."""
    if raw.get("split_source") is None:
        return [_default("split_source")]
    sources = as_values(raw["split_source"], f"{where}: split_source")
    for source in sources:
        if source not in (choices := schema.sweep_keys()["split_source"].metadata["choices"]):
            raise unknown_choice(f"split_source in {where}", str(source), choices)
    return sources


def _methods_for_heads(methods: list[str], heads: list, registry: dict, every: bool, where: str) -> list[str]:
    """The methods, each checked against every head; with `methods: all`, only those that work with all of them."""
    if every:
        methods = [m for m in methods if all(head in registry[m].heads for head, _, _ in heads)]
    for m, (head, _, _) in itertools.product(methods, heads):
        try:
            registry[m].check_head(head)
        except SptbenchError as e:
            raise SptbenchError(f"{where}: {e}") from None
    return methods


def _check_protocols(tasks: list[str], regimes: list, seeds: list[int], sources: list[str], where: str) -> None:
    """Every task's protocol holds in every regime, split source and seed (e.g. enough examples per class)."""
    from sptbench.data.specs import load_spec
    from sptbench.data.tasks import check_protocol

    for task in tasks:
        spec = load_spec(task)
        for (k, n), split_source, seed in itertools.product(regimes, sources, seeds):
            try:
                check_protocol(spec, k, seed, split_source, n)
            except SptbenchError as e:
                split = f", split {split_source}" if len(sources) > 1 else ""
                raise SptbenchError(f"{where}: {task} ({setting_name(k, n)}, seed {seed}{split}): {e}") from None


def _configs(raw: dict, methods: list[str], tasks: list[str], where: str) -> dict[str, list[tuple[dict, dict]]]:
    """Per method, its grid of (method overrides, train overrides), each point checked as a run builds it."""
    from sptbench.methods.registry import build_config, get_method
    from sptbench.run.runner import RunSpec, train_config

    shared_train = raw.get("train")
    if shared_train is not None and not isinstance(shared_train, dict):
        raise SptbenchError(f"{where}: 'train' must be a mapping of training option -> value or [values]")
    method_train = per_method(raw.get("method_train"), "method_train", methods, where)
    method_set = per_method(raw.get("method_set"), "method_set", methods, where)
    configs: dict[str, list[tuple[dict, dict]]] = {}
    for m in methods:
        method = get_method(m)
        set_grid = as_grid(method_set.get(m), f"{where}: method_set.{m}")
        train_raw = {**(shared_train or {}), **(method_train.get(m) or {})}
        train_grid = as_grid(train_raw, f"{where}: train (for {m})")
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
    return configs


def _data_dir(raw: dict, tasks: list[str], sources: list[str], where: str) -> str | None:
    """The file's (or --data-dir's) data folders (A:B), absolute, so that jobs started elsewhere (Slurm) read the
    same; each must exist, and the lm-bff splits need one unless every task has its own data folder."""
    from sptbench.data.locate import data_roots
    from sptbench.data.specs import load_spec

    data_dir = raw.get("data_dir")
    if "lm-bff" in sources and not data_dir and any(load_spec(t).data is None for t in tasks):
        raise SptbenchError(
            f"{where}: split_source 'lm-bff' reads the published splits from a local mirror: "
            "set data_dir, pass --data-dir or set SPTBENCH_DATA_PATH"
        )
    try:
        return os.pathsep.join(map(str, data_roots(data_dir) if data_dir else [])) or None
    except SptbenchError as e:
        raise SptbenchError(f"{where}: {e}") from None


def _slurm(raw: dict, where: str) -> dict[str, Any]:
    """The `slurm:` mapping: known options, the numeric ones positive integers (gpus may be 0)."""
    slurm = raw.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise SptbenchError(f"{where}: 'slurm' must be a mapping")
    for key, value in slurm.items():
        if key not in SLURM_KEYS:
            raise unknown_choice(f"slurm option in {where}", str(key), SLURM_KEYS)
        if key != "partition" and value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                                         or value < (0 if key == "gpus" else 1)):
            raise SptbenchError(f"{where}: slurm.{key} must be a positive integer, got {value!r}")
    return slurm


def _select_within(raw: dict, methods: list[str], configs: dict, where: str) -> dict[str, list[str]]:
    """`select_within`: per method, grid keys of that method."""
    select_within = per_method(raw.get("select_within"), "select_within", methods, where, kind="list")
    for m, keys in select_within.items():
        known = {k for mo, t in configs[m] for k in (*mo, *t)}
        if not isinstance(keys, list) or not all(isinstance(k, str) and k in known for k in keys):
            raise SptbenchError(f"{where}: select_within.{m} must list grid keys of {m} ({', '.join(sorted(known))})")
    return select_within


def _check_local_device(device: str) -> None:
    from sptbench.run.provenance import resolve_device

    resolve_device(device)


def parse_sweep(raw: Any, where: str = "sweep", *, overrides: dict[str, Any] | None = None) -> Sweep:
    """Check a sweep mapping field by field and every grid point (method configs, training options, protocols).
    Values the file leaves out are the run schema's defaults (sptbench/core/run_schema.py), or `Sweep`'s for the
    sweep's own keys."""
    from sptbench.methods.registry import load_methods
    from sptbench.run.runner import check_spec

    raw = _checked_keys(raw, where, overrides)
    name = _name(raw, where)
    tasks = _tasks(raw, where)
    registry = load_methods()
    # `methods: all`: every registered method that works with the sweep's head(s) (e.g. the reference suite)
    every = raw["methods"] == "all"
    methods = _methods(raw, where, registry)
    seeds = _seeds(raw, where)
    regimes = _regimes(raw, where)
    _check_choices(raw, where)
    split_sources = _split_sources(raw, where)
    model = raw.get("model") or _default("model")
    if not isinstance(model, str):
        raise SptbenchError(f"{where}: 'model' must be a backbone name, hub id or folder")
    heads = _heads(raw, tasks, where)
    methods = _methods_for_heads(methods, heads, registry, every, where)
    _check_protocols(tasks, regimes, seeds, split_sources, where)
    fixed = len(regimes) * len(tasks) * len(heads) * len(split_sources) * len(seeds)
    check_grid_size(raw, methods, fixed, where)  # before building it
    configs = _configs(raw, methods, tasks, where)
    data_dir = _data_dir(raw, tasks, split_sources, where)
    slurm = _slurm(raw, where)
    launcher = raw.get("launcher") or Sweep.launcher
    require_launcher(launcher)
    if launcher == "local":  # runs here: `device: cuda` needs CUDA here (a Slurm job's node may have it)
        _check_local_device(raw.get("device") or _default("device"))
    test = raw.get("test") or Sweep.test
    if test not in TEST_MODES:
        raise unknown_choice(f"test mode in {where}", str(test), TEST_MODES)
    select_within = _select_within(raw, methods, configs, where)
    sweep = Sweep(
        name=name,
        path=where,
        model=model,
        tasks=tasks,
        methods=methods,
        regimes=regimes,
        seeds=seeds,
        configs=configs,
        split_sources=split_sources,
        revision=raw.get("revision"),
        pooling=raw.get("pooling"),
        heads=heads,
        # absolute, so that jobs started elsewhere (Slurm) read and write the same folders
        data_dir=data_dir,
        strict_data=raw.get("strict_data") or False,
        results_dir=str(Path(str(raw.get("results_dir") or _default("results_dir"))).expanduser().resolve()),
        device=raw.get("device") or _default("device"),
        dtype=raw.get("dtype") or _default("dtype"),
        launcher=launcher,
        slurm=dict(slurm),
        description=raw.get("description"),
        test=test,
        select_within={m: list(k) for m, k in select_within.items()},
        options={k: schema.option_value(f, raw[k], where) for k, f in schema.sweep_keys().items()
                 if f.metadata["not_in_key"] and k not in Sweep.__dataclass_fields__ and raw.get(k) is not None},
    )
    for spec in sweep.specs():  # every grid point as `sptbench run` checks it (the same function)
        try:
            check_spec(spec)
        except SptbenchError as e:
            raise SptbenchError(f"{where}: {run_label(spec, len(split_sources) > 1)}: {e}") from None
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
