"""The method registry and the method protocol: one `register_method` call per PETuning method, as in peft's
`register_peft_method`; methods are discovered, never listed by hand (docs/methods.md).

A method is a config dataclass (every field with a default and `metadata={"help": ...}`, overridable with
`--set key=value`) and an `apply` function that adds and marks the trainable parameters on a `Classifier`. Methods
with stages of their own (SPT: search -> select -> re-train) also give a `fit(ctx: FitContext) -> FitResult`; the
runner calls it instead of one training run.

Discovery: every module of the packages in `METHOD_PACKAGES` is imported, then every entry point of the group
`sptbench.methods` is loaded (a third-party package adds a method that way). A module that fails to import is a
loud `SptbenchError` naming it, never a method that silently disappears.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Literal

from sptbench.core.errors import InvalidValue, SptbenchError, describe, unknown_choice
from sptbench.core.limits import check_allocation

if TYPE_CHECKING:  # the protocol's types, without importing torch with the registry
    from sptbench.core.run_schema import TrainConfig
    from sptbench.data.tasks import TaskData
    from sptbench.training.loop import TrainResult

METHOD_PACKAGES = ("sptbench.methods",)  # every module (or method folder) in these is imported
ENTRY_POINT_GROUP = "sptbench.methods"  # entry points of installed packages, each loaded
TRAINS = ("added", "subset", "backbone", "nothing")


@dataclass
class FitContext:
    """What a multi-stage method's `fit` gets from the runner. It never contains the test split's labels in use:
    `task.test` is there for the runner alone; `fit` must select on `task.dev` only."""

    task: TaskData
    method_cfg: Any  # the method's config dataclass, overrides applied and validated
    tcfg: TrainConfig
    tokenizer: Any
    build_model: Callable[[], Any]  # a fresh seeded backbone + head, backbone frozen, method not applied
    encode: Callable[[list[dict]], list[dict]]  # rows -> token ids (the run's head and template)
    train: Callable[..., TrainResult]  # train(model, train_enc, dev_enc, tcfg=None, **kw): sptbench.training.loop.train
    log: Callable[[str], None]


@dataclass
class FitResult:
    """What `fit` returns: the selected model (the runner evaluates it once on test) and what goes into the record."""

    model: Any  # the selected (best-on-dev) Classifier
    result: TrainResult  # its final training run (the record's outcome, dev metrics and throughput)
    extra: dict = field(default_factory=dict)  # method-specific record fields (e.g. SPT's chosen layers)
    stages: dict = field(default_factory=dict)  # cost of stages before the final training (e.g. SPT's search)
    # the config that rebuilds the final model when it differs from the run's (SPT: `layers` = the chosen ones);
    # recorded as extra.final_config, read by sptbench.run.runner.load_trained
    final_config: dict | None = None

    def record_extra(self) -> dict:
        """The record's `extra` section: `extra`, then `final_config` when there is one."""
        if self.final_config is None:
            return dict(self.extra)
        return {**self.extra, "final_config": dict(self.final_config)}


@dataclass(frozen=True)
class Method:
    name: str
    config_cls: type
    apply: Callable[..., None]  # apply(model: Classifier, cfg) -> None
    description: str
    fit: Callable[[FitContext], FitResult] | None = None  # for multi-stage methods; else apply + one training run
    default_lr: float = 1e-3  # the learning rate a run uses unless --lr says otherwise
    heads: tuple[str, ...] = ("linear", "prompt")  # the heads (--head) the method works with
    # what trains besides the linear head: "added" = the parameters `apply` adds (the backbone stays frozen),
    # "subset" = the backbone's own parameters whose names `subset` accepts, and nothing added (BitFit: the biases),
    # "backbone" = all of the backbone's own (finetune), "nothing" (head, zero_shot). The generated tests check it.
    trains: Literal["added", "subset", "backbone", "nothing"] = "added"
    # trains="subset": a predicate on a backbone parameter's name (as `model.backbone.named_parameters()` gives it)
    subset: Callable[[str], bool] | None = None

    def check_head(self, head: str) -> None:
        """A one-line error when the method does not work with this head (e.g. `head` trains the linear one)."""
        if head not in self.heads:
            raise SptbenchError(f"method '{self.name}' works with --head {' or '.join(self.heads)}, not '{head}'")


