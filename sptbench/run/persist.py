"""The one saved-model format: write, read, rebuild.

A saved model is a folder holding `trained.safetensors` (the trained parameters and the head:
`Classifier.export_state`) and one description of how to rebuild it:
- `model.yaml`, a manifest (`sptbench.save`): method and config, backbone and pooling, labels, task, head;
- or `record.yaml`, a run's record (`sptbench run --save-dir`, and the test-once protocol's pending states under
  `<results>/pending/<run_id>/`): the same facts, in the record's sections, with the config that rebuilds the final
  model in `extra.final_config` for staged methods (SPT's chosen layers).
Both are read by `manifest_from_record` / `read_manifest` into one manifest and rebuilt by `rebuild`: one loader.
Data only: YAML through the bounded safe loader, weights from safetensors; a rebuild is strict (a tensor missing,
extra, or of another shape or dtype is one SptbenchError naming the file and the tensor).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import yaml

from sptbench.core import safe_yaml
from sptbench.core.errors import SptbenchError
from sptbench.data.templates import head_section, setup_from_record
from sptbench.methods.registry import build_config, config_dict, get_method
from sptbench.models.classifier import Classifier
from sptbench.records.io import PENDING_DIR, dump_record, write_text_atomic
from sptbench.records.schema import validate_record
from sptbench.run.assemble import build_classifier

WEIGHTS = "trained.safetensors"  # the trained parameters + head (both kinds of folder)
MANIFEST = "model.yaml"  # the description `save` writes
RECORD = "record.yaml"  # the description a run writes
MANIFEST_VERSION = 1


def pending_dir(results_dir: str | Path, run_id: str) -> Path:
    """Where a `test: selected` sweep keeps a grid point's trained state until its group is tested."""
    return Path(results_dir) / PENDING_DIR / run_id


# ---------------------------------------------------------------------------------------------------- weights


def write_weights(model: Classifier, folder: Path) -> Path:
    """The trained parameters and the linear head (`Classifier.export_state`) as safetensors, atomically."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS
    tmp = weights.with_name(f".{weights.name}.tmp")
    save_file({k: v.contiguous().cpu() for k, v in model.export_state().items()}, str(tmp))
    os.replace(tmp, weights)
    return weights


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file of `write_weights`; a missing or unreadable file is one SptbenchError naming it."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise SptbenchError(f"{path}: no such file")
    try:
        return load_file(str(path))
    except Exception as e:  # SafetensorError, OSError, ...: all mean "not a readable safetensors file"
        lines = str(e).strip().splitlines()
        raise SptbenchError(f"{path}: not a readable safetensors file ({type(e).__name__}: "
                            f"{lines[0] if lines else ''})") from None


def import_weights(model: Classifier, state: dict[str, torch.Tensor], path: Path) -> None:
    """`read_weights(path)`'s tensors onto a model built the same way (strict: see `Classifier.import_state`)."""
    try:
        model.import_state(state)
    except SptbenchError as e:
        raise SptbenchError(f"{path}: {e}") from None


# ---------------------------------------------------------------------------------------------------- descriptions


def make_manifest(method: str, cfg: Any, backbone_id: str, pooling: str, num_labels: int, task: str | None,
                  setup, revision: str | None = None) -> dict:
    """The manifest of a model built by `sptbench.build_model` (what `save` writes as model.yaml); `revision`: the
    hub revision the backbone was loaded at (rebuilt at the same one), where one was asked for."""
    return {
        "sptbench_model": MANIFEST_VERSION,
        "method": {"name": method, "config": config_dict(cfg)},
        "backbone": {"id": backbone_id, "pooling": pooling, **({"revision": revision} if revision else {})},
        "num_labels": num_labels,
        "task": {"name": task} if task is not None else None,
        "head": head_section(setup),
    }


def manifest_from_record(record: dict) -> dict:
    """A run record's rebuild facts as a manifest: multi-stage methods record the config that rebuilds their final
    model (e.g. SPT's chosen layers) in `extra.final_config`; the labels come from the task's spec."""
    final = (record.get("extra") or {}).get("final_config")
    return {
        "sptbench_model": MANIFEST_VERSION,
        "run_id": record.get("run_id"),  # names the run in errors about its head
        "method": {"name": record["method"]["name"], "config": final or record["method"]["config"]},
        "backbone": {"id": record["backbone"]["id"], "pooling": record["backbone"]["pooling"],
                     **({"revision": rev} if (rev := record["backbone"].get("requested_revision")) else {})},
        "num_labels": None,
        "task": {"name": record["task"]["name"]},
        "head": record.get("head"),
    }


