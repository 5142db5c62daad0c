"""Task specs (`tasks/<task>.yaml`): find one by name, parse and check it. A spec is data, not code
(lm-evaluation-harness style; docs/tasks.md documents every key).

Specs are found by name in the user folders of $SPTBENCH_TASKS_PATH (os.pathsep-separated; `--tasks-dir DIR` prepends
to it), in order, then in the packaged `tasks/`: the first folder holding `<name>.yaml` wins.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import importlib.resources
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sptbench.core import safe_yaml
from sptbench.core.argtypes import nonempty
from sptbench.core.errors import SptbenchError, unknown_choice
from sptbench.core.paths import check_name, inside
from sptbench.data.templates import DEFAULT_TEMPLATE, parse_template
from sptbench.records.schema import SELECTION_METRICS  # selection metric -> the metrics it averages

TASKS_PATH_ENV = "SPTBENCH_TASKS_PATH"
MAX_TEXT_COLUMNS = 2  # a text or a text pair: the tokenizer takes (text, text_pair), a third would be text_target
# The keys a spec may have (docs/tasks.md documents each); anything else is a typo and an error.
SPEC_KEYS = ("name", "version", "text_columns", "labels", "metrics", "selection_metric", "max_length", "hub", "mirror",
             "data", "lm_bff", "prompt")
HUB_KEYS = ("path", "name", "revision", "splits", "columns", "label_column", "labels", "note")
MIRROR_KEYS = ("train", "test", "note")
LM_BFF_KEYS = ("dir", "format", "header", "dev", "shots", "seeds", "columns", "label_column", "labels", "note")
LM_BFF_SHOTS = 16  # the published LM-BFF splits: K = 16 per class, five seeds (a spec's lm_bff may name its own)
LM_BFF_SEEDS = (13, 21, 42, 87, 100)
KNOWN_METRICS = ("accuracy", "f1")


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
    hub: dict | None  # None: a local-only task (its data from its own folder or a data dir)
    mirror: dict
    lm_bff: dict | None = None
    prompt: dict | None = None  # {templates: {name: text}, label_words: (word per label)}; see docs/heads.md
    path: str | None = None  # the spec file it was read from (recorded as task.spec_path)
    sha256: str | None = None  # of that file's bytes (recorded as task.spec_sha256)
    data: str | None = None  # the task's own data folder, as the spec names it (relative to the spec file)

    @property
    def data_folder(self) -> Path | None:
        """The task's own data folder (absolute; checked to stay inside the spec's folder), or None."""
        if self.data is None or self.path is None:
            return None
        return inside(Path(self.path).parent, self.data, what=f"{self.path}: field 'data'")

    @property
    def num_labels(self) -> int:
        """How many classes the task has."""
        return len(self.labels)

    def __hash__(self) -> int:
        """Hash by identity of the spec file (the dict fields are unhashable); equality still compares all fields."""
        return hash((self.name, self.version))


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
    search path that holds `<name>.yaml` wins; the packaged specs come last. Listed again only when a folder
    changes (its mtime: a file added, removed or renamed), not on every look-up."""
    folders = [*((f, True) for f in task_search_path()), (_specs_root(), False)]
    try:
        version = tuple((str(f), f.stat().st_mtime_ns) for f, _ in folders)
    except (AttributeError, OSError):  # a Traversable without stat: list it now
        version = None
    if version is None or not all(_settled(mtime) for _, mtime in version):
        return dict(_list_specs.__wrapped__(tuple(folders), None))
    return dict(_list_specs(tuple(folders), version))


def _settled(mtime_ns: int) -> bool:
    """Whether a modification time is old enough to identify a version: file systems stamp times at a coarse
    clock tick, so a change within the same tick as the last one could keep the time (git's "racy" files)."""
    return time.time_ns() - mtime_ns > 2_000_000_000


