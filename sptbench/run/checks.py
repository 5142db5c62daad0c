"""What a run checks before it imports torch or trains (issue 38): names, types and ranges of every option, the
results table it appends to and the folder it saves to. `sptbench run` calls `check_run` before the runner is even
imported, so that a bad option is one line in a fraction of a second; the runner and `sptbench sweep` (at every grid
point) call the same checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sptbench.core.errors import SptbenchError
from sptbench.core.run_schema import RunSpec, TrainConfig, check_choices, check_train_config
from sptbench.methods.registry import Method, build_config, check_config_layers, coerce_overrides, get_method
from sptbench.records.io import (
    SAVED_MANIFEST,
    SAVED_RECORD,
    SAVED_WEIGHTS,
    check_appendable,
    check_writable_dir,
    is_read_only,
    table_path,
)
from sptbench.records.keys import setting_name
from sptbench.records.runfiles import check_run_file_dir

SAVED_FILES = (SAVED_WEIGHTS, SAVED_MANIFEST, SAVED_RECORD)  # a saved run's files (format: run/persist.py)


def train_config(spec: RunSpec, method: Method) -> TrainConfig:
    """The run's training options: the method's default lr, then the overrides, coerced and range-checked."""
    if "seed" in spec.train_overrides:  # the run's seed is one option, not also a training one that would lose
        raise SptbenchError(f"'seed' is a run option, not a training one: give it as seed: "
                            f"{spec.train_overrides['seed']!r} (or --seed), not under train:")
    return make_train_config(method, spec.train_overrides, spec.seed)


def make_train_config(method: Method, overrides: dict | None, seed: int) -> TrainConfig:
    """Training options: the method's default lr, then `overrides` (TrainConfig's fields), coerced and checked."""
    overrides = {"lr": method.default_lr, **(overrides or {})}
    values = coerce_overrides(TrainConfig, overrides, "training option") | {"seed": seed}
    tcfg = TrainConfig(**values)
    check_train_config(tcfg)
    return tcfg


MAX_SEED = 2**32  # numpy's seeds are 32-bit


def check_seed(seed: Any) -> int:
    """A run seed: an integer in [0, 2^32) (numpy's range), not a bool or a float."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < MAX_SEED:
        raise SptbenchError(f"seed must be an integer in [0, 2^32), got {seed!r}")
    return seed


def _check_path(value: Any, what: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise SptbenchError(f"{what} must be a non-empty path, got {value!r}")


def check_spec(spec: RunSpec, layers: bool = True) -> tuple[Method, Any, TrainConfig, Path]:
    """Everything about a run that can be checked without data or a model (what `sptbench sweep` checks at every
    grid point before any run): names, types and ranges of every option. Returns the method, its config, the
    training config and the table the record will go to. `layers=False`: leave out the check of layer choices
    against the backbone's depth (`check_run` makes it last: it may import transformers)."""
    from sptbench.data.specs import load_spec
    from sptbench.data.tasks import check_protocol

    for name, value in (("method", spec.method), ("task", spec.task), ("model", spec.model)):
        if not isinstance(value, str) or not value:
            raise SptbenchError(f"{name} must be a non-empty name, got {value!r}")
    check_seed(spec.seed)
    method = get_method(spec.method)
    method.check_head(spec.head)
    if spec.head != "prompt" and (spec.template is not None or spec.prompt_loss is not None):
        raise SptbenchError("template and prompt_loss apply to the prompt head only (--head prompt)")
    cfg = build_config(method, spec.method_overrides)
    tcfg = train_config(spec, method)
    check_choices(spec)  # every option with declared choices (dtype, device, pooling, head, ...)
    _check_path(spec.results_dir, "results_dir")
    for name in ("data_dir", "save_dir"):
        if getattr(spec, name) is not None:
            _check_path(getattr(spec, name), name)
    setting = setting_name(spec.shots, spec.train_size)
    task_spec = load_spec(spec.task)
    check_protocol(task_spec, spec.shots, spec.seed, spec.split_source, spec.train_size)
    if layers:  # last: it may read the backbone's config (transformers)
        check_backbone(spec, cfg, task_spec.num_labels)
    return method, cfg, tcfg, table_path(spec.results_dir, spec.model, setting)


def check_backbone(spec: RunSpec, cfg: Any, num_labels: int) -> None:
    """The model name (alias, folder or hub id), the method's layer choices and sizes and the linear head against
    the backbone's config, and the revision. Last: it may read the backbone's config (transformers)."""
    from sptbench.models.backbones import check_backbone_name, check_revision

    check_backbone_name(spec.model)
    check_config_layers(cfg, spec.model, None if spec.head == "prompt" else num_labels)
    check_revision(spec.model, spec.revision)


def check_save_dir(save_dir: str, overwrite: bool, results_dir: str) -> None:
    """`--save-dir`: a new or empty folder, or one holding a saved run and nothing else with `overwrite`
    (`persist.check_save_target`), outside the results folder (its record.yaml would read as a second table)."""
    out, results = Path(save_dir).resolve(), Path(results_dir).resolve()
    if out == results or out.is_relative_to(results):
        raise SptbenchError(f"--save-dir {save_dir} is inside --results-dir {results_dir}: its record.yaml would be "
                            "read as a table; save elsewhere")
    check_save_target(save_dir, overwrite, "--save-dir")


def check_save_target(folder: str | Path, overwrite: bool, what: str = "save folder") -> None:
    """`folder` can take a saved run: new, empty, or (with `overwrite`) holding a saved run and nothing else whose
    files are writable; its nearest existing ancestor is a writable folder. Checked before any work."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise SptbenchError(f"{what} {folder} is a file, not a folder")
    try:
        entries = sorted(e.name for e in folder.iterdir()) if folder.is_dir() else []
    except OSError as err:
        raise SptbenchError(f"{what} {folder}: cannot list it ({err.strerror or err})") from None
    held = [name for name in entries if name in SAVED_FILES]
    if held and not overwrite:
        raise SptbenchError(f"{what} {folder} already holds a saved run ({held[0]}); pass overwrite to replace it "
                            "(--overwrite, overwrite=True)")
    others = [name for name in entries if name not in SAVED_FILES]
    if others:
        raise SptbenchError(f"{what} {folder} holds other files ({others[0]}): a saved run goes to a new or empty "
                            "folder (or one holding a saved run, with overwrite)")
    protected = [name for name in held if is_read_only(folder / name)]
    if protected:
        raise SptbenchError(f"{what} {folder}: {protected[0]} is read-only: the saved run is not replaced")
    check_writable_dir(folder.parent)



def check_run(spec: RunSpec) -> tuple[Method, Any, TrainConfig, Path]:
    """Everything a run checks before it loads data or a model: the options (`check_spec`), the table it appends to
    and the folder it saves to. Returns what `check_spec` returns."""
    method, cfg, tcfg, path = check_spec(spec, layers=False)
    if spec.record_to == "file":  # its own file under <results>/v1/<backbone>/runs/ (records/runfiles.py)
        check_run_file_dir(path)
    else:
        check_appendable(path)
    if spec.save_dir:
        check_save_dir(spec.save_dir, spec.overwrite, spec.results_dir)
    from sptbench.data.specs import load_spec

    check_backbone(spec, cfg, load_spec(spec.task).num_labels)  # last: it may read the backbone's config
    return method, cfg, tcfg, path
