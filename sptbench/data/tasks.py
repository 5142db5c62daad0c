"""Task specs (`tasks/<task>.yaml`) and the data they describe: load a source, map labels, split by protocol.

A spec is data, not code (lm-evaluation-harness style). `load_task` reads the training pool and the test set
from a local mirror (`--data-dir` / SPTBENCH_DATA_DIR) or the Hugging Face hub, then splits the pool by protocol:

- few-shot (`shots=K`, LM-BFF): K per class for train and another, disjoint K per class for dev, seeded;
- LM-BFF published splits (`split_source="lm-bff"`, K=16, seeds 13/21/42/87/100), read as-is;
- fixed train size (`train_size=N`, the "1k regime"): N sampled from the pool, seeded; dev as in full data;
- full data: dev carved from the pool with a fixed seed (never the run seed), train = the rest.
The test set is always the task's test split, untouched.

Specs are found by name in the user folders of $SPTBENCH_TASKS_PATH (os.pathsep-separated; `--tasks-dir DIR` prepends
to it), in order, then in the packaged `tasks/`: the first folder holding `<name>.yaml` wins (docs/tasks.md).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import importlib.resources
import io
import json
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sptbench.core import safe_yaml
from sptbench.core.errors import SptbenchError, describe, unknown_choice
from sptbench.data.templates import DEFAULT_TEMPLATE, parse_template

DATA_DIR_ENV = "SPTBENCH_DATA_DIR"
TASKS_PATH_ENV = "SPTBENCH_TASKS_PATH"
MAX_TEXT_COLUMNS = 2  # a text or a text pair: the tokenizer takes (text, text_pair), a third would be text_target
# The keys a spec may have (docs/tasks.md documents each); anything else is a typo and an error.
SPEC_KEYS = ("name", "version", "text_columns", "labels", "metrics", "selection_metric", "max_length", "hub", "mirror",
             "lm_bff", "prompt")
HUB_KEYS = ("path", "name", "revision", "splits", "columns", "label_column", "labels", "note")
MIRROR_KEYS = ("train", "test", "note")
LM_BFF_KEYS = ("dir", "format", "header", "dev", "columns", "label_column", "labels", "note")
SPLIT_SOURCES = ("sample", "lm-bff")
LM_BFF_FOLDER = "lm-bff-16-shot"
LM_BFF_SHOTS = 16
LM_BFF_SEEDS = (13, 21, 42, 87, 100)
DEV_SEED = 0  # full-data / train-size dev carving: fixed, so every run seed sees the same dev set
DEV_FRACTION = 0.1
DEV_MAX = 1000
KNOWN_METRICS = ("accuracy", "f1")
# selection metric -> the metrics it averages
SELECTION_METRICS: dict[str, tuple[str, ...]] = {"accuracy": ("accuracy",), "f1": ("f1",), "acc_f1": ("accuracy", "f1")}

Row = dict[str, Any]


@dataclass(frozen=True)
class TaskSpec:
    """One task's spec, as read from `tasks/<name>.yaml`."""

    name: str
    version: int
    text_columns: tuple[str, ...]
    labels: tuple[str, ...]
    metrics: tuple[str, ...]
    selection_metric: str
    max_length: int
    hub: dict
    mirror: dict
    lm_bff: dict | None = None
    prompt: dict | None = None  # {templates: {name: text}, label_words: (word per label)}; see docs/heads.md
    path: str | None = None  # the spec file it was read from (recorded as task.spec_path)
    sha256: str | None = None  # of that file's bytes (recorded as task.spec_sha256)

    @property
    def num_labels(self) -> int:
        """How many classes the task has."""
        return len(self.labels)

    def __hash__(self) -> int:
        """Hash by identity of the spec file (the dict fields are unhashable); equality still compares all fields."""
        return hash((self.name, self.version))


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


# ---------------------------------------------------------------- specs


def _specs_root() -> Any:
    """The folder of packaged task YAMLs: the installed `sptbench.task_specs` package, else `<repo>/tasks`."""
    try:
        return importlib.resources.files("sptbench.task_specs")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "tasks"


