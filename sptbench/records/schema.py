"""The record schema, declared once (docs/records.md): every section and field of a run record with its type,
whether it may be null or absent, whether it feeds the record key, and an example value.

`validate_record` and `example_record` are derived from the declaration `RECORD`. Unknown extra keys (the runner's
`stages`, `outcome.history`, more `versions`) are allowed and kept. The key itself is computed by
`sptbench.core.run_schema.record_key`; `key=True` here marks the fields it reads.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sptbench.core.errors import SptbenchError
from sptbench.core.paths import RUN_ID

SCHEMA_VERSION = 1
# selection metric -> the metrics its `score` averages (task specs name one; `validate` checks records against it)
SELECTION_METRICS: dict[str, tuple[str, ...]] = {"accuracy": ("accuracy",), "f1": ("f1",), "acc_f1": ("accuracy", "f1")}
TABLE_DIR = f"v{SCHEMA_VERSION}"

_ABSENT = object()  # a field without an example value (left out of `example_record`)


@dataclass(frozen=True)
class Field:
    """One field of a record, or a section (`fields`) of them.

    type: int | str | bool | number (an int or a finite float) | map | list | metrics (name -> number) | choice
    (one of `choices`) | section. `nullable`: null is allowed. `required=False`: may be absent (provenance added
    after records were written; checked where present). `partial_if_failed`: a failed run may leave the section
    null, empty or incomplete. `when=(field, value)`: required only where the sibling `field` has `value`. `items`:
    the type of a list's items. `key`: the record key reads it.
    """

    name: str
    type: str
    example: Any = _ABSENT
    nullable: bool = False
    required: bool = True
    key: bool = False
    choices: tuple[str, ...] = ()
    items: str | None = None
    when: tuple[str, Any] | None = None
    partial_if_failed: bool = False
    fields: tuple[Field, ...] = ()


def _section(name: str, *fields: Field, **kw: Any) -> Field:
    return Field(name, "section", fields=fields, **kw)


def _choice(name: str, choices: tuple[str, ...], example: Any = _ABSENT, **kw: Any) -> Field:
    return Field(name, "choice", example, choices=choices, **kw)


_STR_NULL = {"type": "str", "nullable": True}
_NUM_NULL = {"type": "number", "nullable": True}

# The record, in the order the runner writes it.
RECORD: tuple[Field, ...] = (
    Field("schema_version", "int", SCHEMA_VERSION),
    Field("run_id", "str", "20260101T000000-000000"),
    Field("created", "str", "2026-01-01T00:00:00+00:00"),
    _choice("status", ("ok", "failed"), "ok"),
    Field("error", "str", None, nullable=True),
    _section(
        "method",
        Field("name", "str", "prompt_tuning", key=True),
        Field("config", "map", {"num_tokens": 20, "init": "random"}, key=True),
    ),
    _section(
        "task",
        Field("name", "str", "sst2", key=True),
        Field("version", "int", 1, key=True),
        Field("spec_path", **_STR_NULL, required=False),  # the task spec file the run read
        Field("spec_sha256", **_STR_NULL, required=False),  # sha256 of its bytes
    ),
    _section(
        "protocol",
        Field("shots", "int", 16, nullable=True, key=True),
        Field("train_size", "int", None, nullable=True, key=True),
        _choice("split_source", ("sample", "lm-bff", "full"), "lm-bff", key=True),
        Field("seed", "int", 13, key=True),
        Field("n_train", "int", 32),
        Field("n_dev", "int", 32),
        Field("n_test", "int", 872),
    ),
    _section(
        "backbone",
        Field("id", "str", "roberta-large", key=True),
        Field("family", "str", "roberta"),
        Field("revision", **_STR_NULL, example=None),
        # the revision the run asked for (`--revision`, sweep `revision`); absent or null: the hub's default
        Field("requested_revision", **_STR_NULL, required=False),
        Field("weights_sha256", **_STR_NULL, example=None),
        _choice("pooling", ("cls", "mean", "last"), "cls", key=True),
        Field("num_parameters", "int", 355_359_744),
        # the tokenizer's vocabulary and settings (backbones.tokenizer_sha256)
        Field("tokenizer_sha256", **_STR_NULL, required=False),
    ),
    # records from before the prompt head lack it: they ran the linear head (run_schema.head_of)
    _section(
        "head",
        _choice("kind", ("linear", "prompt")),
        _choice("loss", ("label_words", "vocab"), when=("kind", "prompt")),
        Field("template_name", "str", when=("kind", "prompt")),
        Field("template", "str", when=("kind", "prompt")),
        Field("label_words", "list", items="str", when=("kind", "prompt")),
        required=False,
        key=True,
    ),
    _section(
        "data",
        _choice("source", ("mirror", "hub"), "mirror"),
        Field("location", "str", "data/sst2"),
        Field("fingerprint", "str", "sha256:0123abcd", key=True),
        Field("notes", "list", []),
    ),
    Field("training", "map", {"steps": 1000, "lr": 0.3, "batch_size": 8, "eval_every": 100, "max_length": 128},
          key=True),
    _section(
        "outcome",
        Field("best_step", "int", 800, nullable=True),
        Field("steps_run", "int", 1000),
        Field("stopped_early", "bool", False),
        partial_if_failed=True,
    ),
    _section(
        "metrics",
        Field("selection_metric", "str", "accuracy"),
        Field("dev", "metrics", {"accuracy": 0.875, "score": 0.875}),
        Field("test", "metrics", {"accuracy": 0.8612}),
        partial_if_failed=True,
    ),
    _section(
        "params",
        Field("trainable", "int", 20_480),
        Field("trainable_with_head", "int", 1_071_106),
        Field("stored", "int", 1_071_106),
        Field("stored_bytes", "int", 4_284_424),
        Field("backbone", "int", 355_359_744),
        partial_if_failed=True,
    ),
    _section(
        "throughput",
        Field("train_samples_per_s", **_NUM_NULL, example=12.5),
        Field("train_tokens_per_s", **_NUM_NULL, example=1600.0),
        Field("eval_samples_per_s", **_NUM_NULL, example=60.0),
        Field("peak_memory_mb", **_NUM_NULL, example=None),
        Field("device", "str", "cpu"),
        # processor, torch's CPU kernels, threads (hardware.hardware_id); records before 2026-12-01 lack it
        Field("hardware", **_STR_NULL, required=False,
              example="Intel(R) Xeon(R) Processor [GenuineIntel 6/167/1] (AVX512, 2 threads)"),
        Field("dtype", "str", "float32"),
        partial_if_failed=True,
    ),
    _section(
        "time",
        Field("wall_s", "number", 95.0),
        Field("train_s", "number", 80.0),
        Field("eval_s", "number", 15.0),
        partial_if_failed=True,
    ),
    Field("extra", "map", {}),
    _section(
        "versions",
        Field("python", "str", "3.11.7"),
        Field("torch", **_STR_NULL, example="2.13.0"),
        Field("transformers", **_STR_NULL, example="5.24.0"),
        Field("peft", **_STR_NULL, example="0.21.0"),
        Field("datasets", **_STR_NULL, example="3.6.0"),
        Field("sptbench", "str", "0.1.0"),
    ),
    _section(
        "git",
        Field("commit", **_STR_NULL, example=None),
        Field("dirty", "bool", None, nullable=True),
    ),
)

# Derived views of RECORD.
REQUIRED_FIELDS: tuple[str, ...] = tuple(f.name for f in RECORD if f.required)  # top level, in record order
FIELD_NAMES: dict[str, tuple[str, ...]] = {f.name: tuple(g.name for g in f.fields) for f in RECORD if f.fields}
KEY_PATHS: tuple[str, ...] = tuple(
    path for f in RECORD for path in ([f.name] if f.key else [f"{f.name}.{g.name}" for g in f.fields if g.key])
)
_PLAIN_TYPES = (dict, list, str, int, float, bool, type(None))


def _example(fields: Iterable[Field]) -> dict:
    return {f.name: _example(f.fields) if f.fields else copy.deepcopy(f.example)
            for f in fields if f.fields or f.example is not _ABSENT}


def example_record() -> dict:
    """A complete, valid schema-1 record: the schema by example (docs/records.md shows it; tests build on it)."""
    return _example(f for f in RECORD if f.required or f.example is not _ABSENT)


# ---------------------------------------------------------------------------------------------------- validation


def _is_number(value: Any) -> bool:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    return is_int or (isinstance(value, float) and math.isfinite(value))


def _type_problem(value: Any, f: Field) -> str | None:
    """Why `value` does not fit the field `f`, or None when it does."""
    if value is None:
        return None if f.nullable else "is null"
    if f.type == "metrics":
        if not isinstance(value, dict):
            return f"must be a mapping of metric name -> number, got {type(value).__name__}"
        bad = [k for k, v in value.items() if not isinstance(k, str) or not _is_number(v)]
        return f"has non-numeric or non-finite metrics {bad}" if bad else None
    if f.type == "choice":
        return None if value in f.choices else f"must be one of {list(f.choices)}, got {value!r}"
    fits = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "number": _is_number(value),
        "map": isinstance(value, dict),
        "list": isinstance(value, list),
    }[f.type]
    if not fits:
        return f"must be {f.type}, got {type(value).__name__} {value!r}"
    if f.items == "str" and not all(isinstance(item, str) for item in value):
        return "must be a list of strings"
    return None


def _check_section(rec: dict, fields: tuple[Field, ...], prefix: str, failed: bool = False,
                   lenient_all: bool = False) -> list[str]:
    """Problems of the required fields of one (possibly nested) section. Lenient fields (the result sections of a
    failed run, and everything inside them) may be null, absent or incomplete; what is there is type-checked."""
    problems = []
    for f in fields:
        if not f.required or (f.when is not None and rec.get(f.when[0]) != f.when[1]):
            continue
        field = f"{prefix}{f.name}"
        value = rec.get(f.name)
        lenient = lenient_all or (failed and f.partial_if_failed)
        if f.name not in rec and not lenient:
            problems.append(f"missing field '{field}'")
        elif value is None and lenient:
            continue
        elif f.fields and not isinstance(value, dict):
            problems.append(f"field '{field}' must be a mapping, got {type(value).__name__}")
        elif f.fields:
            problems += _check_section(value, f.fields, f"{field}.", lenient_all=lenient)
        elif (why := _type_problem(value, f)) is not None:
            problems.append(f"field '{field}' {why}")
    return problems


def _optional_problems(rec: dict) -> list[str]:
    """Type problems of the optional fields of the sections that are present, then of the optional sections."""
    problems = []
    for section in RECORD:
        part = rec.get(section.name)
        if not section.required or not isinstance(part, dict):
            continue
        for f in section.fields:
            if not f.required and f.name in part and (why := _type_problem(part[f.name], f)) is not None:
                problems.append(f"field '{section.name}.{f.name}' {why}")
    for section in RECORD:
        if section.required or section.name not in rec:
            continue
        part = rec[section.name]
        if not isinstance(part, dict):
            problems.append(f"field '{section.name}' must be a mapping, got {type(part).__name__}")
        else:
            problems += _check_section(part, section.fields, f"{section.name}.")
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
    run_id = rec.get("run_id")
    if isinstance(run_id, str) and not RUN_ID.fullmatch(run_id):  # it names a folder (pending states): strict
        problems.append(f"run_id {run_id!r} is not of the form YYYYMMDDTHHMMSS-xxxxxx (6 hex digits)")
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
    return problems + _sweep_problems(rec.get("sweep")) + _score_problems(metrics)


def _sweep_problems(sweep: Any) -> list[str]:
    """The `sweep` section (a sweep's runs: its name, grid position and selection group), which dev selection and
    the test-once protocol read: a mapping, its grid position and group size non-negative integers."""
    if sweep is None:
        return []
    if not isinstance(sweep, dict):
        return [f"field 'sweep' must be a mapping, got {type(sweep).__name__}"]
    return [f"field 'sweep.{name}' must be a non-negative integer, got {sweep[name]!r}"
            for name in ("config_index", "configs", "group_configs")
            if sweep.get(name) is not None and (not isinstance(sweep[name], int) or isinstance(sweep[name], bool)
                                                or sweep[name] < 0)]


def _score_problems(metrics: Any) -> list[str]:
    """`dev.score` and `test.score`, where present with the selection metric's parts, equal its value (the mean of
    its parts)."""
    if not isinstance(metrics, dict):
        return []
    selection = metrics.get("selection_metric")
    parts = SELECTION_METRICS.get(selection) if isinstance(selection, str) else None
    problems = []
    for split in ("dev", "test"):
        values = metrics.get(split)
        if (not isinstance(values, dict) or not _is_number(values.get("score")) or parts is None
                or not all(_is_number(values.get(p)) for p in parts)):
            continue
        expected = sum(values[p] for p in parts) / len(parts)
        if not math.isclose(values["score"], expected, rel_tol=1e-9, abs_tol=1e-12):
            problems.append(f"metrics.{split}.score is {values['score']}, but its selection metric '{selection}' is "
                            f"{expected}: the score must equal metrics.{split}[selection_metric]")
    return problems


def validate_record(rec: Any) -> list[str]:
    """Every problem of one (current-schema) record: missing fields, wrong types, inconsistent fields; [] if valid."""
    if not isinstance(rec, dict):
        return [f"a record must be a mapping, got {type(rec).__name__}"]
    problems = _check_section(rec, RECORD, "", failed=rec.get("status") == "failed")
    problems += _optional_problems(rec)
    return problems + _semantic_problems(rec) + list(_non_plain(rec, ""))


def require_valid(records: Iterable[dict]) -> list[dict]:
    """The records as a list, or an error naming the first invalid one (tables and checks trust their input)."""
    records = list(records)
    bad = [(r, p) for r in records if (p := validate_record(r))]
    if bad:
        rec, problems = bad[0]
        run_id = rec.get("run_id", "?") if isinstance(rec, dict) else "?"
        raise SptbenchError(f"{len(bad)} invalid record(s), e.g. run {run_id}: {problems[0]}; see `sptbench validate`")
    return records
