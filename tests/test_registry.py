"""The method registry: one registration per method, configs with typed --set overrides, clear errors."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from sptbench.core.errors import SptbenchError
from sptbench.methods import registry
from sptbench.methods.registry import Method, build_config, config_dict, get_method, load_methods
from tests.helpers import run_cli


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


# -- discovery ----------------------------------------------------------------------------------------------------
def test_every_module_of_the_method_packages_is_imported_and_every_method_comes_from_one():
    import sys

    methods = load_methods()
    modules = registry.method_modules()
    assert {"sptbench.methods.lora", "sptbench.methods.spt", "sptbench.methods.reference"} <= set(modules)
    assert all(m in sys.modules for m in modules)
    assert {m.apply.__module__ for m in methods.values()} <= set(modules)


def _package(root, name: str, files: dict[str, str]) -> None:
    (root / name).mkdir()
    (root / name / "__init__.py").write_text("")
    for module, text in files.items():
        (root / name / f"{module}.py").write_text(text)


@pytest.mark.parametrize("source,error", [
    ("raise RuntimeError('boom\\nsecond line')", "RuntimeError: boom"),
    ("import sptbench_no_such_dependency", "ModuleNotFoundError: No module named 'sptbench_no_such_dependency'"),
    ("def broken(:\n", "SyntaxError"),
])
def test_a_method_module_that_fails_to_import_is_one_error_naming_it(tmp_path, monkeypatch, capsys, source, error):
    import sys

    _package(tmp_path, "sptb_third_party", {"fine": "", "broken": source})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "METHOD_PACKAGES", (*registry.METHOD_PACKAGES, "sptb_third_party"))
    try:
        with pytest.raises(SptbenchError, match="method module 'sptb_third_party.broken' failed to import") as e:
            load_methods(refresh=True)
        assert error in str(e.value) and "\n" not in str(e.value)
        code, out, err = run_cli(["list", "methods"], capsys)  # the CLI: one line, exit 2, no traceback
        assert code == 2 and out == "" and err.count("\n") == 1 and "sptb_third_party.broken" in err
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == "sptb_third_party"]:
            del sys.modules[name]


def _distribution(root, module: str, source: str) -> None:
    """An installed distribution (a .dist-info on sys.path) whose entry point in `sptbench.methods` is `module`."""
    (root / f"{module}.py").write_text(source)
    info = root / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[sptbench.methods]\n{module} = {module}\n")


DEMO_METHOD = '''
from dataclasses import dataclass, field

from sptbench.methods.registry import register_method


@dataclass
class ScaleConfig:
    """A third-party method."""

    scale: float = field(default=2.0, metadata={"help": "the factor"})


def apply(model, cfg):
    pass


register_method("sptb_demo", ScaleConfig, apply, "a method from an installed package", trains="nothing")
'''


def test_a_method_from_an_installed_package_entry_point_is_registered(tmp_path, monkeypatch, capsys):
    import sys

    _distribution(tmp_path, "sptb_demo_pkg", DEMO_METHOD)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))  # the demo method leaves with the test
    monkeypatch.delitem(sys.modules, "sptb_demo_pkg", raising=False)
    try:
        assert "sptb_demo" in load_methods(refresh=True)
        assert build_config(get_method("sptb_demo"), {"scale": "3"}).scale == 3.0
        code, out, _ = run_cli(["list", "methods", "-v"], capsys)
        assert code == 0 and "sptb_demo" in out and "--set scale  (float, default 2.0): the factor" in out
    finally:
        sys.modules.pop("sptb_demo_pkg", None)


def test_an_entry_point_that_fails_to_load_is_one_error_naming_it(tmp_path, monkeypatch):
    import sys

    _distribution(tmp_path, "sptb_bad_pkg", "raise ValueError('no such backbone table')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(SptbenchError, match=r"method entry point 'sptb_bad_pkg' \(sptb_bad_pkg\) failed to load: "
                                                r"ValueError: no such backbone table"):
            load_methods(refresh=True)
    finally:
        sys.modules.pop("sptb_bad_pkg", None)


# -- config fields: help for every option -------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(load_methods()))
def test_every_config_field_has_a_default_and_help(name):
    method = get_method(name)
    assert method.description and 0 < method.default_lr < 1 and method.trains in registry.TRAINS
    assert set(method.heads) <= {"linear", "prompt"} and method.heads
    for f in dataclasses.fields(method.config_cls):
        assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING, f.name
        assert len(f.metadata.get("help", "")) > 10, f"{name}.{f.name} has no help"
    cfg = build_config(method)  # the defaults validate
    assert config_dict(cfg) == {f.name: _plain(f.default) for f in registry.config_fields(method.config_cls)}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def test_list_methods_verbose_shows_every_option_with_type_default_and_help(capsys):
    code, out, _ = run_cli(["list", "methods", "-v"], capsys)
    assert code == 0
    assert "--set rank  (int, default 8): r, the rank of the update B A" in out
    assert "--set pooling  ({avg, max}, default avg)" in out
    for method in load_methods().values():
        for f in registry.config_fields(method.config_cls):
            assert f"--set {f.name}  (" in out and f.help in out
    code, short, _ = run_cli(["list", "methods"], capsys)
    assert code == 0 and "--set" not in short and len(short.splitlines()) == len(load_methods())


# -- a new method is one file, tested by the generated tests ------------------------------------------------------
def docs_example() -> str:
    """The method file in docs/methods.md (the fenced python block after its marker)."""
    import re

    from tests.conftest import REPO

    text = (REPO / "docs" / "methods.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- method-example[^\n]*\n```python\n(.*?)\n```", text, re.S)
    assert found, "docs/methods.md has no python block after the method-example marker"
    return found.group(1)


@pytest.mark.usefixtures("one_thread")
def test_the_docs_example_method_is_discovered_and_passes_the_generated_tests(tmp_path, monkeypatch):
    """docs/methods.md's example, dropped into a method package as one file, with no list edited anywhere."""
    import sys

    from sptbench.testing import test_methods

    _package(tmp_path, "sptb_new_methods", {"deep_prompt": docs_example()})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "METHOD_PACKAGES", (*registry.METHOD_PACKAGES, "sptb_new_methods"))
    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))
    try:
        assert "deep_prompt" in load_methods(refresh=True)
        assert build_config(get_method("deep_prompt"), {"layers": "1,3"}).layers == [1, 3]
        test_every_config_field_has_a_default_and_help("deep_prompt")
        test_methods.test_parameter_counts_follow_what_the_method_declares("deep_prompt")
        test_methods.test_backbone_bit_identical_after_adamw_steps("deep_prompt")
        test_methods.test_save_load_round_trip_through_files("tiny-bert", "deep_prompt", tmp_path)
        for backbone in ("tiny-bert", "tiny-gpt2"):
            test_methods.test_only_intended_parameters_get_gradients(backbone, "deep_prompt")
            test_methods.test_every_method_on_every_family(backbone, "deep_prompt")
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == "sptb_new_methods"]:
            del sys.modules[name]
