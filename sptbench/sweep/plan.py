"""A sweep's plan: its runs (`Sweep.specs`, sptbench/sweep/spec.py) split by what the results already hold (done,
failed, to run; matched on the key of the record each will write), with the ETA of the rest (sptbench/sweep/eta.py),
and the checks made before the first run starts (`preflight`).
"""

from __future__ import annotations

import functools
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from sptbench.core import run_schema as schema
from sptbench.core.errors import SptbenchError
from sptbench.records.build import planned_record
from sptbench.records.io import read_records
from sptbench.records.keys import canonical_json, record_key, setting_name
from sptbench.records.schema import TABLE_DIR
from sptbench.sweep.eta import (
    DEFAULT_RUN_S,
    device_here,
    device_matches,
    estimate_s,
    format_duration,
    pooling_matches,
    results_tree,
    spec_train_samples,
    wall_index,
)
from sptbench.sweep.eta_scale import SCALED, Scaler, bench_label, read_bench
from sptbench.sweep.spec import Sweep


def _plan_key(key: tuple) -> tuple:
    """A record key as sweep resume matches it: without the data fingerprint (known only once the data is loaded),
    the pooling (a spec's None is the backbone's default: `pooling_matches`) and the device (`device_matches`)."""
    parts = dict(zip(schema.KEY_FIELDS, key, strict=True))
    parts["training"] = canonical_json({k: v for k, v in json.loads(parts["training"]).items() if k != "device"})
    return tuple(v for name, v in parts.items() if name not in ("data_fingerprint", "pooling"))


@functools.cache
def _task_spec(task: str):
    from sptbench.data.specs import load_spec

    return load_spec(task)


def spec_record(spec) -> dict:
    """The sections of the record a planned run will write, as far as they are known before it runs."""
    from sptbench.data.templates import head_section, prompt_setup
    from sptbench.methods.registry import build_config, config_dict, get_method
    from sptbench.run.runner import prompt_head_is_causal, train_config, training_section

    method = get_method(spec.method)
    task = _task_spec(spec.task)
    return planned_record(
        method=spec.method, method_config=config_dict(build_config(method, spec.method_overrides)),
        task=spec.task, task_version=task.version, shots=spec.shots, train_size=spec.train_size,
        split_source=spec.split_source, seed=spec.seed, backbone=spec.model, pooling=spec.pooling,
        revision=spec.revision,
        head=head_section(
            prompt_setup(task, spec.head, spec.prompt_loss, spec.template, causal=prompt_head_is_causal(spec))),
        training=training_section(train_config(spec, method), "", spec.dtype),
    )


def spec_key(spec) -> tuple:
    """The plan key of a planned run: `record_plan_key` of the record it will write."""
    return _plan_key(record_key(spec_record(spec)))


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


def plan(sweep: Sweep, records: list[dict] | None = None, *, retry_failed: bool = False,
         eta_from: list[str] | None = None) -> Plan:
    """Split the sweep's runs into done / failed / to run (matching records on their key minus the data fingerprint;
    the device only when the sweep names one) and estimate the time of the rest: from recorded runs of the same
    method and backbone in the sweep's folder, else in the whole results tree (eta.py), else scaled from a bench file
    (`eta_from`) or other backbones (eta_scale.py)."""
    from_disk = records is None
    if records is None:
        root = Path(sweep.results_dir) / TABLE_DIR
        records = read_records([root]) if root.is_dir() else []
    by_key: dict[tuple, list[dict]] = defaultdict(list)
    for rec in records:
        by_key[record_plan_key(rec)].append(rec)
    runs = sweep.specs()
    done, failed, todo = [], [], []
    for spec in runs:
        matches = [r for r in by_key.get(spec_key(spec), []) if device_matches(spec, r) and pooling_matches(spec, r)]
        if any(r["status"] == "ok" for r in matches):
            done.append(spec)
        elif matches and not retry_failed:
            failed.append(spec)
        else:
            todo.append(spec)
    index = wall_index(records)
    here = device_here(sweep)
    scaler = Scaler(records, read_bench(eta_from) if eta_from else None, here, bench_label(eta_from or []))
    eta, rules = 0.0, Counter()
    tree_index = None
    for spec in todo:
        seconds, rule = estimate_s(spec, index, spec_train_samples(spec), here)
        if rule == "default" and from_disk:  # the sweep's folder knows nothing of it: the whole results tree
            tree_index = tree_index if tree_index is not None else wall_index(_tree_records(sweep, records))
            seconds, rule = estimate_s(spec, tree_index, spec_train_samples(spec), here)
            rule += "" if rule == "default" else f" in {results_tree(sweep.results_dir)}"
        if rule == "default":
            seconds, rule = scaler.estimate(spec) or (seconds, rule)
        eta += seconds
        rules[rule] += 1
    return Plan(runs=runs, done=done, failed=failed, todo=todo, eta_s=eta, eta_rules=rules,
                seen=frozenset(r["run_id"] for r in records))


