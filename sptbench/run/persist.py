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

import glob
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from sptbench.core import safe_yaml
from sptbench.core.errors import SptbenchError
from sptbench.core.paths import check_run_id, inside
from sptbench.data.templates import head_section, setup_from_record
from sptbench.methods.registry import build_config, config_dict, get_method
from sptbench.models.classifier import Classifier
from sptbench.records.io import (
    PENDING_DIR,
    SAVED_MANIFEST,
    SAVED_RECORD,
    SAVED_WEIGHTS,
    dump_record,
    new_file_mode,
    umask,
    write_text_atomic,
)
from sptbench.records.schema import validate_record
from sptbench.run.assemble import build_classifier
from sptbench.run.checks import check_save_target

WEIGHTS = SAVED_WEIGHTS  # "trained.safetensors": the trained parameters + head (both kinds of folder)
MANIFEST = SAVED_MANIFEST  # "model.yaml": the description `save` writes
RECORD = SAVED_RECORD  # "record.yaml": the description a run writes
TRAINED_ON = "sptbench.trained_on"  # the weights file's metadata: what they were trained on (`trained_on`), JSON
MANIFEST_VERSION = 1


def pending_dir(results_dir: str | Path, run_id: str) -> Path:
    """Where a `test: selected` sweep keeps a grid point's trained state until its group is tested: the run id comes
    from a table (data from others), so only the strict pattern, and the folder is checked to stay under the
    results folder (symlinks followed) before anything reads, writes or deletes it."""
    return inside(results_dir, PENDING_DIR, check_run_id(run_id), what="pending state")


# ---------------------------------------------------------------------------------------------------- weights


def write_weights(model: Classifier, folder: Path, trained_on: dict | None = None) -> Path:
    """The trained parameters and the linear head (`Classifier.export_state`) as safetensors in `folder` (a fresh
    one: `_write_saved` makes the pair appear at once), with what they were trained on (`trained_on`) in the file's
    metadata; any failure (a full disk) is one SptbenchError."""
    from safetensors.torch import save_file

    weights = folder / WEIGHTS
    metadata = {TRAINED_ON: json.dumps(trained_on, sort_keys=True)} if trained_on is not None else None
    try:
        save_file({k: v.contiguous().cpu() for k, v in model.export_state().items()}, str(weights), metadata=metadata)
        os.chmod(weights, new_file_mode())  # safetensors writes 0600 whatever the umask
        with open(weights, "rb") as f:
            os.fsync(f.fileno())
    except Exception as e:  # OSError, SafetensorError ("No space left on device"): one line
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0]
        raise SptbenchError(f"cannot write {weights}: {reason}") from None
    return weights


