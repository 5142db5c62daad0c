"""`sptbench.fit` (a method's whole protocol from Python, through the runner's own staged logic) and `model.gates()`."""

from __future__ import annotations

import random

import pytest
import torch

import sptbench
from sptbench import api
from sptbench.core.errors import SptbenchError
from sptbench.data.tasks import load_task
from sptbench.run.persist import read_run_record

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

FAST = {"max_steps": 2, "eval_every": 2, "batch_size": 4}


def rows(seed: int, n: int) -> list[dict]:
    """Seeded sentences whose label is whether they say 'good'."""
    rng = random.Random(seed)
    words = ["film", "plot", "cast", "dull", "long", "fine", "music", "scene"]
    out = []
    for i in range(n):
        label = i % 2
        text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 8)))
        out.append({"text": f"{text} {'good' if label else 'bad'}", "label": label})
    return out


def logits(model, texts: list[str]) -> torch.Tensor:
    enc = model.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model.eval()(**enc).logits


def test_build_model_gives_spt_search_stage_with_gates():
    model = api.build_model("spt", "tiny-bert", seed=0, gate_init=1.0)
    assert model.gates() == {i: pytest.approx(0.731059, abs=1e-6) for i in range(4)}  # sigmoid(1): every layer
    assert api.build_model("lpt", "tiny-bert", seed=0, layer=2).gates() == {2: 1.0}
    assert api.build_model("lora", "tiny-bert", seed=0).gates() == {}


def test_fit_spt_runs_search_select_retrain_and_the_result_saves_and_loads(tmp_path):
    model = sptbench.fit("spt", rows(0, 12), rows(1, 8), model="tiny-bert", seed=3, train_options=FAST, top_k=1)
    extra = model.fit_result.extra
    chosen = extra["chosen_layers"]
    assert len(extra["alpha"]) == 4 and len(chosen) == 1 and extra["candidate_layers"] == [0, 1, 2, 3]
    assert chosen == [max(range(4), key=lambda i: (extra["alpha"][i], -i))]  # the largest α, ties: the lower layer
    assert model.gates() == {chosen[0]: 1.0}  # the re-trained model: a hard prompt at the chosen layer only
    assert set(model.fit_result.stages) == {"search", "retrain"} and model.fit_result.result.best_step is not None
    assert list(model.sptbench_manifest["method"]["config"]["layers"]) == chosen and not model.training
    texts = ["good film", "a dull plot bad"]
    loaded = sptbench.load(sptbench.save(model, tmp_path / "spt"))
    torch.testing.assert_close(logits(loaded, texts), logits(model, texts), atol=1e-6, rtol=0)


def test_fit_is_the_runs_protocol(saved_runs, mirror):
    """The runner's SPT run (tests/conftest.py: rte, 4 shots, seed 21, top_k 1, two steps) and `fit` on the same rows
    with the same options: the same α, layers and dev score."""
    folder, trained = saved_runs["spt"]
    record = read_run_record(folder)
    task = load_task("rte", data_dir=str(mirror), shots=4, seed=21)
    model = sptbench.fit("spt", task.train, task.dev, task="rte", model="tiny-bert", seed=21, top_k=1,
                         train_options={"max_steps": 2, "eval_every": 2, "batch_size": 4})
    assert model.fit_result.extra["alpha"] == pytest.approx(record["extra"]["alpha"], abs=1e-5)
    assert model.fit_result.extra["chosen_layers"] == record["extra"]["chosen_layers"]
    assert model.fit_result.result.best_dev["score"] == pytest.approx(record["metrics"]["dev"]["score"], abs=1e-6)
    enc = model.tokenizer(["a cat sat on the mat", "it rained"], ["a cat sat", "it was dry"], padding=True,
                          return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**enc).logits, trained.eval()(**enc).logits, atol=1e-5, rtol=0)


def test_fit_takes_a_built_model_as_the_recipe():
    recipe = api.build_model("lora", "tiny-bert", seed=0, rank=2)
    model = sptbench.fit(recipe, rows(2, 8), rows(3, 4), seed=0, train_options=FAST)
    assert model is not recipe and model.sptbench_manifest["method"]["config"]["rank"] == 2
    assert model.count_parameters()["trainable"] == recipe.count_parameters()["trainable"]
    assert model.fit_result.result.steps_run == 2


@pytest.mark.parametrize("call,message", [
    (lambda: sptbench.fit("lora", [], rows(0, 2), model="tiny-bert"), "non-empty train and dev"),
    (lambda: sptbench.fit("lora", [{"text": "a", "label": 3}], rows(0, 2), model="tiny-bert", num_labels=2),
     r"label 3 is not an int in \[0, 2\)"),
    (lambda: sptbench.fit("lora", [{"n": 1, "label": 0}], rows(0, 2), model="tiny-bert"), "string fields"),
    (lambda: sptbench.fit(api.build_model("lora", "tiny-bert"), rows(0, 2), rows(0, 2), rank=2), "from the model"),
    (lambda: sptbench.fit("lora", rows(0, 2), rows(0, 2), model="tiny-bert", head="prompt"), "needs task="),
    (lambda: sptbench.fit("lorra", rows(0, 2), rows(0, 2)), "unknown method 'lorra'"),
])
def test_fit_bad_arguments_are_one_line_errors(call, message):
    with pytest.raises(SptbenchError, match=message):
        call()