def task_search_path() -> list[Path]:
    """The user task folders, in search order: $SPTBENCH_TASKS_PATH's entries (empty entries skipped)."""
    folders = []
    for entry in os.environ.get(TASKS_PATH_ENV, "").split(os.pathsep):
        if not entry.strip():
            continue
        folder = Path(entry).expanduser()
        if not folder.is_dir():
            raise SptbenchError(f"task folder '{folder}' (from ${TASKS_PATH_ENV} or --tasks-dir) is not a folder")
        folders.append(folder)
    return folders


def spec_files() -> dict[str, tuple[Any, bool]]:
    """Every findable task: name -> (its spec file, whether it comes from a user folder). The first folder of the
    search path that holds `<name>.yaml` wins; the packaged specs come last."""
    found: dict[str, tuple[Any, bool]] = {}
    for folder, user in [*((f, True) for f in task_search_path()), (_specs_root(), False)]:
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            name = entry.name[: -len(".yaml")]
            if entry.name.endswith(".yaml") and name and name not in found and entry.is_file():
                found[name] = (entry, user)
    return found


def packaged_tasks() -> list[str]:
    """Names of the task specs shipped with sptbench, sorted."""
    return sorted(e.name[: -len(".yaml")] for e in _specs_root().iterdir() if e.name.endswith(".yaml"))


def list_tasks() -> list[str]:
    """Names of all findable task specs (user folders and packaged), sorted."""
    return sorted(spec_files())


def load_spec(name: str) -> TaskSpec:
    """Read and check `<name>.yaml` from the search path; unknown names and malformed files raise SptbenchError."""
    files = spec_files()
    if name not in files:
        raise unknown_choice("task", name, files)
    entry = files[name][0]
    where = str(entry)
    text = safe_yaml.read_text(entry, "task spec")
    raw = safe_yaml.load_one(text, where)
    spec = _spec_from_raw(raw, name, where)
    return dataclasses.replace(spec, path=where, sha256=hashlib.sha256(text.encode("utf-8")).hexdigest())


def apply_tasks_dirs(dirs: Sequence[str] | None, what: str = "--tasks-dir") -> None:
    """Put folders (from `--tasks-dir` or a sweep file's `tasks_dir`) in front of $SPTBENCH_TASKS_PATH, as absolute
    paths: later spec look-ups, and the sweep's worker processes and Slurm jobs, all search them first."""
    if not dirs:
        return
    folders = []
    for d in dirs:
        folder = Path(d).expanduser()
        if not folder.is_dir():
            raise SptbenchError(f"{what} '{d}' is not a folder")
        folders.append(str(folder.resolve()))
    rest = [e for e in os.environ.get(TASKS_PATH_ENV, "").split(os.pathsep) if e.strip() and e not in folders]
    os.environ[TASKS_PATH_ENV] = os.pathsep.join(dict.fromkeys([*folders, *rest]))


def add_tasks_dir_argument(parser: argparse.ArgumentParser) -> None:
    """`--tasks-dir DIR` (repeatable) on a subcommand that resolves task names."""
    parser.add_argument(
        "--tasks-dir", dest="tasks_dir", action="append", metavar="DIR",
        help=f"a folder of task YAMLs searched before ${TASKS_PATH_ENV} and the packaged specs (repeatable; "
        "docs/tasks.md)",
    )


def _spec_from_raw(raw: Any, name: str, where: str) -> TaskSpec:
    """Check the parsed YAML field by field and build a TaskSpec."""
    if not isinstance(raw, dict):
        raise SptbenchError(f"{where}: a task spec must be a YAML mapping")
    _known_keys(raw, SPEC_KEYS, "", where)
    if raw.get("name") != name:
        raise SptbenchError(f"{where}: field 'name' is {raw.get('name')!r}, expected '{name}' (the file name)")
    version = _field(raw, "version", int, where)
    if isinstance(version, bool) or version < 1:
        raise SptbenchError(f"{where}: field 'version' must be an integer >= 1")
    text_columns = _str_tuple(raw, "text_columns", where)
    if len(text_columns) > MAX_TEXT_COLUMNS:
        raise SptbenchError(
            f"{where}: field 'text_columns' lists {len(text_columns)} columns {list(text_columns)}; a task has one "
            f"text or a pair (at most {MAX_TEXT_COLUMNS})"
        )
    spec = TaskSpec(
        name=name,
        version=version,
        text_columns=text_columns,
        labels=_str_tuple(raw, "labels", where),
        metrics=_str_tuple(raw, "metrics", where),
        selection_metric=_field(raw, "selection_metric", str, where),
        max_length=_field(raw, "max_length", int, where),
        hub=_field(raw, "hub", dict, where),
        mirror=_field(raw, "mirror", dict, where),
        lm_bff=_lm_bff_section(raw.get("lm_bff"), where),
    )
    spec = dataclasses.replace(spec, prompt=_prompt_section(raw.get("prompt"), spec, where))
    _check_spec(spec, where)
    return spec


