"""The public Python API: build a model with any registered method, train it in your own loop, save and load it.

    import sptbench
    model = sptbench.build_model("lora", "minilm-l6", num_labels=2, rank=4)   # backbone frozen, LoRA applied
    batch = model.tokenizer(["a fine film", "dull"], padding=True, return_tensors="pt")
    logits = model(**batch)                                                   # (batch, num_labels)
    sptbench.save(model, "out/")  ...  model = sptbench.load("out/")

A thin facade: models are assembled by `sptbench/run/assemble.py` (as the CLI's are: one way to load a backbone,
freeze it and apply a method) and saved in the one format of `sptbench/run/persist.py`. README.md "Python API" has a
runnable example.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sptbench.core.errors import SptbenchError
from sptbench.data.templates import prompt_setup
from sptbench.methods.registry import build_config, check_config_layers, get_method
from sptbench.models.classifier import Classifier
from sptbench.run.assemble import build_classifier
from sptbench.run.persist import load_model, make_manifest, save_model


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
    revision: str | None = None,
    **method_options: Any,
) -> Classifier:
    """A `Classifier` on `model` (an alias such as `minilm-l6`, a hub id or a folder) with `method` applied and the
    backbone frozen; `method_options` are the method's config fields (`sptbench list methods -v`).

    `model(input_ids, attention_mask, token_type_ids=None)` returns (batch, num_labels) logits;
    `model.tokenizer(texts, padding=True, return_tensors="pt")` gives those inputs. The parameters to train are
    those with `requires_grad` (the method's and the linear head's). `seed` seeds torch's global RNG before the
    head and the method are initialised. `head="prompt"` reads the frozen LM head at the template's mask instead of
    a linear head: `task` names the template and label words (encode with sptbench.data.templates.encode_prompt_rows).
    `revision`: the hub repository's commit, branch or tag (hub ids only; `save` keeps it for `load`).
    """
    _check_arguments(method=method, model=model, num_labels=num_labels, seed=seed)
    m = get_method(method)
    m.check_head(head)
    cfg = build_config(m, method_options)
    check_config_layers(cfg, model, num_labels if head == "linear" and task is None else None)
    setup = None
    if head != "linear" or task is not None:
        from sptbench.data.specs import load_spec

        if task is None:
            raise SptbenchError("head='prompt' needs task=... (its template and label words)")
        spec = load_spec(task)
        from sptbench.models.backbones import backbone_is_causal

        setup = prompt_setup(spec, head, prompt_loss, template, causal=head != "linear" and backbone_is_causal(model))
        num_labels = spec.num_labels
    if seed is not None:
        torch.manual_seed(seed)
    classifier, tokenizer, info = build_classifier(
        m, cfg, model, num_labels, pooling=pooling, head_dropout=head_dropout, prompt=setup, revision=revision
    )
    classifier.tokenizer = tokenizer
    classifier.sptbench_manifest = make_manifest(m.name, cfg, info.id, info.pooling, num_labels, task, setup,
                                                 info.weights_sha256, revision=revision)
    return classifier


def _check_arguments(*, method: Any, model: Any, num_labels: Any, seed: Any) -> None:
    """build_model's arguments, each named in a TypeError (wrong type) or ValueError (out of range) before any work."""
    for name, value in (("method", method), ("model", model)):
        if not isinstance(value, str):
            raise TypeError(f"build_model: {name} must be a str, got {type(value).__name__} {value!r}")
        if not value.strip():
            raise ValueError(f"build_model: {name} must not be empty")
    if not isinstance(num_labels, int) or isinstance(num_labels, bool):
        raise TypeError(f"build_model: num_labels must be an int, got {type(num_labels).__name__} {num_labels!r}")
    if num_labels < 2:
        raise ValueError(f"build_model: num_labels must be at least 2, got {num_labels}")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise TypeError(f"build_model: seed must be an int or None, got {type(seed).__name__} {seed!r}")
    if seed is not None and not 0 <= seed < 2**63:  # torch.manual_seed's range
        raise ValueError(f"build_model: seed must be in [0, 2^63), got {seed}")


def _check_folder(folder: Any, caller: str) -> None:
    if not isinstance(folder, (str, Path)):
        raise TypeError(f"{caller}: folder must be a str or Path, got {type(folder).__name__} {folder!r}")
    if not str(folder).strip():
        raise ValueError(f"{caller}: folder must not be empty")


def save(model: Classifier, folder: str | Path, *, overwrite: bool = False) -> Path:
    """Save a model from `build_model` (or `load`): its trained parameters and head (safetensors) and a manifest
    that says how to rebuild it (method, config, backbone, head), both or neither, into a new or empty folder (a
    saved run there is replaced only with `overwrite=True`). Returns the folder (format: run/persist.py)."""
    if not isinstance(model, Classifier):
        raise TypeError(f"save: model must be a model from sptbench.build_model or load, got {type(model).__name__}")
    _check_folder(folder, "save")
    return save_model(model, folder, overwrite=overwrite)


def load(folder: str | Path) -> Classifier:
    """Rebuild a saved model in eval mode, with its tokenizer as `model.tokenizer`: a folder of `save`, or of
    `sptbench run --save-dir`."""
    _check_folder(folder, "load")
    return load_model(folder)
