"""The installed test kit (sptbench/testing) and `trains="subset"`: a method of another package, installed in a
temporary folder from docs/methods.md's walkthrough, passes the generated tests for exactly its subset; one that
trains more than it declares fails them; `sptbench selftest` runs them."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from sptbench.cli.selftest import METHODS_ENV, pytest_command
from sptbench.core.errors import SptbenchError
from sptbench.methods import registry
from sptbench.methods.registry import get_method, load_methods, register_method
from sptbench.testing import methods_under_test
from sptbench.testing import test_methods as kit
from tests.conftest import REPO
from tests.helpers import run_cli

PACKAGE = "sptbench_ln_tuning"


def docs_block(marker: str, lang: str) -> str:
    text = (REPO / "docs" / "methods.md").read_text(encoding="utf-8")
    found = re.search(rf"<!-- {marker}[^\n]*\n```{lang}\n(.*?)\n```", text, re.S)
    assert found, f"docs/methods.md has no {lang} block after the {marker} marker"
    return found.group(1)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """docs/methods.md's LayerNorm-tuning package, installed in tmp_path as pip would: the module, and a dist-info
    with the pyproject's name and entry point."""
    pyproject = docs_block("plugin-pyproject", "toml")
    name = re.search(r'^name = "([\w-]+)"$', pyproject, re.M).group(1)
    entry = re.search(r'^(\w+) = "(\w+)"$', pyproject, re.M)
    assert entry and entry.group(2) == PACKAGE
    (tmp_path / f"{PACKAGE}.py").write_text(docs_block("plugin-example", "python"))
    info = tmp_path / f"{name.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[sptbench.methods]\n{entry.group(1)} = {entry.group(2)}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))  # the plugin leaves with the test
    monkeypatch.delitem(sys.modules, PACKAGE, raising=False)
    assert "ln_tuning" in load_methods(refresh=True)
    yield tmp_path
    sys.modules.pop(PACKAGE, None)


@pytest.mark.usefixtures("one_thread")
def test_an_installed_subset_method_passes_the_generated_tests(plugin, tmp_path):
    method = get_method("ln_tuning")
    assert method.trains == "subset" and method.subset("encoder.layer.0.output.LayerNorm.bias")
    assert not method.subset("encoder.layer.0.output.dense.bias") and method.subset("h.1.ln_2.weight")
    kit.test_parameter_counts_follow_what_the_method_declares("ln_tuning")
    kit.test_backbone_bit_identical_after_adamw_steps("ln_tuning")
    kit.test_save_load_round_trip_through_files("tiny-bert", "ln_tuning", tmp_path)
    for backbone in ("tiny-gpt2", "tiny-llama"):  # GPT-2's ln_1 / ln_f, LLaMA's RMSNorm weights
        kit.test_only_intended_parameters_get_gradients(backbone, "ln_tuning")
        kit.test_every_method_on_every_family(backbone, "ln_tuning")


def test_a_method_training_more_than_its_subset_fails_them(plugin):
    """The plugin's apply, plus the attention output biases it does not declare: the generated tests fail."""
    honest = get_method("ln_tuning")

    def greedy(model, cfg):
        honest.apply(model, cfg)
        for name, p in model.backbone.named_parameters():
            if name.endswith("attention.output.dense.bias"):
                p.requires_grad_(True)

    register_method("ln_greedy", honest.config_cls, greedy, "declares norms, trains more", trains="subset",
                    subset=honest.subset)
    with pytest.raises(AssertionError):
        kit.test_parameter_counts_follow_what_the_method_declares("ln_greedy")
    with pytest.raises(AssertionError):
        kit.test_only_intended_parameters_get_gradients("tiny-bert", "ln_greedy")


def test_subset_needs_its_predicate():
    with pytest.raises(ValueError, match="trains='subset' and a callable subset"):
        register_method("sptb_bad", get_method("bitfit").config_cls, lambda m, c: None, "x", trains="subset")
    with pytest.raises(ValueError, match="trains='subset' and a callable subset"):
        register_method("sptb_bad", get_method("bitfit").config_cls, lambda m, c: None, "x", subset=str.isalpha)
    assert "sptb_bad" not in registry.METHODS


def test_the_kit_restricts_to_the_named_methods(monkeypatch):
    monkeypatch.setenv(METHODS_ENV, "lora, bitfit")
    assert methods_under_test() == ["bitfit", "lora"]
    monkeypatch.setenv(METHODS_ENV, "lorra")
    with pytest.raises(SptbenchError, match="unknown method 'lorra'"):
        methods_under_test()


def test_selftest_command_line_and_errors(capsys):
    argv, env = pytest_command(["bitfit"], [])
    assert argv[1:5] == ["-m", "pytest", "--pyargs", "sptbench.testing"] and env[METHODS_ENV] == "bitfit"
    code, _, err = run_cli(["selftest", "--method", "bitfti"], capsys)
    assert code == 2 and "unknown method 'bitfti'" in err and "bitfit" in err


@pytest.mark.slow
def test_selftest_runs_the_kit_on_an_installed_plugin(plugin):
    """`sptbench selftest --method ln_tuning` in a fresh process, the plugin found through its entry point."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin), str(REPO)])}
    out = subprocess.run([sys.executable, "-m", "sptbench.cli", "selftest", "--method", "ln_tuning"], env=env,
                         capture_output=True, text=True, cwd=plugin, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # every family twice (the two family-wise tests), two method-wise tests and two on BERT and GPT-2; none skipped
    from sptbench.testing import tiny_families

    expected = 2 * len(tiny_families()) + 4
    assert re.search(rf"\b{expected} passed in\b", out.stdout), out.stdout[-2000:]