@functools.lru_cache(maxsize=32)
def _list_specs(folders: tuple, version: tuple | None) -> dict[str, tuple[Any, bool]]:
    found: dict[str, tuple[Any, bool]] = {}
    for folder, user in folders:
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
    """Read and check `<name>.yaml` from the search path; unknown names and malformed files raise SptbenchError. The
    name becomes a folder under the data dir, so only a plain name (core/paths.check_name: no '..', no separator)."""
    check_name(name, "task")
    files = spec_files()
    if name not in files:
        raise unknown_choice("task", name, files)
    entry = files[name][0]
    try:  # parsed once per file version: a sweep checks every grid point against its task's spec
        stat = entry.stat()
        version = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    except (AttributeError, OSError):  # a packaged Traversable without stat, or a file gone: read it now
        version = None
    if version is None or not _settled(version[0]):
        return _parse_spec.__wrapped__(name, entry, None)
    return _parse_spec(name, entry, version)


@functools.lru_cache(maxsize=256)
def _parse_spec(name: str, entry: Any, version: tuple | None) -> TaskSpec:
    """`load_spec` for one version of one file (TaskSpec is frozen: sharing it is safe)."""
    where = str(entry)
    text = safe_yaml.read_text(entry, "task spec")
    raw = safe_yaml.load_one(text, where)
    spec = _spec_from_raw(raw, name, where)
    spec = dataclasses.replace(spec, path=where, sha256=hashlib.sha256(text.encode("utf-8")).hexdigest())
    if spec.data is not None:
        _ = spec.data_folder  # a folder that leaves the spec's folder (by '..' or a symlink) is refused here
    return spec


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
        "--tasks-dir", dest="tasks_dir", action="append", metavar="DIR", type=nonempty,  # "" is not the cwd
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
    labels = _str_tuple(raw, "labels", where)
    if len(labels) < 2:  # one class: every prediction right, an accuracy of 1.0 that says nothing
        raise SptbenchError(f"{where}: field 'labels' must list at least 2 classes, got {list(labels)}")
    if "label" in text_columns:  # rows hold the texts and their class under "label": one name cannot be both
        raise SptbenchError(f"{where}: field 'text_columns' must not name 'label' (the rows' class column); "
                            "map the source column to another name under 'columns'")
    spec = TaskSpec(
        name=name,
        version=version,
        text_columns=text_columns,
        labels=labels,
        metrics=_str_tuple(raw, "metrics", where),
        selection_metric=_field(raw, "selection_metric", str, where),
        max_length=_field(raw, "max_length", int, where),
        hub=_field(raw, "hub", dict, where) if raw.get("hub") is not None else None,
        mirror=_field(raw, "mirror", dict, where),
        lm_bff=_lm_bff_section(raw.get("lm_bff"), where),
        data=_data_section(raw.get("data"), where),
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
    shots, seeds = section.get("shots", LM_BFF_SHOTS), section.get("seeds", list(LM_BFF_SEEDS))
    if not _positive_int(shots):
        raise SptbenchError(f"{where}: field 'lm_bff.shots' must be an integer >= 1 (K per class), got {shots!r}")
    if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
            or not all(_positive_int(x) or x == 0 for x in seeds)):
        raise SptbenchError(f"{where}: field 'lm_bff.seeds' must be a non-empty list of distinct integers >= 0")
    _section_types(section, "lm_bff", where)
    if not section.get("header"):  # header-less files: columns are field positions
        positions = [*section["columns"].values(), section["label_column"]]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in positions):
            raise SptbenchError(f"{where}: 'lm_bff' without a header maps columns to field positions (integers >= 0)")
    labels = {str(k): v for k, v in section["labels"].items()}
    return {**section, "shots": shots, "seeds": tuple(seeds), "labels": labels}


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _data_section(value: Any, where: str) -> str | None:
    """The optional `data`: the task's own data folder, a relative path below the spec's folder (no '..')."""
    if value is None:
        return None
    parts = str(value).replace("\\", "/").split("/") if isinstance(value, str) else []
    if not parts or Path(value).is_absolute() or any(p in ("", ".", "..") for p in parts):
        raise SptbenchError(f"{where}: field 'data' must be a folder relative to the spec file, inside its folder "
                            f"(no '..', not absolute), got {value!r}")
    return value


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
    if isinstance(spec.max_length, bool) or spec.max_length < 1:  # `true` is no length
        raise SptbenchError(f"{where}: field 'max_length' must be a positive integer, got {spec.max_length!r}")
    if spec.hub is not None:
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