def _known_keys(section: dict, known: tuple[str, ...], label: str, where: str) -> None:
    """Refuse keys the loader does not read (a misspelt optional key would otherwise be silently ignored)."""
    unknown = sorted(str(k) for k in section if k not in known)
    if unknown:
        raise SptbenchError(f"{where}: unknown key '{label}{unknown[0]}'; known: {', '.join(known)}")


def _field(raw: dict, key: str, kind: type, where: str) -> Any:
    """A required field of the given type."""
    if key not in raw:
        raise SptbenchError(f"{where}: missing field '{key}'")
    value = raw[key]
    if not isinstance(value, kind):
        raise SptbenchError(f"{where}: field '{key}' must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _str_tuple(raw: dict, key: str, where: str) -> tuple[str, ...]:
    """A required, non-empty list of distinct strings."""
    value = _field(raw, key, list, where)
    if not value or not all(isinstance(v, str) for v in value) or len(set(value)) != len(value):
        raise SptbenchError(f"{where}: field '{key}' must be a non-empty list of distinct strings")
    return tuple(value)


def _lm_bff_section(section: Any, where: str) -> dict | None:
    """The optional `lm_bff` mapping, with label keys as strings (file values are strings)."""
    if section is None:
        return None
    if not isinstance(section, dict):
        raise SptbenchError(f"{where}: field 'lm_bff' must be a mapping")
    _known_keys(section, LM_BFF_KEYS, "lm_bff.", where)
    for key in ("dir", "format", "columns", "label_column", "labels"):
        if key not in section:
            raise SptbenchError(f"{where}: missing field 'lm_bff.{key}'")
    if section["format"] not in ("tsv", "csv"):
        raise SptbenchError(f"{where}: field 'lm_bff.format' must be 'tsv' or 'csv'")
    _check_plain_name(section["dir"], "lm_bff.dir", where)
    for key in ("header", "dev"):
        if not isinstance(section.get(key, False), bool):
            raise SptbenchError(f"{where}: field 'lm_bff.{key}' must be true or false")
    _section_types(section, "lm_bff", where)
    if not section.get("header"):  # header-less files: columns are field positions
        positions = [*section["columns"].values(), section["label_column"]]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in positions):
            raise SptbenchError(f"{where}: 'lm_bff' without a header maps columns to field positions (integers >= 0)")
    return {**section, "labels": {str(k): v for k, v in section["labels"].items()}}


def _section_types(section: dict, label: str, where: str) -> None:
    """A source section's mappings and names have the types the readers use (columns/labels mappings, names)."""
    for key in ("columns", "labels"):
        if not isinstance(section.get(key), dict) or not section[key]:
            raise SptbenchError(f"{where}: field '{label}.{key}' must be a non-empty mapping")
    names = [*section["columns"].values(), section.get("label_column", "label"), *section["labels"].values()]
    if not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in names):
        raise SptbenchError(f"{where}: '{label}' columns, label_column and labels must be names")
    if not isinstance(section.get("note"), (str, type(None))):
        raise SptbenchError(f"{where}: field '{label}.note' must be text")


