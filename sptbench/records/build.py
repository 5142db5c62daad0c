"""The one place a run record is assembled (docs/records.md): a run's record (`run_record`), the record a planned
run will write as far as it is known before it runs (`planned_record`), and the tested record of a dev-selected
run (`tested_record`). Plain data in, a record in the schema's order out (records/schema.py)."""

from __future__ import annotations

import secrets
from datetime import datetime, timezone
from typing import Protocol

from sptbench.records.schema import SCHEMA_VERSION


def new_run_id() -> str:
    """A unique, sortable run id: UTC time to the second plus 6 random hex digits (e.g. 20261127T062501-ab12cd)."""
    return f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"


def now_iso() -> str:
    """The current UTC time as ISO-8601 (the `created` field)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class TrainingResult(Protocol):
    """What a record reads of a training run's result (training.loop.TrainResult)."""

    best_step: int | None
    best_dev: dict[str, float]
    steps_run: int
    stopped_early: bool
    history: list[dict]
    train_time_s: float
    eval_time_s: float
    samples_seen: int
    tokens_seen: int


def run_record(*, created: str, status: str, error: str | None, method: str, method_config: dict, task: dict,
               protocol: dict, backbone: dict, head: dict, data: dict, training: dict, selection_metric: str,
               result: TrainingResult | None, test: dict, n_test: int, eval_s: float, params: dict, device: str,
               hardware: str, peak_memory_mb: float, dtype: str, wall_s: float, stages: dict, extra: dict,
               versions: dict, git: dict, sweep: dict | None = None, selection: dict | None = None) -> dict:
    """The record of one run. `result`: the training result (None when the run failed before it had one); `test`
    and `eval_s`: the test metrics and the seconds their evaluation took; `wall_s`: the run's seconds so far;
    `sweep`, `selection`: added where given."""
    res = result
    record = {
        "schema_version": SCHEMA_VERSION,
        "run_id": new_run_id(),
        "created": created,
        "status": status,
        "error": error,
        "method": {"name": method, "config": method_config},
        "task": task,
        "protocol": protocol,
        "backbone": backbone,
        # optional in the schema: records from before it lack it (linear)
        "head": head,
        "data": data,
        "training": training,
        "outcome": {
            "best_step": res.best_step if res else None,
            "steps_run": res.steps_run if res else 0,
            "stopped_early": res.stopped_early if res else False,
            "history": res.history if res else [],
        },
        "metrics": {"selection_metric": selection_metric, "dev": dict(res.best_dev) if res else {}, "test": dict(test)},
        "params": params,
        "throughput": {
            "train_samples_per_s": round(res.samples_seen / res.train_time_s, 3) if res and res.train_time_s else None,
            "train_tokens_per_s": round(res.tokens_seen / res.train_time_s, 1) if res and res.train_time_s else None,
            "eval_samples_per_s": round(n_test / eval_s, 3) if eval_s else None,
            "peak_memory_mb": round(peak_memory_mb, 1),
            "device": device,
            "hardware": hardware,  # optional in the schema: records before 2026-12-01 lack it
            "dtype": dtype,
        },
        "time": {
            "wall_s": round(wall_s, 2),
            "train_s": round(res.train_time_s, 2) if res else 0.0,
            "eval_s": round((res.eval_time_s if res else 0.0) + eval_s, 2),
        },
        "stages": stages,
        "extra": extra,
        "versions": versions,
        "git": git,
    }
    for name in ("resumed_at", "oom_retries"):  # only where it happened (training.loop.TrainResult)
        if res is not None and getattr(res, name, None):
            record["outcome"][name] = list(getattr(res, name))
    if sweep is not None:
        record["sweep"] = sweep
    if selection is not None:
        record["selection"] = selection
    return record


def planned_record(*, method: str, method_config: dict, task: str, task_version: int, shots: int | None,
                   train_size: int | None, split_source: str, seed: int, backbone: str, pooling: str | None,
                   head: dict, training: dict, revision: str | None = None) -> dict:
    """The sections of the record a planned run will write, as far as they are known before it runs (enough for its
    record key; the data fingerprint is known once the data is loaded)."""
    return {
        "method": {"name": method, "config": method_config},
        "task": {"name": task, "version": task_version},
        "protocol": {"shots": shots, "train_size": train_size, "split_source": split_source, "seed": seed},
        "backbone": {"id": backbone, "pooling": pooling, "requested_revision": revision},
        "head": head,
        "data": {"fingerprint": None},
        "training": training,
    }


def tested_record(winner: dict, ranked: list[dict], *, test: dict, eval_s: float, n_test: int) -> dict:
    """The tested record of a dev-selected run: `winner`'s record with a new run id, its test metrics (evaluated once,
    in `eval_s` seconds over `n_test` examples) and the `selection` it won (`ranked`: every candidate, grid order)."""
    record = {**winner, "run_id": new_run_id(), "created": now_iso()}
    record["metrics"] = {**winner["metrics"], "test": dict(test)}
    record["time"] = {**winner["time"], "eval_s": round(winner["time"]["eval_s"] + eval_s, 2)}
    record["throughput"] = {**winner["throughput"], "eval_samples_per_s": round(n_test / eval_s, 3)}
    record["selection"] = {
        "tested": True,
        "selected_run": winner["run_id"],
        "over": len(ranked),
        "candidates": [
            {"run_id": r["run_id"], "config_index": (r.get("sweep") or {}).get("config_index"),
             "dev_score": r["metrics"]["dev"].get("score")}
            for r in ranked
        ],
    }
    return record
