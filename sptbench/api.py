"""The public Python API: build a model with any registered method, train it in your own loop, save and load it.

    import sptbench
    model = sptbench.build_model("lora", "minilm-l6", num_labels=2, rank=4)   # backbone frozen, LoRA applied
    batch = model.tokenizer(["a fine film", "dull"], padding=True, return_tensors="pt")
    logits = model(**batch)                                                   # (batch, num_labels)
    sptbench.save(model, "out/")  ...  model = sptbench.load("out/")

The CLI builds its models with the same functions (`frozen_backbone`, `build_classifier`): one way to load a
backbone, freeze it and apply a method. README.md "Python API" has a runnable example.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import yaml

from sptbench.core import safe_yaml
from sptbench.core.errors import SptbenchError
from sptbench.data.templates import PromptSetup, head_section, prompt_setup, setup_from_record
from sptbench.methods.registry import Method, build_config, config_dict, get_method
from sptbench.models.backbones import BackboneInfo, load_backbone
from sptbench.models.classifier import Classifier
from sptbench.records.io import write_text_atomic

WEIGHTS = "trained.safetensors"  # the trained parameters + linear head (what `--save-dir` writes too)
MANIFEST = "model.yaml"  # how `save` says to rebuild the model (a `--save-dir` folder has record.yaml instead)
MANIFEST_VERSION = 1


def frozen_backbone(
    model: str,
    num_labels: int,
    *,
    pooling: str | None = None,
    head_dropout: float = 0.1,
    prompt: PromptSetup | None = None,
    quiet: bool = False,
) -> tuple[Classifier, Any, BackboneInfo]:
    """A backbone (alias, hub id or folder) as a `Classifier` with a fresh head and every backbone parameter
    frozen: the starting point of every method. Returns the model, its tokenizer and provenance. `quiet`: no
    transformers load report or progress bar."""
    classifier, tokenizer, info = load_backbone(
        model, num_labels, pooling=pooling, head_dropout=head_dropout, prompt=prompt, quiet=quiet
    )
    classifier.freeze_backbone()
    return classifier, tokenizer, info


def build_classifier(
    method: Method,
    cfg: Any,
    model: str,
    num_labels: int,
    *,
    pooling: str | None = None,
    head_dropout: float = 0.1,
    prompt: PromptSetup | None = None,
    quiet: bool = False,
) -> tuple[Classifier, Any, BackboneInfo]:
    """`frozen_backbone` with `method` applied with its config `cfg` (see `registry.build_config`)."""
    classifier, tokenizer, info = frozen_backbone(
        model, num_labels, pooling=pooling, head_dropout=head_dropout, prompt=prompt, quiet=quiet
    )
    method.apply(classifier, cfg)
    return classifier, tokenizer, info


def build_model(
    method: str,
    model: str = "minilm-l6",
    num_labels: int = 2,
    *,
    pooling: str | None = None,
    head: str = "linear",
    task: str | None = None,
    template: str | None = None,
    prompt_loss: str | None = None,
    head_dropout: float = 0.1,
    seed: int | None = None,
    **method_options: Any,
) -> Classifier:
    """A `Classifier` on `model` (an alias such as `minilm-l6`, a hub id or a folder) with `method` applied and the
    backbone frozen; `method_options` are the method's config fields (`sptbench list methods -v`).

    `model(input_ids, attention_mask, token_type_ids=None)` returns (batch, num_labels) logits;
    `model.tokenizer(texts, padding=True, return_tensors="pt")` gives those inputs. The parameters to train are
    those with `requires_grad` (the method's and the linear head's). `seed` seeds torch's global RNG before the
    head and the method are initialised. `head="prompt"` reads the frozen LM head at the template's mask instead of
    a linear head: `task` names the template and label words (encode with sptbench.data.templates.encode_prompt_rows).
    """
    m = get_method(method)
    m.check_head(head)
    cfg = build_config(m, method_options)
    setup = None
    if head != "linear" or task is not None:
        from sptbench.data.tasks import load_spec

        if task is None:
            raise SptbenchError("head='prompt' needs task=... (its template and label words)")
        spec = load_spec(task)
        setup = prompt_setup(spec, head, prompt_loss, template)
        num_labels = spec.num_labels
    if seed is not None:
        torch.manual_seed(seed)
    classifier, tokenizer, info = build_classifier(
        m, cfg, model, num_labels, pooling=pooling, head_dropout=head_dropout, prompt=setup
    )
    classifier.tokenizer = tokenizer
    classifier.sptbench_manifest = {
        "sptbench_model": MANIFEST_VERSION,
        "method": {"name": m.name, "config": config_dict(cfg)},
        "backbone": {"id": info.id, "pooling": info.pooling},
        "num_labels": num_labels,
        "task": {"name": task} if task is not None else None,
        "head": head_section(setup),
    }
    return classifier


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


def save(model: Classifier, folder: str | Path) -> Path:
    """Save a model from `build_model` (or `load`): its trained parameters and head (safetensors) and a manifest
    that says how to rebuild it (method, config, backbone, head). Returns the folder."""
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


def load(folder: str | Path) -> Classifier:
    """Rebuild a saved model in eval mode, with its tokenizer as `model.tokenizer`: a folder of `save`, or of
    `sptbench run --save-dir` (`sptbench.run.runner.load_trained`)."""
    folder = Path(folder)
    if (folder / "record.yaml").is_file() and not (folder / MANIFEST).is_file():
        from sptbench.run.runner import load_trained

        model, tokenizer = load_trained(folder)
        model.tokenizer = tokenizer
        return model
    path = folder / MANIFEST
    if not path.is_file():
        raise SptbenchError(f"{folder}: no saved model here (no {MANIFEST} or record.yaml)")
    manifest = safe_yaml.load_file(path, "saved model")
    if not isinstance(manifest, dict) or manifest.get("sptbench_model") != MANIFEST_VERSION:
        raise SptbenchError(f"{path}: not a saved sptbench model (sptbench_model: {MANIFEST_VERSION} missing)")
    state = read_weights(folder / WEIGHTS)
    try:
        method = get_method(manifest["method"]["name"])
        cfg = build_config(method, manifest["method"]["config"])
        setup = None
        if (manifest.get("head") or {}).get("kind", "linear") != "linear":
            from sptbench.data.tasks import load_spec

            setup = setup_from_record(manifest, load_spec(manifest["task"]["name"]))
        model, tokenizer, _ = build_classifier(
            method, cfg, manifest["backbone"]["id"], int(manifest["num_labels"]),
            pooling=manifest["backbone"]["pooling"], prompt=setup,
        )
    except (KeyError, TypeError) as e:
        raise SptbenchError(f"{path}: malformed saved model ({type(e).__name__}: {e})") from None
    except SptbenchError as e:
        raise SptbenchError(f"{path}: cannot rebuild the saved model: {e}") from None
    import_weights(model, state, folder / WEIGHTS)
    model.tokenizer = tokenizer
    model.sptbench_manifest = manifest
    return model.eval()