def _hub_section(hub: dict, where: str) -> None:
    """The hub source: a dataset path (and config name), train/test split names, and the column/label mappings."""
    if not isinstance(hub.get("path"), str) or not hub["path"] or not isinstance(hub.get("name"), (str, type(None))):
        raise SptbenchError(f"{where}: field 'hub.path' must be a dataset id (and 'hub.name' a config name or null)")
    _known_keys(hub, HUB_KEYS, "hub.", where)
    if not isinstance(hub.get("revision"), (str, type(None))) or hub.get("revision") == "":
        raise SptbenchError(f"{where}: field 'hub.revision' must be a branch, tag or commit of the dataset repo")
    splits = hub.get("splits")
    if not isinstance(splits, dict) or not all(isinstance(splits.get(k), str) for k in ("train", "test")):
        raise SptbenchError(f"{where}: field 'hub.splits' must map train and test to split names")
    _section_types(hub, "hub", where)


def _prompt_section(section: Any, spec: TaskSpec, where: str) -> dict | None:
    """The optional `prompt` mapping: `template` (one, named `default`) or `templates` (name -> text, the first is
    the default), and `label_words`, one per label in label order; every template is parsed here."""
    if section is None:
        return None
    if not isinstance(section, dict):
        raise SptbenchError(f"{where}: field 'prompt' must be a mapping")
    _known_keys(section, ("template", "templates", "label_words", "note"), "prompt.", where)
    if ("template" in section) == ("templates" in section):
        raise SptbenchError(f"{where}: 'prompt' needs exactly one of 'template' (a string) or 'templates' (a mapping)")
    templates = section["templates"] if "templates" in section else {DEFAULT_TEMPLATE: section["template"]}
    if not isinstance(templates, dict) or not templates:
        raise SptbenchError(f"{where}: field 'prompt.templates' must be a non-empty mapping of name -> template")
    for name, text in templates.items():
        if not isinstance(name, str) or not name:
            raise SptbenchError(f"{where}: template names must be strings, got {name!r}")
        parse_template(text, len(spec.text_columns), where, name)
    words = section.get("label_words")
    if (
        not isinstance(words, list)
        or len(words) != spec.num_labels
        or not all(isinstance(w, str) and w.strip() == w and w and " " not in w for w in words)
        or len(set(words)) != len(words)
    ):
        raise SptbenchError(
            f"{where}: field 'prompt.label_words' must list {spec.num_labels} distinct single words, one per label "
            f"in the order of 'labels' {list(spec.labels)} (quote Yes/No: YAML reads them as booleans)"
        )
    return {"templates": dict(templates), "label_words": tuple(words)}


def _check_spec(spec: TaskSpec, where: str) -> None:
    """Cross-field checks: metrics known, selection metric computable, every mapping covers our columns/labels."""
    unknown = [m for m in spec.metrics if m not in KNOWN_METRICS]
    if unknown:
        raise SptbenchError(f"{where}: unknown metrics {unknown}; known: {', '.join(KNOWN_METRICS)}")
    parts = SELECTION_METRICS.get(spec.selection_metric)
    if parts is None or not set(parts) <= set(spec.metrics):
        raise SptbenchError(
            f"{where}: selection_metric '{spec.selection_metric}' must be one of {', '.join(SELECTION_METRICS)} "
            f"and use only the task's metrics {list(spec.metrics)}"
        )
    if "f1" in spec.metrics and spec.num_labels != 2:
        raise SptbenchError(
            f"{where}: metric 'f1' is binary (positive class = label 1); this task has {spec.num_labels}"
        )
    if spec.max_length < 1:
        raise SptbenchError(f"{where}: field 'max_length' must be positive")
    _hub_section(spec.hub, where)
    for section in ("hub", "lm_bff"):
        mapping = getattr(spec, section)
        if mapping is not None:
            _check_mapping(spec, mapping, section, where)
    _known_keys(spec.mirror, MIRROR_KEYS, "mirror.", where)
    for split in ("train", "test"):
        _check_plain_name(spec.mirror.get(split), f"mirror.{split}", where)
    if not isinstance(spec.mirror.get("note"), (str, type(None))):
        raise SptbenchError(f"{where}: field 'mirror.note' must be text")


