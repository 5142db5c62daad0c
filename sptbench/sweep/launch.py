"""Launching a sweep's runs: here, one after another (`run_local`; processes given the same runs share them through
claims, sptbench/sweep/claims.py), or as a submitit (Slurm) job array (`submit`, one `RunJob` per run). Array jobs
claim their run as local processes do (a resubmitted array skips what is running or recorded), write their record as
a file of its own (records/runfiles.py; `sptbench merge` folds them in), save resumable checkpoints, and are requeued
by submitit at their time limit or on preemption, resuming from the last checkpoint (training/resume.py).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sptbench.core.errors import SptbenchError
from sptbench.records.keys import canonical_json, setting_name
from sptbench.sweep.claims import claim, claim_name, claims_dir
from sptbench.sweep.eta import device_matches, pooling_matches
from sptbench.sweep.plan import record_plan_key, spec_key
from sptbench.sweep.spec import require_launcher, run_label, several_splits


def _recorded_since(spec, key: tuple, seen: frozenset[str]) -> bool:
    """A record of `spec` (plan key `key`; ok or failed) that was not there when the sweep was planned: another
    process ran it."""
    from sptbench.records.io import read_records, table_path
    from sptbench.records.runfiles import runs_dir

    path = table_path(spec.results_dir, spec.model, setting_name(spec.shots, spec.train_size))
    places = [p for p in (path, runs_dir(path)) if p.exists()]  # the table and the records not merged yet
    return any(r["run_id"] not in seen and record_plan_key(r) == key and device_matches(spec, r)
               and pooling_matches(spec, r) for r in read_records(places))


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
    split = several_splits(specs)
    bar = tqdm(specs, desc="sweep", unit="run", disable=not progress, dynamic_ncols=True)
    for i, spec in enumerate(bar, 1):
        bar.set_postfix_str(run_label(spec, split))
        with _claimed(spec, seen) as taken:
            if taken is None:
                _run_one(spec, i, len(specs), failures, run, tqdm, split)
        if taken is not None:
            skipped.append(spec)
            tqdm.write(f"[{i}/{len(specs)}] skipped: {run_label(spec, split)}: {taken}", file=sys.stderr)
        elif after_each is not None:
            after_each()
    bar.close()
    return failures, skipped


def _run_one(spec, i: int, n: int, failures: list, run, tqdm, split: bool = False) -> None:
    """One run of `run_local`, its one-line result logged (also with --quiet), a failure appended to `failures`."""
    try:
        rec = run(spec).record
    except Exception as e:  # one run's failure (a user error or a bug) must not cost the rest of the sweep
        why = str(e) if isinstance(e, SptbenchError) else f"{type(e).__name__}: {e}"
        failures.append((spec, why))
        tqdm.write(f"[{i}/{n}] failed: {run_label(spec, split)}: {why}", file=sys.stderr)
    else:
        # one line per run, also with --quiet: a long sweep's log says what finished, when, and how it scored
        test, dev = rec["metrics"]["test"], rec["metrics"]["dev"]
        score = f"test {test['score']:.4f}" if "score" in test else f"dev {dev.get('score', float('nan')):.4f}"
        tqdm.write(f"[{i}/{n}] {run_label(spec, split)}: {score} ({rec['time']['wall_s']:.0f} s)", file=sys.stderr)


def run_job(spec, seen: frozenset[str] | None = None, split: bool = False) -> dict:
    """One array job: run `spec` unless another job holds or has recorded it (with `seen`, the run ids recorded when
    the array was planned: sptbench/sweep/claims.py), and return a short summary (`split`: its label says its split
    source)."""
    from sptbench.run.runner import run

    label = run_label(spec, split)
    with _claimed(spec, seen) as taken:
        if taken is not None:
            return {"run": label, "status": "skipped", "error": taken}
        try:
            rec = run(spec).record
        except Exception as e:  # reported in the job's result, like a run recorded as failed
            return {"run": label, "status": "failed", "error": str(e) or type(e).__name__}
    return {"run": label, "status": rec["status"], "run_id": rec["run_id"], "test": rec["metrics"]["test"]}


class RunJob:
    """The callable of an array job: `run_job` with the plan's `seen`, and submitit's `checkpoint` hook: at the time
    limit or on preemption submitit calls it and requeues the same job, which resumes from its last checkpoint."""

    def __init__(self, seen: frozenset[str] | None = None, split: bool = False):
        self.seen = seen
        self.split = split

    def __call__(self, spec) -> dict:
        return run_job(spec, self.seen, self.split)

    def checkpoint(self, spec):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(RunJob(self.seen, self.split), spec)


def cluster_spec(spec):
    """A run as an array job runs it: its record as its own file and checkpoints at every dev evaluation, unless the
    sweep says otherwise (record_to, checkpoint_every)."""
    from sptbench.core.run_schema import TrainConfig

    every = spec.checkpoint_every or int(spec.train_overrides.get("eval_every", TrainConfig.eval_every))
    return dataclasses.replace(spec, record_to=spec.record_to or "file", checkpoint_every=every)


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
    seen: frozenset[str] | None = None,
) -> list:
    """Submit one submitit job array (one job per run, `cluster_spec`; with `seen`, claimed as `run_job` says).
    `cluster="local"`: submitit's local executor (one process per job, here); `cluster="debug"`: in this process,
    one after another (for tests and debugging)."""
    require_launcher("slurm")
    import submitit

    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    params: dict[str, Any] = {"name": name, "timeout_min": time_min, "gpus_per_node": gpus, "mem_gb": mem_gb}
    params["cpus_per_task"] = cpus
    params["slurm_partition"] = partition
    params["slurm_array_parallelism"] = array_parallelism
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor.map_array(RunJob(seen, several_splits(specs)), [cluster_spec(spec) for spec in specs])
