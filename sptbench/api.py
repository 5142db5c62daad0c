"""The public Python API: build a model with any registered method, train it in your own loop (or run the method's
whole protocol with `fit`), save and load it.

    import sptbench
    model = sptbench.build_model("lora", "minilm-l6", num_labels=2, rank=4)   # backbone frozen, LoRA applied
    batch = model.tokenizer(["a fine film", "dull"], padding=True, return_tensors="pt")
    logits = model(**batch).logits                                            # (batch, num_labels)
    sptbench.save(model, "out/")  ...  model = sptbench.load("out/")
    model = sptbench.fit("spt", train_rows, dev_rows, model="minilm-l6", seed=13)  # search -> select -> re-train

A thin facade: models are assembled by `sptbench/run/assemble.py` (as the CLI's are: one way to load a backbone,
freeze it and apply a method) and saved in the one format of `sptbench/run/persist.py`. README.md "Python API" has a
runnable example.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sptbench.core.errors import SptbenchError
from sptbench.data.specs import TaskSpec
from sptbench.data.templates import prompt_setup, setup_from_record
from sptbench.methods.registry import build_config, check_config_layers, get_method
from sptbench.models.classifier import Classifier
from sptbench.run.assemble import build_classifier
from sptbench.run.persist import load_model, make_manifest, save_model

FIT_TASK = "python"  # the name of the task `fit` makes from rows when no task is named


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

    `model(input_ids, attention_mask, token_type_ids=None, labels=None)` returns a transformers
    `SequenceClassifierOutput`: `.logits` (batch, num_labels) and, with labels, `.loss` (cross-entropy);
    `model.tokenizer(texts, padding=True, return_tensors="pt")` gives those inputs. A method with stages of its own
    (SPT: search -> select -> re-train) gives its first stage's model here (SPT: gated prompts at every candidate
    layer, `model.gates()` their α); `fit` runs the whole protocol. The parameters to train are
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


def fit(
    model_or_method: str | Classifier,
    train: list[dict],
    dev: list[dict],
    *,
    model: str = "minilm-l6",
    task: str | None = None,
    num_labels: int | None = None,
    max_length: int = 128,
    seed: int = 0,
    pooling: str | None = None,
    head: str = "linear",
    template: str | None = None,
    prompt_loss: str | None = None,
    device: str = "auto",
    progress: bool = False,
    revision: str | None = None,
    train_options: dict[str, Any] | None = None,
    **method_options: Any,
) -> Classifier:
    """Run a method's whole protocol on your rows, as `sptbench run` does: its own stages where it has them (SPT:
    search -> select the top-K layers -> re-train fresh prompts there) or apply + one training run, with dev
    selection (the best-on-dev state is the one returned). The test split never enters.

    `model_or_method`: a method name (`method_options`, `model`, `pooling`, `head`... as `build_model`'s), or a model
    of `build_model` / `load`, whose method, options, backbone and head are reused (fresh models are trained: the
    one passed is a recipe). `train`, `dev`: rows `{<text column(s)>: str, "label": int}`; with `task` the task's
    text columns, labels, metrics and template, else the rows' string fields are the text (one, or a pair), labels
    are 0..num_labels-1 (default: the largest label + 1) and dev selects on accuracy. `train_options`: the training
    options of `sptbench run` (`lr`, `max_steps`, `batch_size`, `eval_every`, ...; the method's default lr unless
    given). Returns the selected model in eval mode, with `model.tokenizer`, a manifest `save` writes (staged methods:
    the config that rebuilds the final model, e.g. SPT's chosen `layers`) and `model.fit_result` (the FitResult:
    `.result.best_dev`, and `.extra` as a run's record has it: SPT's `alpha`, `chosen_layers`, ...)."""
    from sptbench.run.provenance import resolve_device
    from sptbench.run.runner import fit_context, fit_method, make_train_config

    if isinstance(model_or_method, Classifier):
        recipe = _recipe(model_or_method, model, method_options)
    else:
        recipe = {"method": model_or_method, "config": method_options, "backbone": model, "pooling": pooling,
                  "task": task, "head": head, "template": template, "prompt_loss": prompt_loss, "revision": revision}
    method = get_method(recipe["method"])
    method.check_head(recipe["head"])
    cfg = build_config(method, recipe["config"])
    spec = _fit_spec(recipe["task"], train, dev, num_labels, max_length)
    setup = recipe.get("setup") or _fit_setup(recipe, spec)
    tcfg = make_train_config(method, train_options, seed)
    from sptbench.data.tasks import TaskData

    data = TaskData(spec, list(train), list(dev), [], source="python", location="", fingerprint="",
                    protocol={"name": "python"})
    ctx, info, _ = fit_context(data, setup, cfg, tcfg, resolve_device(device), model=recipe["backbone"], seed=seed,
                               pooling=recipe["pooling"], progress=progress, revision=recipe["revision"])
    if not progress:
        ctx.log = lambda msg: None
    result = fit_method(method, ctx)
    final = build_config(method, result.final_config) if result.final_config is not None else cfg
    fitted = result.model.eval()
    fitted.tokenizer = ctx.tokenizer
    fitted.sptbench_manifest = make_manifest(method.name, final, info.id, info.pooling, spec.num_labels,
                                             recipe["task"], setup, revision=recipe["revision"])
    fitted.fit_result = result
    return fitted


def _recipe(model: Classifier, backbone: str, options: dict) -> dict:
    """How a model of `build_model` / `load` was made, from its manifest."""
    manifest = getattr(model, "sptbench_manifest", None)
    if manifest is None:
        raise SptbenchError("fit() takes a method name or a model from sptbench.build_model or sptbench.load")
    if options:
        raise SptbenchError(f"fit() with a model takes its method options from the model; got {sorted(options)}")
    task = (manifest.get("task") or {}).get("name")
    head = manifest.get("head") or {"kind": "linear"}
    setup = None
    if head.get("kind", "linear") != "linear":
        from sptbench.data.specs import load_spec

        setup = setup_from_record(manifest, load_spec(task))
    return {"method": manifest["method"]["name"], "config": dict(manifest["method"]["config"]),
            "backbone": manifest["backbone"]["id"], "pooling": manifest["backbone"]["pooling"], "task": task,
            "head": head.get("kind", "linear"), "setup": setup, "revision": manifest["backbone"].get("revision")}


def _fit_setup(recipe: dict, spec: TaskSpec):
    """The prompt head's setup (`head="prompt"` needs a named task: its template and label words)."""
    if recipe["head"] == "linear":
        return None
    if recipe["task"] is None:
        raise SptbenchError("fit(head='prompt') needs task=... (its template and label words)")
    from sptbench.models.backbones import backbone_is_causal

    return prompt_setup(spec, recipe["head"], recipe["prompt_loss"], recipe["template"],
                        causal=backbone_is_causal(recipe["backbone"]))


def _fit_spec(task: str | None, train: list[dict], dev: list[dict], num_labels: int | None,
              max_length: int) -> TaskSpec:
    """The named task's spec, or one made from the rows (text columns: the rows' string fields)."""
    rows = list(train) + list(dev)
    if not train or not dev or not all(isinstance(r, dict) and "label" in r for r in rows):
        raise SptbenchError("fit() needs non-empty train and dev lists of rows, each a dict with a 'label'")
    if task is not None:
        from sptbench.data.specs import load_spec

        spec = load_spec(task)
        missing = [c for c in spec.text_columns if any(c not in r for r in rows)]
        if missing:
            raise SptbenchError(f"task '{task}' reads the column '{missing[0]}', which some rows lack")
        labels = spec.num_labels
    else:
        columns = tuple(k for k, v in rows[0].items() if k != "label" and isinstance(v, str))
        if not 1 <= len(columns) <= 2 or any(not all(isinstance(r.get(c), str) for c in columns) for r in rows):
            raise SptbenchError(f"fit() rows need one or two string fields (the text) besides 'label'; the first "
                                f"row has {sorted(rows[0])}")
        labels = num_labels if num_labels is not None else 1 + max(int(r["label"]) for r in rows)
        spec = TaskSpec(FIT_TASK, 1, columns, tuple(str(i) for i in range(labels)), ("accuracy",), "accuracy",
                        int(max_length), {}, {})
    bad = [r["label"] for r in rows if not isinstance(r["label"], int) or not 0 <= r["label"] < labels]
    if bad:
        raise SptbenchError(f"label {bad[0]!r} is not an int in [0, {labels})")
    return spec