def _check_mapping(spec: TaskSpec, section: dict, label: str, where: str) -> None:
    """A source section must map every text column and only to our label names."""
    columns = section.get("columns") or {}
    missing = [c for c in spec.text_columns if c not in columns]
    if missing:
        raise SptbenchError(f"{where}: '{label}.columns' does not map text columns {missing}")
    bad = sorted({str(v) for v in (section.get("labels") or {}).values()} - set(spec.labels))
    if not section.get("labels") or bad:
        raise SptbenchError(f"{where}: '{label}.labels' must map source labels to {list(spec.labels)}; unknown: {bad}")


def _check_plain_name(value: Any, key: str, where: str) -> None:
    """File and folder names from a spec stay inside their root: no separators, no '..'."""
    if not isinstance(value, str) or not value or "/" in value or "\\" in value or value in (".", ".."):
        raise SptbenchError(f"{where}: field '{key}' must be a plain file or folder name, got {value!r}")


# ---------------------------------------------------------------- loading


def load_task(
    name: str,
    *,
    data_dir: str | Path | None = None,
    shots: int | None = None,
    seed: int = 13,
    split_source: str = "sample",
    train_size: int | None = None,
) -> TaskData:
    """Load a task's train/dev/test for one protocol and seed; deterministic for (task, protocol, seed, source)."""
    spec = load_spec(name)
    check_protocol(spec, shots, seed, split_source, train_size)
    root = _resolve_data_dir(data_dir)
    if split_source == "lm-bff" and root is None:
        raise SptbenchError(
            f"split_source 'lm-bff' reads the published splits from <data dir>/{LM_BFF_FOLDER}: "
            f"pass --data-dir or set {DATA_DIR_ENV}"
        )
    source = _read_mirror(spec, root) if root is not None else _read_hub(spec)
    notes = list(source.notes)
    location = source.location
    if split_source == "lm-bff":
        folder = root / LM_BFF_FOLDER / spec.lm_bff["dir"] / f"{LM_BFF_SHOTS}-{seed}"
        train, dev, split_notes = _lm_bff_split(spec, folder, source.pool, seed)
        notes += split_notes + _overlap_notes(spec, train + dev, source.test)
        location = f"{location} (train/dev: {folder})"
    else:
        train_idx, dev_idx = _sample_split(spec, source.pool, shots, seed, train_size)
        train, dev = [source.pool[i] for i in train_idx], [source.pool[i] for i in dev_idx]
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
    if shots != LM_BFF_SHOTS:
        raise SptbenchError(f"split_source 'lm-bff' needs shots={LM_BFF_SHOTS} (the published splits are 16-shot)")
    if seed not in LM_BFF_SEEDS:
        raise SptbenchError(
            f"the LM-BFF splits exist for seeds {', '.join(map(str, LM_BFF_SEEDS))} only, not seed {seed}"
        )


def _resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """The local mirror to use: the argument, else $SPTBENCH_DATA_DIR, else None (the hub)."""
    chosen = data_dir if data_dir is not None else (os.environ.get(DATA_DIR_ENV) or None)
    if chosen is None:
        return None
    root = Path(chosen).expanduser()
    if not root.is_dir():
        raise SptbenchError(f"data dir '{root}' does not exist or is not a folder")
    return root.resolve()


def _read_mirror(spec: TaskSpec, root: Path) -> _Source:
    """Read `<root>/<task>/{train,test}.jsonl` (the README's mirror layout)."""
    folder = root / spec.name
    paths = {split: folder / spec.mirror[split] for split in ("train", "test")}
    for path in paths.values():
        if not path.is_file():
            raise SptbenchError(
                f"missing file {path}: a data dir must hold <task>/train.jsonl and <task>/test.jsonl for each task"
            )
    note = spec.mirror.get("note")
    return _Source(
        pool=read_jsonl(paths["train"], spec),
        test=read_jsonl(paths["test"], spec),
        kind="mirror",
        location=str(folder),
        notes=[note] if note else [],
    )


def read_jsonl(path: Path, spec: TaskSpec) -> list[Row]:
    """Read mirror rows; plain `json` (not `datasets`) so that a bad line is reported by file and line."""
    rows = []
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
        rows.append(_make_row(spec, {c: raw.get(c) for c in spec.text_columns}, raw.get("label"), where))
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


