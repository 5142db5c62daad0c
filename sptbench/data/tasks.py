"""A task's data as one run uses it (its spec: data/specs.py): load a source, map labels, split by protocol.

A spec is data, not code (lm-evaluation-harness style). `load_task` reads the training pool and the test set
from the task's own data folder (its spec's `data`), else the first folder of the data search path that holds the
task (`--data-dir A:B`, else $SPTBENCH_DATA_PATH then $SPTBENCH_DATA_DIR), else the Hugging Face hub; then it splits
the pool by protocol:

- few-shot (`shots=K`, LM-BFF): K per class for train and another, disjoint K per class for dev, seeded;
- LM-BFF published splits (`split_source="lm-bff"`, K=16, seeds 13/21/42/87/100, or the spec's own), read as-is;
- fixed train size (`train_size=N`, the "1k regime"): N sampled from the pool, seeded; dev as in full data;
- full data: dev carved from the pool with a fixed seed (never the run seed), train = the rest.
The test set is always the task's test split, untouched.

Specs are found by name in the user folders of $SPTBENCH_TASKS_PATH (os.pathsep-separated; `--tasks-dir DIR` prepends
to it), in order, then in the packaged `tasks/`: the first folder holding `<name>.yaml` wins (docs/tasks.md).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sptbench.core import safe_yaml
from sptbench.core.errors import SptbenchError, describe, unknown_choice
from sptbench.core.hub import hub_unavailable, offline_env
from sptbench.core.paths import check_name
from sptbench.data.locate import (
    DATA_DIR_ENV,
    DATA_PATH_ENV,
    LM_BFF_FOLDER,
    data_roots,
    empty_text_note,
    lm_bff_folder,
    task_folder,
)
from sptbench.data.specs import LM_BFF_SEEDS, TaskSpec, list_tasks, load_spec  # noqa: F401 (LM_BFF_SEEDS: for callers)

SPLIT_SOURCES = ("sample", "lm-bff")
DEV_SEED = 0  # full-data / train-size dev carving: fixed, so every run seed sees the same dev set
DEV_FRACTION = 0.1
DEV_MAX = 1000

Row = dict[str, Any]


@dataclass
class TaskData:
    """The rows one run uses, and where they came from (every field goes into the run's record)."""

    spec: TaskSpec
    train: list[Row]
    dev: list[Row]
    test: list[Row]
    source: str  # "mirror" or "hub"
    location: str  # the folder or hub id used
    fingerprint: str  # sha256 over the exact rows of train + dev + test, in order
    protocol: dict
    notes: list[str] = field(default_factory=list)


@dataclass
class _Source:
    """A task's training pool and test set as read from one data source."""

    pool: list[Row]
    test: list[Row]
    kind: str
    location: str
    notes: list[str]


# ---------------------------------------------------------------- loading


def load_task(
    name: str,
    *,
    data_dir: str | Path | None = None,
    shots: int | None = None,
    seed: int = 13,
    split_source: str = "sample",
    train_size: int | None = None,
    strict_data: bool = False,
) -> TaskData:
    """Load a task's train/dev/test for one protocol and seed; deterministic for (task, protocol, seed, source).
    Rows with an empty text are kept and counted in the notes; `strict_data` refuses them instead (one line)."""
    spec = load_spec(name)
    check_protocol(spec, shots, seed, split_source, train_size)
    roots = data_roots(data_dir)
    folder = task_folder(spec, roots)
    empties: dict[str, list[str]] = {}
    source = _read_mirror(spec, folder, empties) if folder is not None else _read_hub(spec, empties)
    notes = list(source.notes)
    location = source.location
    if split_source == "lm-bff":
        splits = lm_bff_folder(spec, roots, seed)
        train, dev, split_notes = _lm_bff_split(spec, splits, source.pool, seed, empties)
        notes += split_notes + _overlap_notes(spec, train + dev, source.test)
        location = f"{location} (train/dev: {splits})"
    else:
        train_idx, dev_idx = _sample_split(spec, source.pool, shots, seed, train_size)
        train, dev = [source.pool[i] for i in train_idx], [source.pool[i] for i in dev_idx]
    notes += _empty_text_notes(empties, strict_data)
    protocol = {
        "shots": shots,
        "train_size": train_size,
        "split_source": split_source,
        "seed": seed,
        "n_train": len(train),
        "n_dev": len(dev),
        "n_test": len(source.test),
    }
    return TaskData(
        spec=spec,
        train=train,
        dev=dev,
        test=source.test,
        source=source.kind,
        location=location,
        fingerprint=fingerprint(train, dev, source.test),
        protocol=protocol,
        notes=notes,
    )


def check_protocol(spec: TaskSpec, shots: int | None, seed: int, split_source: str, train_size: int | None) -> None:
    """Reject protocol combinations that cannot be honoured, before reading any data."""
    if split_source not in SPLIT_SOURCES:
        raise unknown_choice("split source", split_source, SPLIT_SOURCES)
    if shots is not None and train_size is not None:
        raise SptbenchError("give either shots (few-shot) or train_size (fixed-size regime), not both")
    if shots is not None and shots < 1:
        raise SptbenchError(f"shots must be a positive number of examples per class, got {shots}")
    if train_size is not None and train_size < 1:
        raise SptbenchError(f"train_size must be positive, got {train_size}")
    if split_source != "lm-bff":
        return
    if spec.lm_bff is None:
        with_splits = [t for t in list_tasks() if load_spec(t).lm_bff is not None]
        raise SptbenchError(f"task '{spec.name}' has no LM-BFF splits; tasks with them: {', '.join(with_splits)}")
    k, seeds = spec.lm_bff["shots"], spec.lm_bff["seeds"]
    if shots != k:
        raise SptbenchError(f"split_source 'lm-bff' needs shots={k} (task '{spec.name}''s splits are {k}-shot)")
    if seed not in seeds:
        raise SptbenchError(
            f"the LM-BFF splits of task '{spec.name}' exist for seeds {', '.join(map(str, seeds))} only, "
            f"not seed {seed}"
        )


def _empty_text_notes(empties: dict[str, list[str]], strict: bool) -> list[str]:
    """One note per file read that has rows with an empty text; with `strict`, the first such row is an error."""
    for label, wheres in empties.items():
        if strict and wheres:
            raise SptbenchError(f"{wheres[0]}: empty text ({len(wheres)} row(s) of {label} have one; refused by "
                                "--strict-data, else kept and counted in the record's data notes)")
    return [empty_text_note(label, wheres) for label, wheres in empties.items() if wheres]


def _read_mirror(spec: TaskSpec, folder: Path, empties: dict[str, list[str]]) -> _Source:
    """Read the task's `mirror.train` and `mirror.test` files (JSON lines) from its data folder."""
    paths = {split: folder / check_name(spec.mirror[split], f"mirror.{split}") for split in ("train", "test")}
    for path in paths.values():
        if not path.is_file():
            raise SptbenchError(
                f"missing file {path}: a task's data folder must hold its {spec.mirror['train']} and "
                f"{spec.mirror['test']}"
            )
    note = spec.mirror.get("note")
    return _Source(
        pool=read_jsonl(paths["train"], spec, empties),
        test=read_jsonl(paths["test"], spec, empties),
        kind="mirror",
        location=str(folder),
        notes=[note] if note else [],
    )


def read_jsonl(path: Path, spec: TaskSpec, empties: dict[str, list[str]] | None = None) -> list[Row]:
    """Read mirror rows; plain `json` (not `datasets`) so that a bad line is reported by file and line. Rows with an
    empty text are listed (file:line) in `empties[str(path)]`."""
    rows = []
    empty = [] if empties is None else empties.setdefault(str(path), [])
    for lineno, line in enumerate(_read_data_text(path).split("\n"), start=1):  # not splitlines(): U+2028 is text
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            raw = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise SptbenchError(f"{where}: malformed JSON line ({getattr(exc, 'msg', 'nested too deeply')})") from None
        if not isinstance(raw, dict):
            raise SptbenchError(f"{where}: expected a JSON object per line")
        rows.append(_make_row(spec, {c: raw.get(c) for c in spec.text_columns}, raw.get("label"), where, empty))
    if not rows:
        raise SptbenchError(f"{path}: no rows (an empty data file)")
    return rows


def _read_data_text(path: Path, encoding: str = "utf-8") -> str:
    """A data file's text; unreadable files and non-UTF-8 bytes are one-line errors naming the file (and line)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SptbenchError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return safe_yaml.decode_utf8(data, str(path), encoding)


def _make_row(spec: TaskSpec, texts: dict[str, Any], label_name: Any, where: str, empty: list[str]) -> Row:
    """Build one row (text columns + label id), checking texts are strings and the label is known; a row with an
    empty (or blank) text is kept and its place appended to `empty`."""
    for column, text in texts.items():
        if not isinstance(text, str):
            raise SptbenchError(f"{where}: column '{column}' is missing or not a string")
    if any(not text.strip() for text in texts.values()):
        empty.append(where)
    if label_name not in spec.labels:
        raise SptbenchError(f"{where}: unknown label {label_name!r}; task '{spec.name}' has {list(spec.labels)}")
    return {**texts, "label": spec.labels.index(label_name)}


def _read_hub(spec: TaskSpec, empties: dict[str, list[str]]) -> _Source:
    """Read the pool and test set from the Hugging Face hub, mapping hub columns and labels to ours."""
    hub = spec.hub
    if hub is None:
        raise SptbenchError(
            f"task '{spec.name}' is local-only (no hub source in {spec.path}): give it a data folder (its spec's "
            f"'data', --data-dir or ${DATA_PATH_ENV}) holding {spec.name}/{spec.mirror['train']}"
        )
    hub_id = hub["path"] + (f"/{hub['name']}" if hub.get("name") else "")
    revision = hub.get("revision")
    # no offline variable set and no connection: say so now, not after datasets' retries (with one set, datasets
    # reads its cache, or fails at once)
    reason = None if offline_env("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE") else hub_unavailable()
    if reason is not None:
        raise SptbenchError(f"task '{spec.name}' has no local data folder and the hub cannot be asked ({reason}). "
                            f"Pass --data-dir or set {DATA_DIR_ENV} to a local mirror.")
    try:
        import datasets

        loaded = {
            role: datasets.load_dataset(hub["path"], hub.get("name"), split=hub["splits"][role], revision=revision)
            for role in ("train", "test")
        }
    except Exception as exc:  # network, auth, missing dataset: all mean "this source is unavailable"
        raise SptbenchError(
            f"hub source failed for task '{spec.name}' ({hub_id}): {describe(exc)}. "
            f"Pass --data-dir or set {DATA_PATH_ENV} (or {DATA_DIR_ENV}) to a local mirror."
        ) from exc
    note = hub.get("note")
    return _Source(
        pool=hub_rows(spec, loaded["train"], f"{hub_id}[{hub['splits']['train']}]", empties),
        test=hub_rows(spec, loaded["test"], f"{hub_id}[{hub['splits']['test']}]", empties),
        kind="hub",
        location=f"hf:{hub_id}" + (f"@{revision}" if revision else ""),
        notes=[note] if note else [],
    )


def hub_rows(spec: TaskSpec, dataset: Any, where: str, empties: dict[str, list[str]] | None = None) -> list[Row]:
    """Map a hub split (an iterable of dicts with `column_names`) to our rows via `spec.hub`."""
    empty = [] if empties is None else empties.setdefault(where, [])
    columns = spec.hub["columns"]
    label_column = spec.hub.get("label_column", "label")
    needed = [columns[c] for c in spec.text_columns] + [label_column]
    missing = [c for c in needed if c not in dataset.column_names]
    if missing:
        raise SptbenchError(f"{where}: hub columns {missing} not found; it has {dataset.column_names}")
    labels = spec.hub["labels"]
    rows = []
    for i, raw in enumerate(dataset):
        value = raw[label_column]
        if value not in labels:
            raise SptbenchError(f"{where} row {i}: hub label {value!r} is not in the spec's hub.labels")
        texts = {c: raw[columns[c]] for c in spec.text_columns}
        rows.append(_make_row(spec, texts, labels[value], f"{where} row {i}", empty))
    if not rows:
        raise SptbenchError(f"{where}: no rows (an empty split)")
    return rows


# ---------------------------------------------------------------- protocols


def _sample_split(
    spec: TaskSpec, pool: list[Row], shots: int | None, seed: int, train_size: int | None
) -> tuple[list[int], list[int]]:
    """Pool indices for train and dev under the few-shot, fixed-size or full-data protocol."""
    if shots is not None:
        return few_shot_indices(spec, pool, shots, seed)
    dev = carve_dev(len(pool))
    dev_set = set(dev)
    rest = [i for i in range(len(pool)) if i not in dev_set]
    if train_size is None:
        return rest, dev
    if train_size > len(rest):
        raise SptbenchError(
            f"train_size={train_size} is too large for task '{spec.name}': its pool has {len(pool)} examples, "
            f"{len(dev)} go to dev, so at most train_size={len(rest)}"
        )
    return random.Random(seed).sample(rest, train_size), dev


def carve_dev(pool_size: int) -> list[int]:
    """Full-data dev indices: 10% of the pool, at most 1,000, drawn with the fixed DEV_SEED (not the run seed)."""
    size = min(DEV_MAX, max(1, round(pool_size * DEV_FRACTION)))
    if size >= pool_size:
        raise SptbenchError(f"a pool of {pool_size} examples is too small to carve a dev set from")
    return sorted(random.Random(DEV_SEED).sample(range(pool_size), size))


def _indices_by_class(pool: Sequence[Row], num_labels: int) -> list[list[int]]:
    """Pool indices grouped by label id, in pool order."""
    groups: list[list[int]] = [[] for _ in range(num_labels)]
    for i, row in enumerate(pool):
        groups[row["label"]].append(i)
    return groups


def few_shot_indices(spec: TaskSpec, pool: Sequence[Row], shots: int, seed: int) -> tuple[list[int], list[int]]:
    """LM-BFF protocol: per class, 2K seeded draws; the first K go to train, the next K to dev."""
    groups = _indices_by_class(pool, spec.num_labels)
    _check_shots(spec, groups, shots, "pool")
    rng = random.Random(seed)
    train: list[int] = []
    dev: list[int] = []
    for members in groups:
        picked = rng.sample(members, 2 * shots)
        train += picked[:shots]
        dev += picked[shots:]
    return train, dev


def _check_shots(spec: TaskSpec, groups: list[list[int]], shots: int, what: str, per_class: int = 2) -> None:
    """K-shot needs `per_class`*K examples in every class; say the largest K that fits."""
    smallest = min(range(len(groups)), key=lambda c: len(groups[c]))
    size = len(groups[smallest])
    if per_class * shots > size:
        raise SptbenchError(
            f"shots={shots} is too many for task '{spec.name}': class '{spec.labels[smallest]}' has {size} examples "
            f"in the {what} and K-shot needs {per_class}K per class; at most shots={size // per_class}"
        )


def _lm_bff_split(spec: TaskSpec, folder: Path, pool: list[Row], seed: int,
                  empties: dict[str, list[str]]) -> tuple[list[Row], list[Row], list[str]]:
    """Read a published LM-BFF split; where no dev file exists (MNLI), sample dev from the pool instead."""
    cfg = spec.lm_bff
    train = read_lm_bff(folder / f"train.{cfg['format']}", spec, empties)
    notes = [cfg["note"]] if cfg.get("note") else []
    if cfg.get("dev", True):
        return train, read_lm_bff(folder / f"dev.{cfg['format']}", spec, empties), notes
    dev = _dev_excluding(spec, pool, train, seed)
    notes.append(
        f"lm-bff: {spec.name} has no published dev split; dev = {spec.lm_bff['shots']} per class sampled from the "
        f"training pool (seed {seed}), excluding texts in the published train split"
    )
    return train, dev, notes


def _dev_excluding(spec: TaskSpec, pool: list[Row], train: list[Row], seed: int) -> list[Row]:
    """16 per class from the pool, seeded, skipping rows whose text is in the given train rows."""
    taken = {_text_key(spec, row) for row in train}
    candidates = [row for row in pool if _text_key(spec, row) not in taken]
    groups = _indices_by_class(candidates, spec.num_labels)
    shots = spec.lm_bff["shots"]
    _check_shots(spec, groups, shots, "pool (for the missing LM-BFF dev)", per_class=1)
    rng = random.Random(seed)
    return [candidates[i] for members in groups for i in rng.sample(members, shots)]


def read_lm_bff(path: Path, spec: TaskSpec, empties: dict[str, list[str]] | None = None) -> list[Row]:
    """Read one LM-BFF split file (tsv with header, or header-less `label,text` csv) into our rows."""
    if not path.is_file():
        raise SptbenchError(f"missing file {path}: expected the LM-BFF 16-shot splits under <data dir>/{LM_BFF_FOLDER}")
    cfg = spec.lm_bff
    empty = [] if empties is None else empties.setdefault(str(path), [])
    # utf-8-sig: MRPC's header starts with a byte-order mark
    with io.StringIO(_read_data_text(path, "utf-8-sig"), newline="") as handle:
        if cfg["format"] == "tsv":
            reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.reader(handle)
        try:
            positions = _lm_bff_positions(cfg, next(reader, []) if cfg.get("header") else None, path)
            rows = []
            for record in reader:
                where = f"{path}:{reader.line_num}"
                if len(record) <= max(positions.values()):
                    raise SptbenchError(
                        f"{where}: expected at least {max(positions.values()) + 1} fields, got {len(record)}"
                    )
                label = cfg["labels"].get(record[positions["label"]], record[positions["label"]])
                texts = {c: record[positions[c]] for c in spec.text_columns}
                rows.append(_make_row(spec, texts, label, where, empty))
        except csv.Error as exc:
            raise SptbenchError(f"{path}:{reader.line_num}: malformed {cfg['format']} ({exc})") from None
    if not rows:
        raise SptbenchError(f"{path}: no rows (an empty split file)")
    return rows


def _lm_bff_positions(cfg: dict, header: list[str] | None, path: Path) -> dict[str, int]:
    """Field positions of our text columns and the label: by header name, or by index for header-less files."""
    wanted = {**cfg["columns"], "label": cfg["label_column"]}
    if header is None:
        return {ours: int(theirs) for ours, theirs in wanted.items()}
    missing = [str(theirs) for theirs in wanted.values() if str(theirs) not in header]
    if missing:
        raise SptbenchError(f"{path}:1: header lacks columns {missing}; it has {header}")
    return {ours: header.index(str(theirs)) for ours, theirs in wanted.items()}


def _text_key(spec: TaskSpec, row: Row) -> tuple[str, ...]:
    """A row's texts, for matching rows across sources."""
    return tuple(row[c] for c in spec.text_columns)


def _overlap_notes(spec: TaskSpec, rows: Iterable[Row], test: list[Row]) -> list[str]:
    """Say how many train/dev rows also occur (same texts) in the test set, if any."""
    test_keys = {_text_key(spec, row) for row in test}
    rows = list(rows)
    shared = sum(_text_key(spec, row) in test_keys for row in rows)
    if not shared:
        return []
    return [f"lm-bff: {shared} of the {len(rows)} train/dev rows also occur in the test set"]


def fingerprint(*splits: Sequence[Row]) -> str:
    """sha256 over the rows of each split, in order: equal fingerprints mean identical data."""
    digest = hashlib.sha256()
    for number, rows in enumerate(splits):
        digest.update(f"split {number} {len(rows)}\n".encode())
        for row in rows:
            digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode("utf-8"))
            digest.update(b"\n")
    return digest.hexdigest()