METHODS: dict[str, Method] = {}
_discovered: tuple | None = None  # (packages, sys.path) of the last discovery


def register_method(
    name: str,
    config_cls: type,
    apply: Callable[..., None],
    description: str,
    fit: Callable[[FitContext], FitResult] | None = None,
    default_lr: float = 1e-3,
    heads: tuple[str, ...] = ("linear", "prompt"),
    trains: str = "added",
    subset: Callable[[str], bool] | None = None,
) -> None:
    """Register a method under `name` (once; a second registration of the same name is a bug). `trains="subset"`
    declares which backbone parameters `apply` makes trainable with `subset(name) -> bool` on their names in
    `model.backbone.named_parameters()`; the generated tests (sptbench/testing) check exactly those train."""
    if name in METHODS and METHODS[name].apply is not apply:
        raise RuntimeError(f"method '{name}' is registered twice")
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"config for '{name}' must be a dataclass")
    if trains not in TRAINS:
        raise ValueError(f"method '{name}': trains must be one of {TRAINS}, got {trains!r}")
    if (trains == "subset") != (subset is not None) or (subset is not None and not callable(subset)):
        raise ValueError(f"method '{name}': trains='subset' and a callable subset=... go together")
    METHODS[name] = Method(name, config_cls, apply, description, fit, default_lr, tuple(heads), trains, subset)


def method_modules() -> list[str]:
    """Every module of the method packages, by full name (helper modules that register nothing included)."""
    out = []
    for package in METHOD_PACKAGES:
        pkg = import_method_module(package)
        out += [f"{package}.{info.name}" for info in pkgutil.iter_modules(pkg.__path__)]
    return out


def import_method_module(module: str):
    """Import a method module; any exception it raises is one SptbenchError naming the module and the error."""
    try:
        return importlib.import_module(module)
    except Exception as e:
        raise SptbenchError(f"method module '{module}' failed to import: {describe(e)}") from e


