"""A Classifier inside `transformers.Trainer` (sptbench/trainer.py and Classifier.forward's output): every row
predicted (the bare-tensor forward lost the first row of every batch), the loss the model returns, and saves that
hold only what the method trains and that `sptbench.load` reads."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
import transformers
from transformers import DataCollatorWithPadding, TrainingArguments

from sptbench import api
from sptbench.trainer import Trainer
from tests.conftest import REPO
from tests.helpers import random_batch

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

N = 37  # not a multiple of the batch size: the last batch has 5 rows


def rows(seed: int) -> list[dict]:
    """N seeded random examples of varying length, as a tokenized dataset's rows."""
    ids, mask = random_batch(seed, bsz=N, max_len=9)
    labels = torch.randint(0, 2, (N,), generator=torch.Generator().manual_seed(seed))
    return [{"input_ids": ids[i, : int(mask[i].sum())].tolist(), "labels": int(labels[i])} for i in range(N)]


def direct_logits(model, data: list[dict]) -> torch.Tensor:
    """The model's logits, one example at a time (no padding): what every prediction must equal."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model(torch.tensor([r["input_ids"]]), torch.ones(1, len(r["input_ids"]),
                                                                            dtype=torch.long)).logits for r in data])


def args(folder, **kw) -> TrainingArguments:
    base = {"per_device_train_batch_size": 8, "per_device_eval_batch_size": 8, "max_steps": 3, "learning_rate": 1e-2,
            "report_to": [], "save_strategy": "no", "use_cpu": True, "disable_tqdm": True, "logging_steps": 1,
            "seed": 0}
    return TrainingArguments(str(folder), **(base | kw))


def test_forward_returns_loss_and_logits_by_name_and_index():
    model = api.build_model("lora", "tiny-bert", seed=0).eval()
    ids, mask = random_batch(3, bsz=4, max_len=7)
    labels = torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        plain, with_labels = model(ids, mask), model(ids, mask, labels=labels)
    assert "loss" not in plain and plain[0] is plain.logits and plain.logits.shape == (4, 2)
    torch.testing.assert_close(with_labels.logits, plain.logits, atol=0, rtol=0)
    torch.testing.assert_close(with_labels.loss, F.cross_entropy(plain.logits, labels))
    assert with_labels[0] is with_labels.loss and with_labels[1] is with_labels.logits  # transformers' order


@pytest.mark.parametrize("custom_loss", [False, True])
def test_trainer_trains_predicts_every_row_and_saves_what_the_method_trains(custom_loss, tmp_path):
    """sptbench.Trainer with the model's loss, and the stock Trainer as the issue ran it: `label_names` and a
    `compute_loss_func` (Trainer then calls the model without labels and took a bare logits tensor's `outputs[1:]`
    as the logits: the first row of every batch lost, 32 predictions of 37)."""
    model = api.build_model("lora", "tiny-bert", num_labels=2, rank=4, seed=0)
    train, test = rows(1), rows(2)
    backbone = {n: p.detach().clone() for n, p in model.backbone.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    collate = DataCollatorWithPadding(model.tokenizer)
    if custom_loss:
        loss_func = lambda out, labels, num_items_in_batch=None: F.cross_entropy(out["logits"], labels)  # noqa: E731
        trainer = transformers.Trainer(model=model, args=args(tmp_path, label_names=["labels"]), train_dataset=train,
                                       data_collator=collate, compute_loss_func=loss_func)
    else:
        trainer = Trainer(model=model, args=args(tmp_path), train_dataset=train, data_collator=collate)
    result = trainer.train()
    assert result.global_step == 3 and 0 < result.training_loss < 5
    assert all(torch.equal(p, backbone[n]) for n, p in model.backbone.named_parameters() if n in backbone)
    assert all(not torch.equal(p, trained[n]) for n, p in model.named_parameters() if p.requires_grad)

    predicted = trainer.predict(test)
    assert predicted.predictions.shape == (N, 2) and predicted.label_ids.tolist() == [r["labels"] for r in test]
    expected = direct_logits(model, test)
    torch.testing.assert_close(torch.as_tensor(predicted.predictions), expected, atol=1e-5, rtol=1e-5)
    loss = F.cross_entropy(expected, torch.tensor([r["labels"] for r in test]))
    assert predicted.metrics["test_loss"] == pytest.approx(loss.item(), abs=1e-5)

    if custom_loss:
        return
    trainer.save_model(tmp_path / "final")
    assert set(os.listdir(tmp_path / "final")) == {"trained.safetensors", "model.yaml", "training_args.bin"}
    loaded = api.load(tmp_path / "final")
    torch.testing.assert_close(direct_logits(loaded, test), expected, atol=1e-6, rtol=0)


def test_checkpoints_hold_the_trained_state_and_resume_and_best_model_read_them(tmp_path):
    model = api.build_model("prompt_tuning", "tiny-bert", num_tokens=3, seed=0)
    train, dev = rows(3), rows(4)
    trainer = Trainer(model=model, args=args(tmp_path / "run", save_strategy="steps", save_steps=1,
                                             eval_strategy="steps", eval_steps=1, load_best_model_at_end=True,
                                             metric_for_best_model="loss", greater_is_better=False),
                      train_dataset=train, eval_dataset=dev, data_collator=DataCollatorWithPadding(model.tokenizer))
    trainer.train()
    best = trainer.state.best_model_checkpoint
    losses = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    assert best and len(losses) == 3 and best.endswith(f"checkpoint-{1 + losses.index(min(losses))}")
    for step in (1, 2, 3):
        files = set(os.listdir(tmp_path / "run" / f"checkpoint-{step}"))
        assert {"trained.safetensors", "model.yaml"} <= files and "model.safetensors" not in files
    # the model holds the best checkpoint's prompt and head; a new model resumed from checkpoint 2 (its prompt, head,
    # optimizer and RNG states) takes step 3 as the first run did
    torch.testing.assert_close(direct_logits(model, dev), direct_logits(api.load(best), dev), atol=1e-6, rtol=0)
    fresh = api.build_model("prompt_tuning", "tiny-bert", num_tokens=3, seed=5)
    resumed = Trainer(model=fresh, args=args(tmp_path / "resumed"), train_dataset=train,
                      data_collator=DataCollatorWithPadding(fresh.tokenizer))
    assert resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2")).global_step == 3
    third = api.load(tmp_path / "run" / "checkpoint-3")
    torch.testing.assert_close(direct_logits(fresh, dev), direct_logits(third, dev), atol=1e-5, rtol=0)


def test_the_stock_trainer_still_saves_the_whole_state_dict(tmp_path):
    """Why sptbench.Trainer exists: the stock save writes every tensor, backbone included."""
    model = api.build_model("lora", "tiny-bert", seed=0)
    transformers.Trainer(model=model, args=args(tmp_path)).save_model(str(tmp_path / "stock"))
    from safetensors.torch import load_file

    stock = load_file(str(tmp_path / "stock" / "model.safetensors"))
    assert len(stock) > len(model.export_state()) and set(model.export_state()) < set(stock)


def test_readme_trainer_example_runs_as_written(capsys):
    import re

    text = (REPO / "README.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- python-api-trainer-example[^\n]*\n```python\n(.*?)\n```", text, re.S)
    assert found, "README.md has no python block after the python-api-trainer-example marker"
    exec(compile(found.group(1), "README.md (Trainer)", "exec"), {"__name__": "readme_trainer_example"})
    assert "predictions: 37" in capsys.readouterr().out