def read_manifest(path: Path) -> dict:
    """A model.yaml, checked to be one."""
    manifest = safe_yaml.load_file(path, "saved model")
    if not isinstance(manifest, dict) or manifest.get("sptbench_model") != MANIFEST_VERSION:
        raise SptbenchError(f"{path}: not a saved sptbench model (sptbench_model: {MANIFEST_VERSION} missing)")
    return manifest


def read_run_record(folder: Path) -> dict:
    """A saved run's record.yaml, valid as a record, or one SptbenchError naming the file."""
    record_path = folder / RECORD
    if not folder.is_dir():
        raise SptbenchError(f"{folder}: no saved run here (not a folder)")
    record = safe_yaml.load_file(record_path, "saved record")
    problems = validate_record(record)
    if problems:
        raise SptbenchError(f"{record_path}: not a valid run record: {problems[0]}")
    final = (record.get("extra") or {}).get("final_config")
    if final is not None and not isinstance(final, dict):
        raise SptbenchError(f"{record_path}: extra.final_config must be a mapping, got {type(final).__name__}")
    return record


# ---------------------------------------------------------------------------------------------------- rebuild


def rebuild(manifest: dict, path: Path, *, quiet: bool = False) -> tuple[Classifier, Any]:
    """A fresh backbone + the manifest's method and head, in the state before training (`path`: the description's
    file, for errors). Returns the model and its tokenizer."""
    from sptbench.data.specs import load_spec

    try:
        method = get_method(manifest["method"]["name"])
        cfg = build_config(method, manifest["method"]["config"])
        task = manifest.get("task")
        num_labels = manifest.get("num_labels")
        prompt_head = (manifest.get("head") or {}).get("kind", "linear") != "linear"
        spec = load_spec(task["name"]) if num_labels is None or prompt_head else None
        model, tokenizer, _ = build_classifier(
            method, cfg, manifest["backbone"]["id"], spec.num_labels if num_labels is None else int(num_labels),
            pooling=manifest["backbone"]["pooling"], prompt=setup_from_record(manifest, spec) if spec else None,
            quiet=quiet, revision=manifest["backbone"].get("revision"),
        )
    except (KeyError, TypeError) as e:
        raise SptbenchError(f"{path}: malformed saved model ({type(e).__name__}: {e})") from None
    except SptbenchError as e:
        raise SptbenchError(f"{path}: cannot rebuild the saved model: {e}") from None
    return model, tokenizer


# ---------------------------------------------------------------------------------------------------- save / load


def save_trained(model: Classifier, record: dict, out: Path) -> None:
    """A run's model: the trained parameters + head as safetensors, with the record that says how to rebuild it."""
    write_weights(model, out)
    write_text_atomic(out / RECORD, dump_record(record))


def load_trained(folder: str | Path, quiet: bool = False) -> tuple[Classifier, Any]:
    """Rebuild a saved run (record.yaml + weights) in eval mode, strictly: a record that is not a valid record,
    weights that are not safetensors, or tensors missing, extra, or of another shape or dtype than the rebuilt
    model's are one SptbenchError naming the file (and tensor). `quiet`: no transformers load report."""
    folder = Path(folder)
    record = read_run_record(folder)
    state = read_weights(folder / WEIGHTS)
    model, tokenizer = rebuild(manifest_from_record(record), folder / RECORD, quiet=quiet)
    import_weights(model, state, folder / WEIGHTS)
    return model.eval(), tokenizer


def save_model(model: Classifier, folder: str | Path) -> Path:
    """Save a model of `sptbench.build_model` (or `load_model`): weights + model.yaml. Returns the folder."""
    manifest = getattr(model, "sptbench_manifest", None)
    if manifest is None:
        raise SptbenchError("save() takes a model from sptbench.build_model or sptbench.load; a run's model is saved "
                            "with `sptbench run --save-dir`")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise SptbenchError(f"{folder} is a file, not a folder")
    write_weights(model, folder)
    write_text_atomic(folder / MANIFEST, yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True))
    return folder


def load_model(folder: str | Path) -> Classifier:
    """Rebuild any saved model in eval mode, with its tokenizer as `model.tokenizer`: a folder of `save_model`
    (model.yaml) or of a run (record.yaml)."""
    folder = Path(folder)
    if (folder / RECORD).is_file() and not (folder / MANIFEST).is_file():
        model, tokenizer = load_trained(folder)
        model.tokenizer = tokenizer
        return model
    path = folder / MANIFEST
    if not path.is_file():
        raise SptbenchError(f"{folder}: no saved model here (no {MANIFEST} or {RECORD})")
    manifest = read_manifest(path)
    state = read_weights(folder / WEIGHTS)
    model, tokenizer = rebuild(manifest, path)
    import_weights(model, state, folder / WEIGHTS)
    model.tokenizer = tokenizer
    model.sptbench_manifest = manifest
    return model.eval()