def load_entry_points() -> None:
    """Load every entry point of the group `sptbench.methods` (its import registers the package's methods)."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:
            raise SptbenchError(
                f"method entry point '{ep.name}' ({ep.value}) failed to load: {describe(e)}"
            ) from e


def load_methods(refresh: bool = False) -> dict[str, Method]:
    """Discover every method (the method packages' modules, then the entry points) and return the registry.
    Discovery runs once per method packages and import path (`refresh`: again, e.g. after installing a package)."""
    global _discovered
    key = (METHOD_PACKAGES, tuple(sys.path))
    if refresh or _discovered != key:
        for module in method_modules():
            import_method_module(module)
        load_entry_points()
        _discovered = key
    return METHODS


def get_method(name: str) -> Method:
    methods = load_methods()
    if name not in methods:
        raise unknown_choice("method", name, methods)
    return methods[name]


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Turn a `--set` string (or a YAML value) into the field's declared type."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    nullable = type(None) in typing.get_args(annotation) or annotation is Any
    if value is None and not nullable:
        raise SptbenchError(f"'{key}' expects {getattr(annotation, '__name__', annotation)}, got null")
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and nullable):
        return None
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
        return _coerce(value, args[0], key)
    if origin in (list, tuple):
        items = _list_items(value, key) if isinstance(value, str) else list(value)
        inner = args[0] if args else str
        out = [_coerce(v.strip() if isinstance(v, str) else v, inner, key) for v in items if v != ""]
        return tuple(out) if origin is tuple else out
    if origin is typing.Literal:
        if value not in typing.get_args(annotation):
            raise unknown_choice(f"value for '{key}'", str(value), [str(a) for a in typing.get_args(annotation)])
        return value
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if annotation in (int, float, str):
            if isinstance(value, bool):  # YAML's `true` is not the number 1 (nor the text "True")
                raise ValueError(value)
            if annotation is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return annotation(value)
    except (TypeError, ValueError):
        raise InvalidValue(f"'{key}' expects {getattr(annotation, '__name__', annotation)}, got '{value}'") from None
    return value


@functools.lru_cache(maxsize=128)
def _hints(config_cls: type) -> tuple[dict[str, Any], frozenset[str]]:
    """A config class's resolved field types and field names (resolving them costs ~1 ms: a sweep asks per point)."""
    return typing.get_type_hints(config_cls), frozenset(f.name for f in dataclasses.fields(config_cls))


def _list_items(text: str, key: str) -> list[Any]:
    """A list field's `--set` value: `9,10`, `9` or YAML flow `[9, 10]` / `[]` (brackets: parsed as YAML)."""
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return text.split(",")
    from sptbench.core import safe_yaml

    items = safe_yaml.load_one(text, f"--set {key}")
    if not isinstance(items, list):
        raise SptbenchError(f"'{key}' expects a list (9,10 or [9, 10]), got '{text}'")
    return items


def coerce_overrides(config_cls: type, overrides: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    """`overrides` checked against the dataclass's fields and coerced to their types (one clear error each)."""
    hints, fields = _hints(config_cls)
    out = {}
    for key, value in (overrides or {}).items():
        if key not in fields:
            raise unknown_choice(kind, key, fields)
        out[key] = _coerce(value, hints[key], key)
    return out


def build_config(method: Method, overrides: dict[str, Any] | None = None) -> Any:
    """The method's config with `overrides` applied; unknown keys list the valid ones."""
    cfg = method.config_cls(**coerce_overrides(method.config_cls, overrides, f"--set key for method '{method.name}'"))
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        validate()
    return cfg


def check_config_layers(cfg: Any, model: str, num_labels: int | None = None) -> None:
    """Before any weights load: a config's layer choices (its `check_layers`, where it has one) fit `model`'s
    depth, and its sizes (and a linear head for `num_labels`) fit this machine's memory, where the backbone's
    dimensions are known from its name or config alone (`backbones.backbone_dims`)."""
    from sptbench.models.backbones import backbone_dims

    dims = backbone_dims(model)  # for every method: it also says when the backbone's package is missing
    if dims is None:
        return
    hidden, layers = dims
    check_layers = getattr(cfg, "check_layers", None)
    if check_layers is not None:
        check_layers(layers)
    check_config_sizes(cfg, hidden, layers)
    if num_labels is not None:
        check_allocation(f"a linear head for num_labels={num_labels:,}", hidden * num_labels)


# A `size` field (metadata {"size": True}: a rank, bottleneck, prompt length) adds at most this many hidden-wide
# parameter rows per unit per layer: LoRA's A and B on a few targets, two adapters' down and up projections, keys and
# values of a prefix. An upper bound: what it refuses could never be built, and only such values.
ROWS_PER_SIZE_UNIT = 8


def check_config_sizes(cfg: Any, hidden: int, layers: int) -> None:
    """Refuse a config whose size fields ask for more parameters than this machine's memory holds."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.metadata.get("size") and isinstance(value, int):
            check_allocation(f"{f.name}={value:,} (on {layers} layers of width {hidden})",
                             value * hidden * max(layers, 1) * ROWS_PER_SIZE_UNIT, bound=True)


def config_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config (tuples become lists)."""
    out = {}
    for k, v in dataclasses.asdict(cfg).items():
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


@dataclass(frozen=True)
class FieldDoc:
    """One config field as users see it (`sptbench list methods -v`): name, type, default and help."""

    name: str
    type: str
    default: Any
    help: str


def _type_name(annotation: Any) -> str:
    """`int`, `float | None`, `{avg, max}` (a Literal's choices)."""
    if typing.get_origin(annotation) is Literal:
        return "{" + ", ".join(str(a) for a in typing.get_args(annotation)) + "}"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def config_fields(config_cls: type) -> list[FieldDoc]:
    """The fields of a method's config dataclass with their declared type, default and help."""
    hints = typing.get_type_hints(config_cls)
    out = []
    for f in dataclasses.fields(config_cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        out.append(FieldDoc(f.name, _type_name(hints[f.name]), default, f.metadata.get("help", "")))
    return out
