"""The public Python API (sptbench/api.py): the README's example runs as written, saved runs load, errors are one
line, and `import sptbench` stays light."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

import sptbench
from sptbench import api
from sptbench.core.errors import SptbenchError
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

MARKER = "<!-- python-api-example"


def readme_example() -> str:
    """The fenced python block right after the marker in README.md."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    found = re.search(re.escape(MARKER) + r"[^\n]*\n```python\n(.*?)\n```", text, re.S)
    assert found, "README.md has no python block after the python-api-example marker"
    return found.group(1)


def test_the_readme_example_runs_as_written(capsys):
    code = readme_example()
    assert "sptbench.build_model(" in code and "sptbench.save(" in code and "sptbench.load(" in code
    exec(compile(code, "README.md (Python API)", "exec"), {"__name__": "readme_example"})
    assert "saved and loaded: same logits" in capsys.readouterr().out


def test_import_sptbench_imports_no_torch():
    out = subprocess.run([sys.executable, "-c", "import sys, sptbench; print('torch' in sys.modules, "
                          "sorted(sptbench.__all__))"], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split("\n")[0] == "False ['Trainer', '__version__', 'build_model', 'fit', 'load', 'save']"


def test_public_names_are_the_api_functions():
    assert sptbench.build_model is api.build_model and sptbench.save is api.save and sptbench.load is api.load
    with pytest.raises(AttributeError):
        sptbench.no_such_name  # noqa: B018


def test_build_model_applies_the_method_and_freezes_the_backbone():
    model = api.build_model("adapter", "tiny-roberta", 3, bottleneck=4, seed=0)
    assert model.head.out_features == 3 and model.tokenizer is not None
    assert model.count_parameters()["trainable"] == 4 * 2 * (32 * 4 + 4 + 4 * 32 + 32)
    assert not any(p.requires_grad for n, p in model.backbone.named_parameters() if ".adapter." not in n)
    same = api.build_model("adapter", "tiny-roberta", 3, bottleneck=4, seed=0)
    assert torch.equal(same.head.weight, model.head.weight)  # seeded: the same head and method init


@pytest.mark.parametrize("call,message", [
    (lambda: api.build_model("lorra", "tiny-bert"), r"unknown method 'lorra'. Did you mean 'lora'\?"),
    (lambda: api.build_model("lora", "tiny-bert", rnak=4), r"Did you mean 'rank'\?"),
    (lambda: api.build_model("zero_shot", "tiny-bert"), "works with --head prompt"),
    (lambda: api.build_model("lora", "tiny-bert", head="prompt"), "needs task="),
])
def test_bad_arguments_are_one_line_errors(call, message):
    with pytest.raises(SptbenchError, match=message):
        call()


def test_prompt_head_models_save_and_load(tmp_path):
    model = api.build_model("prompt_tuning", "tiny-bert", head="prompt", task="sst2", num_tokens=3, seed=0).eval()
    enc = model.tokenizer(["a [MASK] film", "so [MASK] ."], padding=True, return_tensors="pt")
    loaded = api.load(api.save(model, tmp_path / "m"))
    assert loaded.head_kind == "prompt"
    with torch.no_grad():
        torch.testing.assert_close(loaded(**enc).logits, model(**enc).logits, atol=1e-6, rtol=0)


def test_load_reads_a_save_dir_run_and_refuses_other_folders(saved_runs, tmp_path):
    folder, trained = saved_runs["lora"]
    loaded = api.load(folder)
    enc = loaded.tokenizer(["a short premise", "and another"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**enc).logits, trained(**enc).logits, atol=1e-6, rtol=0)
    with pytest.raises(SptbenchError, match="no saved model here"):
        api.load(tmp_path)
    (tmp_path / "model.yaml").write_text("method: lora\n")
    with pytest.raises(SptbenchError, match="not a saved sptbench model"):
        api.load(tmp_path)
    with pytest.raises(SptbenchError, match="save\\(\\) takes a model from sptbench.build_model"):
        api.save(trained, tmp_path / "x")
