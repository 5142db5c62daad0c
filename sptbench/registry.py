"""The method registry: one `register_method` call per PETuning method, as in peft's `register_peft_method`.

A method is a config dataclass (documented defaults, overridable with `--set key=value`) and an `apply`
function that adds and marks the trainable parameters on a `Classifier`. Methods with stages of their own
(SPT: search -> select -> re-train) also give a `fit` function; the runner calls it instead of one training run.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sptbench.errors import SptbenchError, unknown_choice


@dataclass(frozen=True)
class Method:
    name: str
    config_cls: type
    apply: Callable[..., None]  # apply(model: Classifier, cfg) -> None
    description: str
    fit: Callable[..., Any] | None = None  # fit(ctx: FitContext) -> FitResult, for multi-stage methods
    default_lr: float = 1e-3  # the learning rate a run uses unless --lr says otherwise
    heads: tuple[str, ...] = ("linear", "prompt")  # the heads (--head) the method works with

    def check_head(self, head: str) -> None:
        """A one-line error when the method does not work with this head (e.g. `head` trains the linear one)."""
        if head not in self.heads:
            raise SptbenchError(f"method '{self.name}' works with --head {' or '.join(self.heads)}, not '{head}'")


METHODS: dict[str, Method] = {}

# Modules whose import registers methods. A new method is one file plus one line here.
_METHOD_MODULES = (
    "sptbench.methods.reference",
    "sptbench.baselines.prompt_tuning",
    "sptbench.baselines.p_tuning_v2",
    "sptbench.baselines.adapter",
    "sptbench.baselines.lora",
    "sptbench.methods.spt",
)


def register_method(
    name: str,
    config_cls: type,
    apply: Callable[..., None],
    description: str,
    fit: Callable[..., Any] | None = None,
    default_lr: float = 1e-3,
    heads: tuple[str, ...] = ("linear", "prompt"),
) -> None:
    """Register a method under `name` (once; a second registration of the same name is a bug)."""
    if name in METHODS and METHODS[name].apply is not apply:
        raise RuntimeError(f"method '{name}' is registered twice")
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"config for '{name}' must be a dataclass")
    METHODS[name] = Method(name, config_cls, apply, description, fit, default_lr, tuple(heads))


def load_methods() -> dict[str, Method]:
    """Import every method module (idempotent) and return the registry."""
    for module in _METHOD_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:  # a module not written yet must not break the others
            if e.name != module:
                raise
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
        items = value.split(",") if isinstance(value, str) else list(value)
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
            if annotation is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return annotation(value)
    except (TypeError, ValueError):
        raise SptbenchError(f"'{key}' expects {getattr(annotation, '__name__', annotation)}, got '{value}'") from None
    return value


def coerce_overrides(config_cls: type, overrides: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    """`overrides` checked against the dataclass's fields and coerced to their types (one clear error each)."""
    hints = typing.get_type_hints(config_cls)
    fields = {f.name for f in dataclasses.fields(config_cls)}
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


def config_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config (tuples become lists)."""
    out = {}
    for k, v in dataclasses.asdict(cfg).items():
        out[k] = list(v) if isinstance(v, tuple) else v
    return out
