"""Reading old records as current ones: schema migrations and the legacy fills (docs/records.md, "Reading and
migration"). Records are never rewritten on disk; they are migrated each time they are read."""

from __future__ import annotations

import copy
from collections.abc import Callable
from importlib import resources

from sptbench.core import safe_yaml
from sptbench.core.errors import SptbenchError
from sptbench.records.schema import REQUIRED_FIELDS, SCHEMA_VERSION


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
    return [k for k in REQUIRED_FIELDS if k in rec] + [k for k in rec if k not in REQUIRED_FIELDS]


# MIGRATIONS[n] turns a schema-n record into a schema-(n+1) record. Add one entry per schema bump.
MIGRATIONS: dict[int, Callable[[dict], dict]] = {0: _migrate_0_to_1}


def _legacy() -> dict:
    """The shipped legacy values (legacy.yaml): `training` options and `method_config` fields per method name."""
    data = safe_yaml.load_file(resources.files(__package__) / "legacy.yaml", "legacy record values")
    if not isinstance(data, dict) or not isinstance(data.get("training"), dict) \
            or not isinstance(data.get("method_config"), dict):
        raise SptbenchError("sptbench/records/legacy.yaml must map `training` and `method_config`")
    return data


_LEGACY = _legacy()
# Training options added after records were written: a record without one ran with this value (still the default).
LEGACY_TRAINING: dict = _LEGACY["training"]
# Method config fields added after records were written, with the value older runs had, per method name.
LEGACY_METHOD_CONFIG: dict[str, dict] = _LEGACY["method_config"]


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
