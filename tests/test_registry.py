"""The method registry: one registration per method, configs with typed --set overrides, clear errors."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from sptbench.errors import SptbenchError
from sptbench.registry import Method, build_config, config_dict, get_method, load_methods


@dataclass
class DemoConfig:
    length: int = 20
    lr_scale: float = 1.0
    reparam: bool = False
    layers: tuple[int, ...] | None = None
    init: str = "random"


DEMO = Method("demo", DemoConfig, lambda model, cfg: None, "demo")


def test_reference_methods_registered():
    methods = load_methods()
    assert {"head", "finetune"} <= set(methods)
    assert get_method("head").config_cls.__name__ == "HeadConfig"


def test_unknown_method_lists_choices_and_suggests():
    with pytest.raises(SptbenchError, match=r"Did you mean 'finetune'\?.*Choices: .*head"):
        get_method("finetun")


def test_set_values_are_coerced_to_field_types():
    cfg = build_config(DEMO, {"length": "7", "lr_scale": "0.5", "reparam": "true", "layers": "1,3"})
    assert (cfg.length, cfg.lr_scale, cfg.reparam, cfg.layers) == (7, 0.5, True, (1, 3))
    assert config_dict(cfg)["layers"] == [1, 3]
    assert build_config(DEMO, {"layers": "none"}).layers is None


def test_unknown_set_key_lists_valid_keys():
    with pytest.raises(SptbenchError, match=r"Did you mean 'length'\?.*Choices: init, layers, length"):
        build_config(DEMO, {"lenght": "3"})


@pytest.mark.parametrize("key,value", [("length", "many"), ("reparam", "maybe"), ("length", "2.5")])
def test_bad_set_value_is_one_clear_error(key, value):
    with pytest.raises(SptbenchError, match=f"'{key}' expects"):
        build_config(DEMO, {key: value})
