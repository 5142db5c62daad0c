"""The test-once protocol of a `test: selected` sweep: once every configuration of a group is recorded, the
dev-selected one is evaluated on test once from its saved state (`run/persist.py`), its tested record appended and the
group's saved states removed (`awaiting_test`, `run_pending_tests`: what `sptbench sweep` calls). Selection itself is
pure and lives in `reports/selection.py`."""

from __future__ import annotations

import shutil
import sys
import time
from math import nan
from pathlib import Path
from typing import TYPE_CHECKING

from sptbench.core.errors import SptbenchError
from sptbench.records.build import tested_record
from sptbench.records.io import append_record, read_records, record_table_path
from sptbench.records.keys import canonical_json, record_key
from sptbench.records.schema import TABLE_DIR
from sptbench.reports.selection import grid_position, is_untested, select_by_dev, selection_group
from sptbench.sweep.claims import claim, claim_name, claims_dir

if TYPE_CHECKING:
    from sptbench.sweep.spec import Sweep


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
                  log=print, quiet: bool = False, split: bool = False) -> dict:
    """Pick the dev-best of one group's untested runs, evaluate it on test once, append its tested record; remove
    the group's saved states. Returns the tested record. `quiet`: no transformers load report or progress bar;
    `split`: the log line names the split source (the sweep has several)."""
    from sptbench.data.metrics import warm_up
    from sptbench.data.tasks import load_task
    from sptbench.data.templates import encode_prompt_rows, setup_from_record
    from sptbench.run.persist import load_trained, pending_dir
    from sptbench.run.provenance import resolve_device
    from sptbench.training.loop import encode_rows, evaluate

    # every folder this reads or deletes is checked first: run ids come from a table, which is data from others
    folders = [pending_dir(results_dir, r["run_id"]) for r in candidates]
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
    record = tested_record(winner, ranked, test=test, eval_s=eval_s, n_test=len(task.test))
    append_record(record_table_path(results_dir, record), record)
    for pending in folders:
        shutil.rmtree(pending, ignore_errors=True)
    split_note = f" (split {p['split_source']})" if split else ""
    log(f"tested the dev-selected configuration of {winner['method']['name']}/{winner['task']['name']} seed "
        f"{p['seed']}{split_note}: sweep config {grid_position(winner):.0f}, "
        f"best dev {winner['metrics']['dev'].get('score', nan):.4f} of {len(candidates)} configurations; "
        f"test {test.get('score', nan):.4f}")
    return record


def awaiting_test(sweep: Sweep, tables: list[Path] | None = None) -> dict:
    """The groups of a `test: selected` sweep whose configurations are all recorded and none is tested yet, read
    from `tables` (default: every table under the results folder)."""
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
    tested = 0
    for group, candidates in awaiting_test(sweep).items():
        # claimed like a run: another process of this sweep may have found the same group complete
        with claim(claims_dir(sweep.results_dir), claim_name("test", canonical_json(list(group)))) as mine:
            # re-read the group's own table only: another process may have tested the group meanwhile
            if not mine or group not in awaiting_test(sweep, [record_table_path(sweep.results_dir, candidates[0])]):
                continue
            test_selected(candidates, results_dir=sweep.results_dir, data_dir=sweep.data_dir, device=sweep.device,
                          log=lambda msg: print(msg, file=sys.stderr), quiet=quiet,
                          split=len(sweep.split_sources) > 1)
            tested += 1
    return tested