def _make_row(spec: TaskSpec, texts: dict[str, Any], label_name: Any, where: str) -> Row:
    """Build one row (text columns + label id), checking texts are strings and the label is known."""
    for column, text in texts.items():
        if not isinstance(text, str):
            raise SptbenchError(f"{where}: column '{column}' is missing or not a string")
    if label_name not in spec.labels:
        raise SptbenchError(f"{where}: unknown label {label_name!r}; task '{spec.name}' has {list(spec.labels)}")
    return {**texts, "label": spec.labels.index(label_name)}


def _read_hub(spec: TaskSpec) -> _Source:
    """Read the pool and test set from the Hugging Face hub, mapping hub columns and labels to ours."""
    hub = spec.hub
    hub_id = hub["path"] + (f"/{hub['name']}" if hub.get("name") else "")
    revision = hub.get("revision")
    try:
        import datasets

        loaded = {
            role: datasets.load_dataset(hub["path"], hub.get("name"), split=hub["splits"][role], revision=revision)
            for role in ("train", "test")
        }
    except Exception as exc:  # network, auth, missing dataset: all mean "this source is unavailable"
        raise SptbenchError(
            f"hub source failed for task '{spec.name}' ({hub_id}): {describe(exc)}. "
            f"Pass --data-dir or set {DATA_DIR_ENV} to a local mirror."
        ) from exc
    note = hub.get("note")
    return _Source(
        pool=hub_rows(spec, loaded["train"], f"{hub_id}[{hub['splits']['train']}]"),
        test=hub_rows(spec, loaded["test"], f"{hub_id}[{hub['splits']['test']}]"),
        kind="hub",
        location=f"hf:{hub_id}" + (f"@{revision}" if revision else ""),
        notes=[note] if note else [],
    )


def hub_rows(spec: TaskSpec, dataset: Any, where: str) -> list[Row]:
    """Map a hub split (an iterable of dicts with `column_names`) to our rows via `spec.hub`."""
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
        rows.append(_make_row(spec, {c: raw[columns[c]] for c in spec.text_columns}, labels[value], f"{where} row {i}"))
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


def _lm_bff_split(spec: TaskSpec, folder: Path, pool: list[Row], seed: int) -> tuple[list[Row], list[Row], list[str]]:
    """Read a published LM-BFF split; where no dev file exists (MNLI), sample dev from the pool instead."""
    cfg = spec.lm_bff
    train = read_lm_bff(folder / f"train.{cfg['format']}", spec)
    notes = [cfg["note"]] if cfg.get("note") else []
    if cfg.get("dev", True):
        return train, read_lm_bff(folder / f"dev.{cfg['format']}", spec), notes
    dev = _dev_excluding(spec, pool, train, seed)
    notes.append(
        f"lm-bff: {spec.name} has no published dev split; dev = {LM_BFF_SHOTS} per class sampled from the "
        f"training pool (seed {seed}), excluding texts in the published train split"
    )
    return train, dev, notes


def _dev_excluding(spec: TaskSpec, pool: list[Row], train: list[Row], seed: int) -> list[Row]:
    """16 per class from the pool, seeded, skipping rows whose text is in the given train rows."""
    taken = {_text_key(spec, row) for row in train}
    candidates = [row for row in pool if _text_key(spec, row) not in taken]
    groups = _indices_by_class(candidates, spec.num_labels)
    _check_shots(spec, groups, LM_BFF_SHOTS, "pool (for the missing LM-BFF dev)", per_class=1)
    rng = random.Random(seed)
    return [candidates[i] for members in groups for i in rng.sample(members, LM_BFF_SHOTS)]


def read_lm_bff(path: Path, spec: TaskSpec) -> list[Row]:
    """Read one LM-BFF split file (tsv with header, or header-less `label,text` csv) into our rows."""
    if not path.is_file():
        raise SptbenchError(f"missing file {path}: expected the LM-BFF 16-shot splits under <data dir>/{LM_BFF_FOLDER}")
    cfg = spec.lm_bff
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
                rows.append(_make_row(spec, {c: record[positions[c]] for c in spec.text_columns}, label, where))
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