def _recover_saved(folder: Path) -> None:
    """What a save killed midway (kill -9) left beside `folder`: a half-written `.NAME.save-*` folder is removed; a
    saved run moved aside to `.NAME.old-*` while `folder` is missing is put back."""
    if not folder.parent.is_dir():
        return
    for stale in folder.parent.glob(f".{glob.escape(folder.name)}.save-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for old in folder.parent.glob(f".{glob.escape(folder.name)}.old-*"):
        if (old / "run").is_dir() and not folder.exists():
            os.replace(old / "run", folder)
        shutil.rmtree(old, ignore_errors=True)


def _write_saved(model: Classifier, folder: Path, description: str, text: str, overwrite: bool,
                 manifest: dict) -> None:
    """Weights + description, together or neither: both are written to a hidden sibling folder, which then takes
    `folder`'s place by rename (an existing saved run, with `overwrite`, is moved aside first and removed after)."""
    _recover_saved(folder)
    check_save_target(folder, overwrite)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.save-"))
    except OSError as err:
        raise SptbenchError(f"cannot write the saved run {folder}: {err.strerror or err}") from None
    old = None
    try:
        os.chmod(tmp, 0o777 & ~umask())  # a folder as `mkdir` would make it (mkdtemp's is private)
        write_weights(model, tmp, trained_on(manifest, _find_spec(manifest, required=False)))
        write_text_atomic(tmp / description, text)
        if folder.is_dir() and any(folder.iterdir()):
            old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old-"))
            os.replace(folder, old / "run")
        os.replace(tmp, folder)  # onto a missing or empty folder: atomic
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not folder.exists():
            os.replace(old / "run", folder)  # put the old saved run back
        if isinstance(err, OSError):
            raise SptbenchError(f"cannot write the saved run {folder}: {err.strerror or err}") from None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


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


def read_trained_on(path: Path) -> dict | None:
    """What the weights at `path` were trained on (`write_weights`' metadata); None for files saved before it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            text = (f.metadata() or {}).get(TRAINED_ON)
        stored = json.loads(text) if text is not None else None
    except Exception as e:  # SafetensorError, OSError, JSONDecodeError: not a file of ours
        raise SptbenchError(f"{path}: unreadable metadata ({type(e).__name__})") from None
    if stored is not None and not isinstance(stored, dict):
        raise SptbenchError(f"{path}: metadata {TRAINED_ON} must be a mapping, got {type(stored).__name__}")
    return stored


def import_weights(model: Classifier, state: dict[str, torch.Tensor], path: Path) -> None:
    """`read_weights(path)`'s tensors onto a model built the same way (strict: see `Classifier.import_state`)."""
    try:
        model.import_state(state)
    except SptbenchError as e:
        raise SptbenchError(f"{path}: {e}") from None


# ---------------------------------------------------------------------------------------------------- descriptions


def make_manifest(method: str, cfg: Any, backbone_id: str, pooling: str, num_labels: int, task: str | None,
                  setup, weights_sha256: str | None = None, revision: str | None = None) -> dict:
    """The manifest of a model built by `sptbench.build_model` (what `save` writes as model.yaml); `revision`: the
    hub revision the backbone was loaded at (rebuilt at the same one), where one was asked for."""
    return {
        "sptbench_model": MANIFEST_VERSION,
        "method": {"name": method, "config": config_dict(cfg)},
        "backbone": {"id": backbone_id, "pooling": pooling, "weights_sha256": weights_sha256,
                     **({"revision": revision} if revision else {})},
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
                     "weights_sha256": record["backbone"].get("weights_sha256"),
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


def trained_on(manifest: dict, spec) -> dict:
    """What a saved model's weights were trained on, from its description (and its task's spec): the backbone's
    weights and pooling, the head, the task's labels and their number. Stored with the weights (`write_weights`)
    and compared with the description on load, so that an edited model.yaml / record.yaml is refused."""
    backbone = manifest.get("backbone") or {}
    num_labels = manifest.get("num_labels")
    return json.loads(json.dumps({  # as it reads back from the file's JSON
        "backbone.weights_sha256": backbone.get("weights_sha256"),
        "backbone.pooling": backbone.get("pooling"),
        "head": manifest.get("head") or head_section(None),
        "task.name": (manifest.get("task") or {}).get("name"),
        "task.labels": list(spec.labels) if spec is not None else None,
        "num_labels": num_labels if num_labels is not None else (spec.num_labels if spec is not None else None),
    }, sort_keys=True))


def _find_spec(manifest: dict, required: bool):
    """The task spec of a saved model: needed where it gives the labels or the prompt head (`required`), else
    only read when it can be found (its labels are then checked)."""
    from sptbench.data.specs import load_spec

    task = manifest.get("task")
    if task is None:
        if required:
            raise SptbenchError("a saved model without num_labels must name its task")
        return None
    try:
        return load_spec(task["name"])
    except SptbenchError:
        if required:
            raise
        return None


def check_trained_on(manifest: dict, spec, stored: dict | None, path: Path, weights: Path) -> None:
    """The description agrees with what its weights were trained on (`trained_on`, stored with them), field by
    field; weights saved before this was stored are checked against the backbone only (`rebuild`)."""
    num_labels = manifest.get("num_labels")
    if num_labels is not None and (type(num_labels) is not int or num_labels < 1):
        raise SptbenchError(f"{path}: num_labels must be a positive integer, got {num_labels!r}")
    if stored is None:
        return
    for field, value in trained_on(manifest, spec).items():
        if field in stored and value is not None and stored[field] is not None and stored[field] != value:
            raise SptbenchError(f"{path}: {field} is {value!r}, but {weights.name} was trained with "
                                f"{stored[field]!r}: not loaded")


def rebuild(manifest: dict, path: Path, *, quiet: bool = False, stored: dict | None = None) -> tuple[Classifier, Any]:
    """A fresh backbone + the manifest's method and head, in the state before training (`path`: the description's
    file, for errors), checked against what the weights were trained on (`stored`, `check_trained_on`) and the
    backbone against the weights sha256 the description names. Returns the model and its tokenizer."""
    try:
        method = get_method(manifest["method"]["name"])
        cfg = build_config(method, manifest["method"]["config"])
        num_labels = manifest.get("num_labels")
        prompt_head = (manifest.get("head") or {}).get("kind", "linear") != "linear"
        spec = _find_spec(manifest, required=num_labels is None or prompt_head)
        check_trained_on(manifest, spec, stored, path, path.with_name(WEIGHTS))
        backbone = manifest["backbone"]
        model, tokenizer, info = build_classifier(
            method, cfg, backbone["id"], spec.num_labels if num_labels is None else num_labels,
            pooling=backbone["pooling"], prompt=setup_from_record(manifest, spec) if prompt_head else None,
            quiet=quiet, revision=backbone.get("revision"),
        )
    except (KeyError, TypeError) as e:
        raise SptbenchError(f"{path}: malformed saved model ({type(e).__name__}: {e})") from None
    except SptbenchError as e:
        raise SptbenchError(f"{path}: cannot rebuild the saved model: {e}") from None
    want = backbone.get("weights_sha256")
    if want and info.weights_sha256 and want != info.weights_sha256:
        raise SptbenchError(f"{path}: backbone.weights_sha256: {backbone['id']!r} has weights sha256 "
                            f"{info.weights_sha256[:12]}..., the saved run was trained on {want[:12]}...: not loaded")
    return model, tokenizer


# ---------------------------------------------------------------------------------------------------- save / load


def save_trained(model: Classifier, record: dict, out: Path, overwrite: bool = False) -> None:
    """A run's model: the trained parameters + head as safetensors, with the record that says how to rebuild it
    (together or neither; an existing saved run is replaced only with `overwrite`)."""
    _write_saved(model, Path(out), RECORD, dump_record(record), overwrite, manifest_from_record(record))


def load_trained(folder: str | Path, quiet: bool = False) -> tuple[Classifier, Any]:
    """Rebuild a saved run (record.yaml + weights) in eval mode, strictly: a record that is not a valid record,
    weights that are not safetensors, or tensors missing, extra, or of another shape or dtype than the rebuilt
    model's are one SptbenchError naming the file (and tensor). `quiet`: no transformers load report."""
    folder = Path(folder)
    record = read_run_record(folder)
    state = read_weights(folder / WEIGHTS)
    model, tokenizer = rebuild(manifest_from_record(record), folder / RECORD, quiet=quiet,
                               stored=read_trained_on(folder / WEIGHTS))
    import_weights(model, state, folder / WEIGHTS)
    return model.eval(), tokenizer


def save_model(model: Classifier, folder: str | Path, overwrite: bool = False) -> Path:
    """Save a model of `sptbench.build_model` (or `load_model`): weights + model.yaml, together or neither; an
    existing saved run is replaced only with `overwrite`. Returns the folder."""
    manifest = getattr(model, "sptbench_manifest", None)
    if manifest is None:
        raise SptbenchError("save() takes a model from sptbench.build_model or sptbench.load; a run's model is saved "
                            "with `sptbench run --save-dir`")
    folder = Path(folder)
    text = yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True)
    _write_saved(model, folder, MANIFEST, text, overwrite, manifest)
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
    model, tokenizer = rebuild(manifest, path, stored=read_trained_on(folder / WEIGHTS))
    import_weights(model, state, folder / WEIGHTS)
    model.tokenizer = tokenizer
    model.sptbench_manifest = manifest
    return model.eval()
