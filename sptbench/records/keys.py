"""Record keys and data regimes: what makes two runs the same experiment (docs/records.md, "The key").

The key's components are declared with the run schema (`sptbench.core.run_schema.KEY`); this module works with
keys: canonical config text, seed groups, labels and hashes, the latest record per key, and setting names.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sptbench.core.errors import SptbenchError
from sptbench.core.run_schema import KEY_FIELDS, LINEAR_HEAD, head_of, record_key

__all__ = [
    "KEY_FIELDS",
    "LINEAR_HEAD",
    "canonical_json",
    "head_of",
    "key_hash",
    "key_label",
    "latest_per_key",
    "record_key",
    "regime_of",
    "seed_group",
    "setting_name",
    "without",
]


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


def regime_of(rec: dict) -> tuple[str, str]:
    """(data setting, head kind) of a record: `16shot`, `linear`."""
    p = rec["protocol"]
    return setting_name(p["shots"], p["train_size"]), head_of(rec).get("kind", "linear")


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
