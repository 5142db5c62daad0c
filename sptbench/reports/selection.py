"""Dev selection over hyper-parameter grids, next to the tables that report it.

`select_by_dev(records)`: per method, task, seed and setting keep the configuration best on dev (tables, compare).

The test-once protocol (a sweep with `test: selected`, docs/sweeps.md): every grid point trains with dev
selection and is recorded *untested* (`selection.tested: false`; its best-on-dev trained state saved under
`<results>/pending/<run id>/`); when every configuration of a group (method, task, seed, setting) is recorded,
`test_selected` picks the dev-best one, evaluates it on test once and appends its record again, tested, saying what
it won over; the saved states of the group are then removed. Test never decides anything: it is read once, for the
winner only.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable
from math import nan
from pathlib import Path

from sptbench.core.errors import SptbenchError
from sptbench.records.io import (
    PENDING_DIR,
    append_record,
    canonical_json,
    head_of,
    latest_per_key,
    new_run_id,
    now_iso,
    record_key,
    record_table_path,
    require_valid,
)


def group_of(rec: dict) -> tuple:
    """The comparison group of a run: method, task (and version), seed, backbone, head and data regime."""
    p = rec["protocol"]
    return (
        rec["method"]["name"],
        rec["task"]["name"],
        rec["task"]["version"],
        p["seed"],
        rec["backbone"]["id"],
        p["shots"],
        p["train_size"],
        p["split_source"],
        canonical_json(head_of(rec)),
    )


def grid_position(rec: dict) -> float:
    index = (rec.get("sweep") or {}).get("config_index")
    return float(index) if isinstance(index, int) and not isinstance(index, bool) else float("inf")


def is_untested(rec: dict) -> bool:
    return (rec.get("selection") or {}).get("tested") is False


def _dev_best(records: list[dict]) -> tuple[dict[tuple, dict], Counter, Counter]:
    """Per selection group (`group_of`): its dev-best ok record (the latest of each configuration), how many
    configurations it has, and how many its sweep declared (`sweep.group_configs` or `sweep.configs` of its records;
    0 outside sweeps)."""
    best: dict[tuple, tuple[tuple, dict]] = {}
    sizes: Counter = Counter()
    declared: Counter = Counter()
    for position, rec in enumerate(latest_per_key([r for r in records if r.get("status") == "ok"])[0]):
        score = (rec.get("metrics") or {}).get("dev", {}).get("score")
        score = float(score) if isinstance(score, int | float) else float("-inf")
        rank = (-score, grid_position(rec), str(rec.get("created", "")), position)  # smaller is better
        group = group_of(rec)
        sizes[group] += 1
        grid = rec.get("sweep") or {}
        n = grid.get("group_configs") or grid.get("configs")
        if isinstance(n, int) and not isinstance(n, bool):
            declared[group] = max(declared[group], n)
        if group not in best or rank < best[group][0]:
            best[group] = (rank, rec)
    return {group: rec for group, (_, rec) in best.items()}, sizes, declared


def dev_selection(records: Iterable[dict], *, declared: bool = True) -> tuple[list[dict], dict[tuple, tuple[int, int]]]:
    """`select_by_dev` and `grid_sizes` of the same records, in one pass over them."""
    records = require_valid(records)
    best, sizes, grids = _dev_best(records)
    keep = {id(rec) for rec in best.values()}  # by identity: `_dev_best` returns the input's own dicts
    winners = [rec for rec in records if id(rec) in keep or rec.get("status") != "ok"]
    return winners, _sizes(sizes, grids, declared)


def _sizes(sizes: Counter, grids: Counter, declared: bool) -> dict[tuple, tuple[int, int]]:
    return {group: (n, grids[group] if declared else 0) for group, n in sizes.items()}


def select_by_dev(records: Iterable[dict]) -> list[dict]:
    """Per method, task, seed and setting (backbone, head, shots/train size, split source), keep the ok run of the
    configuration with the best dev `score` (never the test score). Ties go to the first configuration in grid order
    (the sweep's `config_index`), then the earliest `created`. A configuration run twice counts once (its latest
    record, as in tables; a tested record of the test-once protocol is later than its untested one). Failed records
    pass through unchanged (tables count them); the input order is kept."""
    return dev_selection(records)[0]


def grid_sizes(records: Iterable[dict], *, declared: bool = True) -> dict[tuple, tuple[int, int]]:
    """Per selection group (`group_of`) of `records`: how many configurations are recorded, and how many its sweep
    declared (0 outside sweeps, or when not `declared`: records already narrowed to part of their grid)."""
    _, sizes, grids = _dev_best(require_valid(records))
    return _sizes(sizes, grids, declared)


def partial_grid_notes(winners: Iterable[dict], sizes: dict[tuple, tuple[int, int]],
                       label: Callable[[dict], str] = lambda rec: rec["method"]["name"]) -> list[str]:
    """One line per method (`label`) some of whose dev-selected runs were chosen over a grid not fully recorded yet
    (a sweep in progress): fewer configurations than their sweep declared, or than another group of the method
    has. Those winners may still change."""
    per_method: dict[str, list[tuple[int, int]]] = {}
    for rec in winners:
        if (size := sizes.get(group_of(rec))) is not None:
            per_method.setdefault(label(rec), []).append(size)
    notes = []
    for name, pairs in sorted(per_method.items()):
        full = max(max(n for n, _ in pairs), max(d for _, d in pairs))
        short = [n for n, d in pairs if n < full]
        if short:
            notes.append(f"{name}: {len(short)} of {len(pairs)} dev selections ran over an incomplete grid (as few "
                         f"as {min(short)} of {full} configurations recorded): those winners may still change")
    return notes


def pending_dir(results_dir: str | Path, run_id: str) -> Path:
    return Path(results_dir) / PENDING_DIR / run_id


def selection_group(rec: dict) -> tuple:
    """The group a configuration is tested for under the test-once protocol: its comparison group, split further by
    the sweep's `select_within` values (`sweep.group`)."""
    return group_of(rec), (rec.get("sweep") or {}).get("group")


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
    from sptbench.run.provenance import resolve_device
    from sptbench.run.runner import load_trained
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
