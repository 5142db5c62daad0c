"""The test-once protocol of a `test: selected` sweep: once every configuration of a group is recorded, the
dev-selected one is evaluated on test once from its saved state (`run/persist.py`), its tested record appended and the
group's saved states removed. Selection itself is pure and lives in `reports/selection.py`."""

from __future__ import annotations

import shutil
import time
from math import nan
from pathlib import Path

from sptbench.core.errors import SptbenchError
from sptbench.records.io import append_record, new_run_id, now_iso, record_key, record_table_path
from sptbench.reports.selection import grid_position, is_untested, select_by_dev, selection_group


def groups_to_test(records: list[dict], sweep_name: str, configs: dict[str, int]) -> dict[tuple, list[dict]]:
    """Groups of `sweep_name`'s runs that have every configuration recorded (`configs`: method -> count, or the
    record's own `sweep.group_configs` where the sweep splits a method's selection by `select_within`) and no tested
    record yet: what `test_selected` has to finish."""
    groups: dict[tuple, dict[tuple, dict]] = {}
    for rec in records:
        sweep = rec.get("sweep") or {}
        if sweep.get("name") != sweep_name or rec.get("status") not in ("ok", "failed"):
            continue
        latest = groups.setdefault(selection_group(rec), {})
        key = record_key(rec) if rec.get("status") == "ok" else ("failed", sweep.get("config_index"))
        if key not in latest or str(rec.get("created", "")) >= str(latest[key].get("created", "")):
            latest[key] = rec
    out = {}
    for group, by_key in groups.items():
        recs = list(by_key.values())
        ok = [r for r in recs if r["status"] == "ok"]
        indices = {(r.get("sweep") or {}).get("config_index") for r in recs}
        expected = (recs[0].get("sweep") or {}).get("group_configs") or configs.get(group[0][0], 0)
        if not ok or any(not is_untested(r) for r in ok) or len(indices) < expected:
            continue
        out[group] = ok
    return out


def test_selected(candidates: list[dict], *, results_dir: str | Path, data_dir: str | None, device: str = "auto",
                  log=print, quiet: bool = False) -> dict:
    """Pick the dev-best of one group's untested runs, evaluate it on test once, append its tested record; remove
    the group's saved states. Returns the tested record. `quiet`: no transformers load report or progress bar."""
    from sptbench.data.metrics import warm_up
    from sptbench.data.tasks import load_task
    from sptbench.data.templates import encode_prompt_rows, setup_from_record
    from sptbench.run.persist import load_trained, pending_dir
    from sptbench.run.provenance import resolve_device
    from sptbench.training.loop import encode_rows, evaluate

    [winner] = [r for r in select_by_dev(candidates) if r.get("status") == "ok"]
    folder = pending_dir(results_dir, winner["run_id"])
    if not (folder / "trained.safetensors").is_file():
        raise SptbenchError(f"the dev-selected run {winner['run_id']} has no saved state in {folder}; re-run it")
    model, tokenizer = load_trained(folder, quiet=quiet)
    p = winner["protocol"]
    task = load_task(winner["task"]["name"], data_dir=data_dir, shots=p["shots"], seed=p["seed"],
                     split_source=p["split_source"], train_size=p["train_size"])
    if task.fingerprint != winner["data"]["fingerprint"]:
        raise SptbenchError(f"the data of run {winner['run_id']} changed since it trained (fingerprint); re-run it")
    model.to(resolve_device(device))
    setup = setup_from_record(winner, task.spec)
    warm_up()  # evaluate's one-time import stays out of the recorded eval time
    t0 = time.perf_counter()
    if setup is not None:  # the prompt head: the record's template and label words (docs/heads.md)
        encoded = encode_prompt_rows(task.test, tokenizer, setup, task.spec.max_length, causal=model.family.causal)
    else:
        encoded = encode_rows(task.test, tokenizer, task.spec)
    test = evaluate(model, encoded, task.spec, winner["training"].get("eval_batch_size", 64),
                    tokenizer.pad_token_id or 0)
    eval_s = time.perf_counter() - t0
    ranked = sorted(candidates, key=lambda r: (grid_position(r), r["run_id"]))
    record = {**winner, "run_id": new_run_id(), "created": now_iso()}
    record["metrics"] = {**winner["metrics"], "test": dict(test)}
    record["time"] = {**winner["time"], "eval_s": round(winner["time"]["eval_s"] + eval_s, 2)}
    record["throughput"] = {**winner["throughput"], "eval_samples_per_s": round(len(task.test) / eval_s, 3)}
    record["selection"] = {
        "tested": True,
        "selected_run": winner["run_id"],
        "over": len(candidates),
        "candidates": [
            {"run_id": r["run_id"], "config_index": (r.get("sweep") or {}).get("config_index"),
             "dev_score": r["metrics"]["dev"].get("score")}
            for r in ranked
        ],
    }
    append_record(record_table_path(results_dir, record), record)
    for r in candidates:
        shutil.rmtree(pending_dir(results_dir, r["run_id"]), ignore_errors=True)
    log(f"tested the dev-selected configuration of {winner['method']['name']}/{winner['task']['name']} seed "
        f"{p['seed']}: sweep config {grid_position(winner):.0f}, "
        f"best dev {winner['metrics']['dev'].get('score', nan):.4f} of {len(candidates)} configurations; "
        f"test {test.get('score', nan):.4f}")
    return record
