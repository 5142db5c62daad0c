"""Result records: one YAML mapping per run, appended atomically to a schema-versioned table (see docs/records.md).

A table is a YAML stream (`---` per record) under `<results>/v1/<backbone>/<setting>.yaml`. Records are data only
(`yaml` safe loader and dumper), validated before they are written, never edited after, and migrated to the current
schema when read, so tables, checks and `show` only ever see schema `SCHEMA_VERSION`.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import math
import os
import re
import secrets
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from sptbench.core import safe_yaml
from sptbench.core.errors import SptbenchError
from sptbench.core.run_schema import KEY_FIELDS, LINEAR_HEAD, head_of, record_key  # noqa: F401 (declared with the run schema)

SCHEMA_VERSION = 1
TABLE_DIR = f"v{SCHEMA_VERSION}"

# Field types: "int", "str", "bool", "number", "map", "list", "metrics" (map of name -> number), "a|b|c" (one of),
# a trailing "?" allows null, a dict is a nested section. Unknown extra keys are allowed and preserved.
_SCHEMA: dict[str, Any] = {
    "schema_version": "int",
    "run_id": "str",
    "created": "str",
    "status": "ok|failed",
    "error": "str?",
    "method": {"name": "str", "config": "map"},
    "task": {"name": "str", "version": "int"},
    "protocol": {
        "shots": "int?",
        "train_size": "int?",
        "split_source": "sample|lm-bff|full",
        "seed": "int",
        "n_train": "int",
        "n_dev": "int",
        "n_test": "int",
    },
    "backbone": {
        "id": "str",
        "family": "str",
        "revision": "str?",
        "weights_sha256": "str?",
        "pooling": "cls|mean|last",
        "num_parameters": "int",
    },
    "data": {"source": "mirror|hub", "location": "str", "fingerprint": "str", "notes": "list"},
    "training": "map",
    "outcome": {"best_step": "int?", "steps_run": "int", "stopped_early": "bool"},
    "metrics": {"selection_metric": "str", "dev": "metrics", "test": "metrics"},
    "params": {
        "trainable": "int",
        "trainable_with_head": "int",
        "stored": "int",
        "stored_bytes": "int",
        "backbone": "int",
    },
    "throughput": {
        "train_samples_per_s": "number?",
        "train_tokens_per_s": "number?",
        "eval_samples_per_s": "number?",
        "peak_memory_mb": "number?",
        "device": "str",
        "dtype": "str",
    },
    "time": {"wall_s": "number", "train_s": "number", "eval_s": "number"},
    "extra": "map",
    "versions": {
        "python": "str",
        "torch": "str?",
        "transformers": "str?",
        "peft": "str?",
        "datasets": "str?",
        "sptbench": "str",
    },
    "git": {"commit": "str?", "dirty": "bool?"},
}
# The optional `head` section (records from before the prompt head lack it: they ran the linear head).
_HEAD_SCHEMA: dict[str, Any] = {"kind": "linear|prompt"}
_PROMPT_HEAD_SCHEMA: dict[str, Any] = {
    "loss": "label_words|vocab",
    "template_name": "str",
    "template": "str",
    "label_words": "list",
}
# Provenance fields added after records were written: checked where present, never required, not in the key.
_OPTIONAL_FIELDS: dict[tuple[str, str], str] = {
    ("task", "spec_path"): "str?",  # the task spec file the run read
    ("task", "spec_sha256"): "str?",  # sha256 of its bytes
    ("backbone", "tokenizer_sha256"): "str?",  # the tokenizer's vocabulary and settings (backbones.tokenizer_sha256)
    ("throughput", "hardware"): "str?",  # processor, torch's CPU kernels, threads (hardware.hardware_id)
}
# Sections a failed run may leave null, empty or incomplete: it never got far enough to fill them.
_RESULT_SECTIONS = ("outcome", "metrics", "params", "throughput", "time")
_PLAIN_TYPES = (dict, list, str, int, float, bool, type(None))
_SETTING_RE = re.compile(r"^(\d+shot|n\d+|full)$")
# A Hugging Face hub id: `name` or `org/name`; the hub forbids "--" and ".." in names, so "/" -> "--" is injective.
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


# ---------------------------------------------------------------------------------------------------- naming


def new_run_id() -> str:
    """A unique, sortable run id: UTC time to the second plus 6 random hex digits (e.g. 20261127T062501-ab12cd)."""
    return f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"


def now_iso() -> str:
    """The current UTC time as ISO-8601 (the `created` field)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def setting_name(shots: int | None, train_size: int | None) -> str:
    """The table name of a data regime: `16shot` (K per class), `n1000` (N training examples) or `full`."""
    if shots is not None and train_size is not None:
        raise SptbenchError("give either --shots or --train-size, not both")
    for flag, value in (("--shots", shots), ("--train-size", train_size)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise SptbenchError(f"{flag} must be a positive integer, got {value!r}")
    if shots is not None:
        return f"{shots}shot"
    return f"n{train_size}" if train_size is not None else "full"


def safe_backbone_name(backbone_id: str) -> str:
    """One safe path component for a backbone id: hub ids `org/name` -> `org--name`; local paths -> `<name>-<hash>`."""
    if not isinstance(backbone_id, str) or not backbone_id.strip():
        raise SptbenchError(f"backbone id must be a non-empty string, got {backbone_id!r}")
    if _HUB_ID_RE.match(backbone_id) and ".." not in backbone_id and "--" not in backbone_id:
        return backbone_id.replace("/", "--")
    # Anything else (a local path, odd characters): readable last component plus a hash of the full id.
    last = re.split(r"[/\\]+", backbone_id.rstrip("/\\"))[-1]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", last).lstrip(".-")[:60] or "backbone"
    return f"{base}-{hashlib.sha256(backbone_id.encode()).hexdigest()[:8]}"


def table_path(results_dir: str | Path, backbone_id: str, setting: str) -> Path:
    """Where the records of one backbone and data regime go: `<results_dir>/v1/<safe backbone>/<setting>.yaml`."""
    if not _SETTING_RE.match(setting):
        raise SptbenchError(f"bad setting '{setting}': expected <K>shot, n<N> or full")
    root = Path(results_dir)
    path = root / TABLE_DIR / safe_backbone_name(backbone_id) / f"{setting}.yaml"
    if not path.resolve().is_relative_to(root.resolve()):  # defence in depth: the name is one safe component
        raise SptbenchError(f"table path {path} escapes the results directory {root}")
    return path


def record_table_path(results_dir: str | Path, record: dict) -> Path:
    """The table a record belongs in, from its backbone id and protocol."""
    protocol = record["protocol"]
    return table_path(results_dir, record["backbone"]["id"], setting_name(protocol["shots"], protocol["train_size"]))


def example_record() -> dict:
    """A complete, valid schema-1 record: the schema by example (docs/records.md shows it; tests build on it)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": "20260101T000000-000000",
        "created": "2026-01-01T00:00:00+00:00",
        "status": "ok",
        "error": None,
        "method": {"name": "prompt_tuning", "config": {"num_tokens": 20, "init": "random"}},
        "task": {"name": "sst2", "version": 1},
        "protocol": {
            "shots": 16,
            "train_size": None,
            "split_source": "lm-bff",
            "seed": 13,
            "n_train": 32,
            "n_dev": 32,
            "n_test": 872,
        },
        "backbone": {
            "id": "roberta-large",
            "family": "roberta",
            "revision": None,
            "weights_sha256": None,
            "pooling": "cls",
            "num_parameters": 355_359_744,
        },
        "data": {"source": "mirror", "location": "data/sst2", "fingerprint": "sha256:0123abcd", "notes": []},
        "training": {"steps": 1000, "lr": 0.3, "batch_size": 8, "eval_every": 100, "max_length": 128},
        "outcome": {"best_step": 800, "steps_run": 1000, "stopped_early": False},
        "metrics": {
            "selection_metric": "accuracy",
            "dev": {"accuracy": 0.875, "score": 0.875},
            "test": {"accuracy": 0.8612},
        },
        "params": {
            "trainable": 20_480,
            "trainable_with_head": 1_071_106,
            "stored": 1_071_106,
            "stored_bytes": 4_284_424,
            "backbone": 355_359_744,
        },
        "throughput": {
            "train_samples_per_s": 12.5,
            "train_tokens_per_s": 1600.0,
            "eval_samples_per_s": 60.0,
            "peak_memory_mb": None,
            "device": "cpu",
            "hardware": "Intel(R) Xeon(R) Processor [GenuineIntel 6/167/1] (AVX512, 2 threads)",  # optional
            "dtype": "float32",
        },
        "time": {"wall_s": 95.0, "train_s": 80.0, "eval_s": 15.0},
        "extra": {},
        "versions": {
            "python": "3.11.7",
            "torch": "2.13.0",
            "transformers": "5.24.0",
            "peft": "0.21.0",
            "datasets": "3.6.0",
            "sptbench": "0.1.0",
        },
        "git": {"commit": None, "dirty": None},
    }


# ---------------------------------------------------------------------------------------------------- validation


def _type_problem(value: Any, spec: str) -> str | None:
    """Why `value` does not fit the field type `spec`, or None when it does."""
    if value is None:
        return None if spec.endswith("?") else "is null"
    spec = spec.rstrip("?")
    is_int = isinstance(value, int) and not isinstance(value, bool)
    checks: dict[str, bool] = {
        "int": is_int,
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "number": is_int or (isinstance(value, float) and math.isfinite(value)),
        "map": isinstance(value, dict),
        "list": isinstance(value, list),
    }
    if spec == "metrics":
        if not isinstance(value, dict):
            return f"must be a mapping of metric name -> number, got {type(value).__name__}"
        bad = [k for k, v in value.items() if not isinstance(k, str) or _type_problem(v, "number")]
        return f"has non-numeric or non-finite metrics {bad}" if bad else None
    if "|" in spec:
        choices = spec.split("|")
        return None if value in choices else f"must be one of {choices}, got {value!r}"
    return None if checks[spec] else f"must be {spec}, got {type(value).__name__} {value!r}"


def _check_section(rec: dict, schema: dict[str, Any], prefix: str, partial: tuple[str, ...] = ()) -> list[str]:
    """Problems of one (possibly nested) section; sections named in `partial` may be null, empty or incomplete."""
    problems = []
    for name, spec in schema.items():
        field = f"{prefix}{name}"
        value = rec.get(name)
        lenient = name in partial or "*" in partial
        if name not in rec and not lenient:
            problems.append(f"missing field '{field}'")
        elif value is None and lenient:
            continue
        elif isinstance(spec, dict) and not isinstance(value, dict):
            problems.append(f"field '{field}' must be a mapping, got {type(value).__name__}")
        elif isinstance(spec, dict):
            problems += _check_section(value, spec, f"{field}.", ("*",) if lenient else ())
        elif (why := _type_problem(value, spec)) is not None:
            problems.append(f"field '{field}' {why}")
    return problems


def _non_plain(value: Any, field: str) -> Iterator[str]:
    """Fields holding values that are not plain YAML data (numpy scalars, tuples, objects, non-string keys)."""
    if type(value) not in _PLAIN_TYPES:
        yield f"field '{field}' holds {type(value).__module__}.{type(value).__name__}, not plain data"
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                yield f"field '{field}' has a non-string key {key!r}"
            yield from _non_plain(item, f"{field}.{key}" if field else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _non_plain(item, f"{field}[{i}]")


def _semantic_problems(rec: dict) -> list[str]:
    """Cross-field rules the types alone cannot say."""
    problems = []
    if rec.get("schema_version") != SCHEMA_VERSION:
        problems.append(f"schema_version must be {SCHEMA_VERSION}, got {rec.get('schema_version')!r}")
    status, error = rec.get("status"), rec.get("error")
    if status == "ok" and error is not None:
        problems.append("an ok run must have error: null")
    if status == "failed" and not error:
        problems.append("a failed run must say why in 'error'")
    protocol = rec.get("protocol")
    if isinstance(protocol, dict) and protocol.get("shots") is not None and protocol.get("train_size") is not None:
        problems.append("protocol.shots and protocol.train_size are exclusive; one must be null")
    for name in ("shots", "train_size"):
        value = protocol.get(name) if isinstance(protocol, dict) else None
        if isinstance(value, int) and value <= 0:
            problems.append(f"protocol.{name} must be positive, got {value}")
    metrics = rec.get("metrics")
    selection = rec.get("selection")
    untested = isinstance(selection, dict) and selection.get("tested") is False
    if (status == "ok" and not untested and isinstance(metrics, dict) and isinstance(metrics.get("test"), dict)
            and not metrics["test"]):
        problems.append("an ok run must have test metrics (or selection.tested: false)")
    if selection is not None and (not isinstance(selection, dict) or not isinstance(selection.get("tested"), bool)):
        problems.append("field 'selection' must be a mapping with a boolean 'tested'")
    return problems


def _head_problems(rec: dict) -> list[str]:
    """The optional `head` section: `{kind: linear}`, or `kind: prompt` with its loss, template and label words."""
    if "head" not in rec:
        return []
    head = rec["head"]
    if not isinstance(head, dict):
        return [f"field 'head' must be a mapping, got {type(head).__name__}"]
    problems = _check_section(head, _HEAD_SCHEMA, "head.")
    if head.get("kind") == "prompt":
        problems += _check_section(head, _PROMPT_HEAD_SCHEMA, "head.")
        words = head.get("label_words")
        if isinstance(words, list) and not all(isinstance(w, str) for w in words):
            problems.append("field 'head.label_words' must be a list of strings")
    return problems


def _optional_problems(rec: dict) -> list[str]:
    """Type problems of the optional provenance fields that are present."""
    problems = []
    for (section, name), spec in _OPTIONAL_FIELDS.items():
        part = rec.get(section)
        if isinstance(part, dict) and name in part and (why := _type_problem(part[name], spec)) is not None:
            problems.append(f"field '{section}.{name}' {why}")
    return problems


def validate_record(rec: Any) -> list[str]:
    """Every problem of one (current-schema) record: missing fields, wrong types, inconsistent fields; [] if valid."""
    if not isinstance(rec, dict):
        return [f"a record must be a mapping, got {type(rec).__name__}"]
    partial = _RESULT_SECTIONS if rec.get("status") == "failed" else ()
    problems = _check_section(rec, _SCHEMA, "", partial)
    problems += _optional_problems(rec)
    return problems + _head_problems(rec) + _semantic_problems(rec) + list(_non_plain(rec, ""))


def require_valid(records: Iterable[dict]) -> list[dict]:
    """The records as a list, or an error naming the first invalid one (tables and checks trust their input)."""
    records = list(records)
    bad = [(r, p) for r in records if (p := validate_record(r))]
    if bad:
        rec, problems = bad[0]
        run_id = rec.get("run_id", "?") if isinstance(rec, dict) else "?"
        raise SptbenchError(f"{len(bad)} invalid record(s), e.g. run {run_id}: {problems[0]}; see `sptbench validate`")
    return records


# ---------------------------------------------------------------------------------------------------- migration


def _migrate_0_to_1(rec: dict) -> dict:
    """Schema 0 (flat `method`/`method_config`, `params_*` and `accuracy`/`dev_accuracy` keys) -> schema 1."""
    out = {k: v for k, v in rec.items() if k != "method_config" and not k.startswith("params_")}
    out.pop("accuracy", None)
    out.pop("dev_accuracy", None)
    out["schema_version"] = 1
    out["method"] = {"name": rec.get("method"), "config": rec.get("method_config", {})}
    fields = ("trainable", "trainable_with_head", "stored", "stored_bytes", "backbone")
    has_results = rec.get("status") == "ok" or "accuracy" in rec
    out["params"] = {f: rec.get(f"params_{f}") for f in fields} if has_results else None
    if has_results:
        dev = {"accuracy": rec.get("dev_accuracy"), "score": rec.get("dev_accuracy")}
        out["metrics"] = {"selection_metric": "accuracy", "dev": dev, "test": {"accuracy": rec.get("accuracy")}}
    else:
        out["metrics"] = None
    return {k: out[k] for k in _ordered_keys(out)}


def _ordered_keys(rec: dict) -> list[str]:
    """Schema order first, then any extra keys: migrated records read like freshly written ones."""
    return [k for k in _SCHEMA if k in rec] + [k for k in rec if k not in _SCHEMA]


# MIGRATIONS[n] turns a schema-n record into a schema-(n+1) record. Add one entry per schema bump.
MIGRATIONS: dict[int, Callable[[dict], dict]] = {0: _migrate_0_to_1}


# Training options added after records were written (2026-12-02, the conformance work): a record without one ran
# with the value below, which is still the default. Filled in when read, so old and new runs of the same
# configuration share a record key.
LEGACY_TRAINING = {
    "lr_schedule": "linear",
    "max_grad_norm": 1.0,
    "head_dropout": 0.1,
    "weight_decay_scope": "matrices",
    "sampler": "python",
}


_SPT_ADDED = {"generator": "pooled", "gate": "deterministic", "gate_temperature_start": 1.0,
              "gate_temperature_end": 0.1, "candidates": "all"}
# Method config fields added after records were written (2026-12-02), with the value older runs had: filled in when
# read, as LEGACY_TRAINING. Data about the schema's history, like MIGRATIONS (tests check it against the configs).
LEGACY_METHOD_CONFIG = {"lpt": {"generator": "pooled"}, "spt": _SPT_ADDED, "spt_darts": _SPT_ADDED}


def migrate(rec: dict) -> dict:
    """A copy of `rec` migrated to SCHEMA_VERSION (a record without `schema_version` is schema 0), with training
    options and method config fields it predates filled in (`LEGACY_TRAINING`, `LEGACY_METHOD_CONFIG`)."""
    version = rec.get("schema_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise SptbenchError(f"bad schema_version {version!r}")
    if version > SCHEMA_VERSION:
        raise SptbenchError(f"schema_version {version} is newer than this sptbench reads ({SCHEMA_VERSION}); upgrade")
    out = copy.deepcopy(rec)
    while version < SCHEMA_VERSION:
        out = MIGRATIONS[version](out)
        version += 1
    if isinstance(out.get("training"), dict) and "max_steps" in out["training"]:  # a schema-1 training section
        for key, value in LEGACY_TRAINING.items():
            out["training"].setdefault(key, value)
    method = out.get("method")
    name = method.get("name") if isinstance(method, dict) else None
    added = LEGACY_METHOD_CONFIG.get(name) if isinstance(name, str) else None
    if added and isinstance(method.get("config"), dict):
        for key, value in added.items():
            method["config"].setdefault(key, value)
    return out


# ---------------------------------------------------------------------------------------------------- reading


def _load_documents(path: Path, text: str) -> list[tuple[int, Any]]:
    """(first line, data) of every non-empty document of a YAML stream; malformed -> SptbenchError file:line."""
    return list(safe_yaml.iter_documents(text, str(path)))


def _read_text(path: Path) -> str:
    """A table's text (bounded: see `safe_yaml.MAX_TABLE_BYTES`); a missing or unreadable file is a user error."""
    return safe_yaml.read_text(path, "results table", safe_yaml.MAX_TABLE_BYTES)


def _migrated(path: Path, docs: list[tuple[int, Any]]) -> list[dict]:
    """The documents of one table as current-schema records; non-mappings and bad versions name file:line."""
    records = []
    for line, data in docs:
        if not isinstance(data, dict):
            raise SptbenchError(f"{path}:{line}: a record must be a mapping, got {type(data).__name__}")
        try:
            records.append(migrate(data))
        except SptbenchError as err:
            raise SptbenchError(f"{path}:{line}: {err}") from None
    return records


def read_table(path: str | Path) -> list[dict]:
    """All records of one table, migrated to the current schema, in file order (empty file -> [])."""
    path = Path(path)
    return _migrated(path, _load_documents(path, _read_text(path)))


_OTHER_KINDS = re.compile(rb"^(bench_version|script):", re.M)  # `sptbench bench` records, scripts/stock_loop.py output
PENDING_DIR = "pending"  # under a results root: saved states of untested grid points (sptbench/reports/selection.py)


def is_run_table(path: Path) -> bool:
    """Whether a YAML file found in a folder holds run records: files whose head names another kind of document
    (`sptbench bench` records carry `bench_version`, the stock loop's output `script`) are left to their readers."""
    with open(path, "rb") as f:
        head = f.read(4096)
    return _OTHER_KINDS.search(head) is None


def holds_records(path: Path) -> bool:
    """An existing YAML file whose head holds a run record (a `run_id:` key): a results table, whatever it is called."""
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except OSError:
        return False
    return re.search(rb"^run_id:", head, re.M) is not None


def table_files(paths: Iterable[str | Path]) -> list[Path]:
    """The table files named by `paths`: files as given, directories searched recursively for *.yaml (sorted),
    leaving out other kinds of YAML kept beside the tables (`is_run_table`) and the saved states of untested grid
    points (`pending/`: their record.yaml repeats a record the table holds)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*.yaml")
                            if f.is_file() and PENDING_DIR not in f.relative_to(p).parts[:-1] and is_run_table(f))
        elif p.is_file():
            files.append(p)
        else:
            raise SptbenchError(f"{p}: no such file or directory")
    return files


def read_records(paths: Iterable[str | Path]) -> list[dict]:
    """The records of every table under `paths` (files or directories), in sorted file order."""
    return [rec for f in table_files(paths) for rec in read_table(f)]


def validate_paths(paths: Iterable[str | Path]) -> list[str]:
    """Every problem in the tables under `paths`, each as `file:line: problem` (line where the record starts)."""
    problems: list[str] = []
    seen: dict[str, str] = {}
    for f in table_files(paths):
        try:
            docs = _load_documents(f, _read_text(f))
        except SptbenchError as err:
            problems.append(str(err))
            continue
        for line, data in docs:
            where = f"{f}:{line}"
            try:
                (rec,) = _migrated(f, [(line, data)])
            except SptbenchError as err:
                problems.append(str(err))
                continue
            problems += [f"{where}: {p}" for p in validate_record(rec)]
            run_id = rec.get("run_id")
            if isinstance(run_id, str) and run_id in seen:
                problems.append(f"{where}: duplicate run_id '{run_id}' (first at {seen[run_id]})")
            elif isinstance(run_id, str):
                seen[run_id] = where
    return problems


def find_record(paths: Iterable[str | Path], run_id: str) -> dict:
    """The record with this run id (or a unique prefix of one) under `paths`."""
    records = read_records(paths)
    exact = [r for r in records if r.get("run_id") == run_id]
    matches = exact or [r for r in records if str(r.get("run_id", "")).startswith(run_id)]
    if not matches:
        raise SptbenchError(f"no record with run id '{run_id}' ({len(records)} records searched)")
    if len({r.get("run_id") for r in matches}) > 1:
        ids = ", ".join(sorted(str(r.get("run_id")) for r in matches)[:5])
        raise SptbenchError(f"run id '{run_id}' is ambiguous: {ids}")
    return matches[-1]


# ---------------------------------------------------------------------------------------------------- keys


def canonical_json(value: Any) -> str:
    """A stable text form of a config (sorted keys, no whitespace) for keys and hashes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def without(key: tuple, *fields: str) -> tuple:
    """A record key with some KEY_FIELDS dropped (e.g. the seed, to group the seeds of one configuration)."""
    drop = {KEY_FIELDS.index(f) for f in fields}
    return tuple(v for i, v in enumerate(key) if i not in drop)


def seed_group(key: tuple) -> tuple:
    """The configuration a run's seed belongs to: its key without the seed and the data fingerprint.

    The fingerprint hashes the seed's own train/dev split, so it differs from seed to seed by design.
    """
    return without(key, "seed", "data_fingerprint")


def key_label(key: tuple) -> str:
    """A short human label of a record key: method/task@version setting seed backbone (+ `prompt head`)."""
    k = dict(zip(KEY_FIELDS, key, strict=True))
    setting = setting_name(k["shots"], k["train_size"])
    head = json.loads(k["head"]).get("kind", "linear")
    label = f"{k['method']}/{k['task']}@v{k['task_version']} {setting} seed={k['seed']} {k['backbone']}"
    return label if head == "linear" else f"{label} {head} head"


def key_hash(key: tuple) -> str:
    """Six hex digits that tell apart keys with the same label (they differ in a config or fingerprint)."""
    return hashlib.sha256(canonical_json(list(key)).encode()).hexdigest()[:6]


def latest_per_key(records: list[dict]) -> tuple[list[dict], list[str]]:
    """One record per key, the latest by `created` (later in input order on a tie), and the run ids replaced."""
    latest: dict[tuple, tuple[str, int, dict]] = {}
    replaced = []
    for i, rec in enumerate(records):
        key = record_key(rec)
        candidate = (str(rec.get("created", "")), i, rec)
        if key in latest:
            older, newer = sorted([latest[key], candidate], key=lambda c: c[:2])
            replaced.append(older[2]["run_id"])
            candidate = newer
        latest[key] = candidate
    kept = [c[2] for c in sorted(latest.values(), key=lambda c: c[1])]
    return kept, replaced


# ---------------------------------------------------------------------------------------------------- writing


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock on a table, held on a sibling `.NAME.lock` file (the table is replaced)."""
    lock_path = path.with_name(f".{path.name}.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_only(path: Path) -> bool:
    """Write-protected: not writable for us, or no write bit at all (a `chmod a-w` that root would override)."""
    return not os.access(path, os.W_OK) or not path.stat().st_mode & 0o222


def check_writable_dir(folder: str | Path) -> None:
    """`folder` is, or can be created as, a folder we may write in: its nearest existing ancestor is a writable
    folder. Checked before a run, so that its record has somewhere to go."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise SptbenchError(f"{existing} is not a folder (on the way to {folder})")
    if _read_only(existing) or not os.access(existing, os.X_OK):
        raise SptbenchError(f"{existing} is read-only: cannot write {folder}")


def check_appendable(path: str | Path) -> None:
    """Before a run: a record can be appended to the table at `path` (its folder is writable; an existing table is
    a readable, valid, writable table). The same checks `append_record` makes, made before any training."""
    path = Path(path)
    check_writable_dir(path.parent)
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise SptbenchError(f"{path}: the results table is not a file")
        if _read_only(path):
            raise SptbenchError(f"{path}: the results table is read-only (chmod u+w to allow appends)")
        _migrated(path, _load_documents(path, _read_text(path)))


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8) atomically (`write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` atomically: temp file in the same directory, fsync, rename, fsync the directory.
    The file keeps its mode; a write-protected file is an error, not replaced; OS errors are one-line errors."""
    path = Path(path)
    try:
        if path.exists() and _read_only(path):
            raise SptbenchError(f"{path} is read-only: not replaced")
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise SptbenchError(f"cannot write {path}: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise SptbenchError(f"cannot write {path}: {err.strerror or err}") from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class _Dumper(yaml.SafeDumper):
    """The safe dumper, writing a value that occurs twice twice (readers refuse YAML aliases)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_record(record: dict) -> str:
    """One record as a YAML document, starting with `---`, keys in record order, no aliases."""
    return yaml.dump(record, Dumper=_Dumper, sort_keys=False, explicit_start=True, allow_unicode=True, width=120)


def append_record(path: str | Path, record: dict) -> None:
    """Validate `record` and append it to the table at `path`, atomically and safely under concurrent appends."""
    problems = validate_record(record)
    if problems:
        raise SptbenchError(f"refusing to write an invalid record: {'; '.join(problems)}")
    document = dump_record(record)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SptbenchError(f"cannot create the folder {path.parent}: {err.strerror or err}") from None
    with _locked(path):
        old = _read_text(path) if path.exists() else ""
        existing = _migrated(path, _load_documents(path, old))  # a malformed table raises; nothing is written
        if any(r.get("run_id") == record["run_id"] for r in existing):
            raise SptbenchError(f"{path}: run id '{record['run_id']}' is already in this table")
        sep = "" if not old or old.endswith("\n") else "\n"
        write_text_atomic(path, old + sep + document)