def _tree_records(sweep: Sweep, own: list[dict]) -> list[dict]:
    """The ok records of the sweep's backbone anywhere under its results tree (those of its own folder aside); the
    ETA is best-effort, so a tree with unreadable tables gives none."""
    seen, tree = {r.get("run_id") for r in own}, results_tree(sweep.results_dir)
    if tree == Path(sweep.results_dir).resolve():
        return []  # the sweep's folder is the whole tree
    try:
        records = read_records([tree])
    except SptbenchError:
        return []
    return [r for r in records if r.get("run_id") not in seen and (r.get("backbone") or {}).get("id") == sweep.model]


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
    eta = f"ETA {format_duration(p.eta_s)} sequential"
    splits = (f" (split {sweep.split_sources[0]})" if len(sweep.split_sources) == 1 else
              f" x {len(sweep.split_sources)} split sources ({', '.join(sweep.split_sources)})")
    if parallel > 1:
        eta += f", ~{format_duration(p.eta_s / parallel)} with {parallel} jobs at once"
    lines = [
        f"sweep {sweep.name}: {sweep.model}, {regimes}, {len(sweep.tasks)} tasks x {len(sweep.methods)} methods x "
        f"{heads}{len(sweep.seeds)} seeds{splits} -> {sweep.results_dir}",
        table,
        f"{len(p.runs)} runs: {len(p.done)} done, {len(p.failed)} failed before (skipped; --retry-failed reruns them), "
        f"{len(p.todo)} to run",
        eta + (f" ({eta_sources(p.eta_rules)})" if p.todo else ""),
        *(f"  {n} {kind} {rule}" for kind, rule, n in _eta_lines(p.eta_rules)),
    ]
    return "\n".join(lines)


def _kind(rule: str) -> str:
    return "default" if rule == "default" else "estimated" if rule.startswith(SCALED) else "measured"


def eta_sources(rules: Counter) -> str:
    """How many of the runs to do each kind of figure estimated: measured (recorded runs of the same method and
    backbone), estimated (scaled from elsewhere), default (nothing to go by)."""
    counts = Counter()
    for rule, n in rules.items():
        counts[_kind(rule)] += n
    return ", ".join(f"{counts[k]} {k}" for k in ("measured", "estimated", "default") if counts[k])


def _eta_lines(rules: Counter) -> list[tuple[str, str, int]]:
    """(kind, source, runs) per rule: which figures are measured and which estimated, and from what."""
    out = []
    for rule, n in rules.most_common():
        kind = _kind(rule)
        if kind == "default":
            rule = (f"at {DEFAULT_RUN_S:.0f} s/run: nothing measured to scale (pass --eta-from BENCH.yaml, a "
                    "`sptbench bench` run on the hardware these runs will use)")
        elif kind == "measured":
            rule = f"from recorded runs ({rule})"
        out.append((kind, rule, n))
    return out


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
    several = len(sweep.split_sources) > 1
    for task, shots, size, seed, source in sorted(
            {(s.task, s.shots, s.train_size, s.seed, s.split_source) for s in specs}, key=str):
        try:
            load_task(task, data_dir=sweep.data_dir, shots=shots, seed=seed, split_source=source,
                      train_size=size, strict_data=sweep.strict_data)
        except SptbenchError as e:
            where = f"{task} ({setting_name(shots, size)}, seed {seed}{f', split {source}' if several else ''})"
            raise SptbenchError(f"{sweep.path}: {where}: {e}") from None
