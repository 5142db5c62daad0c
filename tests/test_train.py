"""The trainer against a plain PyTorch loop (issue 16): under `STOCK_SETTINGS`, sptbench's `train` and a stock
transformers + peft loop from the same initial weights and batch order give the same per-step losses; and the
pieces that make that possible (the torch sampler, the schedules, clipping off) do what they say."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from torch import nn
from transformers import AutoModel

from sptbench.data.specs import load_spec
from sptbench.methods.registry import build_config, get_method
from sptbench.models.backbones import TINY_CONFIGS, drop_pooler, load_backbone
from sptbench.training.loop import STOCK_SETTINGS, TrainConfig, lr_multiplier, torch_epochs, train

STEPS = 8


def random_rows(seed: int, n: int, max_len: int = 12) -> list[dict]:
    """Fresh encoded rows: random ids of random lengths (CLS-like 101 first), random binary labels."""
    rng = random.Random(seed)
    return [
        {"input_ids": [101] + [rng.randrange(999, 30000) for _ in range(rng.randrange(2, max_len))],
         "label": rng.randrange(2)}
        for _ in range(n)
    ]


def collate(rows: list[dict]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A stock right-padding collate (pad id 0), as a DataLoader's collate_fn."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.tensor([r["input_ids"] + [0] * (width - len(r["input_ids"])) for r in rows])
    mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows])
    return {"input_ids": ids, "attention_mask": mask}, torch.tensor([r["label"] for r in rows])


def stock_model(ours, backbone: str, method: str, cfg):
    """The stock counterpart of `ours`: `AutoModel` with our backbone's weights, wrapped by peft's own
    `get_peft_model` (LoRA / prompt tuning), an `nn.Linear` head; the trainable tensors copied from `ours`."""
    from peft import LoraConfig, PromptTuningConfig, TaskType, get_peft_model

    tokenizer_len = ours.backbone.get_input_embeddings().num_embeddings
    config = TINY_CONFIGS[backbone](tokenizer_len)
    config._attn_implementation = "eager" if config.model_type in ("deberta", "deberta-v2") else "sdpa"
    encoder = AutoModel.from_config(config)
    drop_pooler(encoder)  # as load_backbone does: the pooler is unused
    base = {k.replace(".base_layer", ""): v for k, v in ours.backbone.state_dict().items() if "lora_" not in k}
    encoder.load_state_dict(base, strict=True)
    encoder.requires_grad_(False)
    virtual = 0
    if method == "lora":
        lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=list(ours.family.lora_targets), fan_in_fan_out=config.model_type == "gpt2")
        encoder = get_peft_model(encoder, lora)
    elif method == "prompt_tuning":
        virtual = cfg.num_tokens
        encoder = get_peft_model(encoder, PromptTuningConfig(task_type=TaskType.FEATURE_EXTRACTION,
                                                             num_virtual_tokens=virtual))
    head = nn.Linear(ours.head.in_features, ours.head.out_features)
    ours_trainable = {n: p for n, p in ours.named_parameters() if p.requires_grad}
    with torch.no_grad():
        head.load_state_dict(ours.head.state_dict())
        stock_trainable = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad]
        for name, p in stock_trainable:
            if "lora_" in name:
                [source] = [v for k, v in ours_trainable.items() if k.startswith("backbone.") and name.endswith(k[9:])]
            else:  # peft's prompt embedding table
                [source] = [v for k, v in ours_trainable.items() if k.startswith("injections.")]
            p.copy_(source.reshape(p.shape))
        assert len(stock_trainable) + 2 == len(ours_trainable)
    return encoder, head, virtual


def stock_losses(encoder, head, virtual: int, pooling: str, rows, tcfg: TrainConfig) -> list[float]:
    """A plain loop: DataLoader(shuffle, seeded generator), AdamW on everything trainable, constant lr, no clip."""
    loader = torch.utils.data.DataLoader(rows, batch_size=tcfg.batch_size, shuffle=True, collate_fn=collate,
                                         generator=torch.Generator().manual_seed(tcfg.seed))
    params = [p for p in [*encoder.parameters(), *head.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    encoder.train()
    losses: list[float] = []
    while len(losses) < tcfg.max_steps:
        for inputs, labels in loader:
            hidden = encoder(**inputs).last_hidden_state[:, virtual:]
            mask = inputs["attention_mask"]
            if pooling == "mean":
                pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            else:  # the last real token
                pooled = hidden[torch.arange(len(hidden)), mask.sum(1) - 1]
            loss = nn.functional.cross_entropy(head(pooled), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            if len(losses) == tcfg.max_steps:
                break
    return losses


def ours_losses(model, rows, tcfg: TrainConfig) -> list[float]:
    """sptbench's `train`, evaluating every step so that the history holds every step's loss."""
    dev = random_rows(7, 4)
    result = train(model, rows, dev, load_spec("sst2"), dataclasses.replace(tcfg, eval_every=1), progress=False)
    return [h["train_loss"] for h in result.history]


def build_pair(backbone: str, method: str, seed: int, head_dropout: float):
    pooling = "last" if backbone == "tiny-gpt2" else "mean"
    torch.manual_seed(seed)
    ours, _, _ = load_backbone(backbone, 2, pooling=pooling, head_dropout=head_dropout)
    ours.freeze_backbone()
    m = get_method(method)
    cfg = build_config(m, {"dropout": 0.0} if method == "lora" else None)
    m.apply(ours, cfg)
    with torch.no_grad():  # a nonzero LoRA B, so that the LoRA branch matters from the first step
        for name, p in ours.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    encoder, head, virtual = stock_model(ours, backbone, method, cfg)
    return ours, encoder, head, virtual, pooling


@pytest.mark.parametrize("backbone", ["tiny-bert", "tiny-gpt2"])
@pytest.mark.parametrize("method", ["head", "lora", "prompt_tuning"])
def test_stock_settings_reproduce_a_plain_loop_step_by_step(backbone, method, one_thread):
    seed = random.randrange(1000)
    rows = random_rows(seed, 10)
    tcfg = TrainConfig(**STOCK_SETTINGS, max_steps=STEPS, batch_size=4, lr=3e-3, weight_decay=0.01, seed=seed)
    ours, encoder, head, virtual, pooling = build_pair(backbone, method, seed, tcfg.head_dropout)
    torch.manual_seed(seed + 1)  # the dropout stream: the same for both loops
    ours_out = ours_losses(ours, rows, tcfg)
    torch.manual_seed(seed + 1)
    stock_out = stock_losses(encoder, head, virtual, pooling, rows, tcfg)
    assert ours_out == pytest.approx(stock_out, abs=2e-5)
    assert len(set(stock_out)) > 1  # the losses move: the comparison is about training, not one forward


@pytest.mark.parametrize("change", [
    {"lr_schedule": "linear"},
    {"max_grad_norm": 1e-3},
    {"head_dropout": 0.5},
    {"weight_decay_scope": "matrices"},
    {"sampler": "python"},
    {"group_by_length": True},
])
def test_each_non_stock_setting_breaks_the_agreement(change, one_thread):
    """The equivalence above is not vacuous: flipping any one stock setting moves the losses."""
    seed = 11
    rows = random_rows(seed, 10)
    tcfg = TrainConfig(**{**STOCK_SETTINGS, **change}, max_steps=STEPS, batch_size=4, lr=3e-2, weight_decay=0.5,
                       seed=seed)  # a large decay, so that decaying the head's bias or not shows
    ours, encoder, head, virtual, pooling = build_pair("tiny-bert", "lora", seed, tcfg.head_dropout)
    torch.manual_seed(seed + 1)
    ours_out = ours_losses(ours, rows, tcfg)
    torch.manual_seed(seed + 1)
    stock_out = stock_losses(encoder, head, virtual, pooling, rows, tcfg)
    assert ours_out != pytest.approx(stock_out, abs=2e-5)


def test_torch_sampler_is_dataloaders_order():
    """Whole epochs, as a training loop iterates them (full and partial last batches)."""
    n, seed = random.randrange(5, 40), random.randrange(10**6)
    epochs = torch_epochs(n, seed)
    for batch_size in (n, 3, 4):
        loader = torch.utils.data.DataLoader(range(n), batch_size=batch_size, shuffle=True,
                                             generator=torch.Generator().manual_seed(seed))
        epochs = torch_epochs(n, seed)
        for _ in range(3):
            assert [i for batch in loader for i in batch.tolist()] == next(epochs)


def test_lr_schedules():
    steps, warmup = 100, 0.1
    linear = [lr_multiplier(s, steps, warmup, "linear") for s in range(steps)]
    constant = [lr_multiplier(s, steps, warmup, "constant") for s in range(steps)]
    cosine = [lr_multiplier(s, steps, warmup, "cosine") for s in range(steps)]
    assert linear[:10] == constant[:10] == cosine[:10] == [(s + 1) / 11 for s in range(10)]
    assert constant[10:] == [1.0] * 90
    assert linear[10] == cosine[10] == 1.0 and linear[55] == pytest.approx(0.5) and cosine[55] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(linear[10:], linear[11:], strict=False))
    assert cosine[30] > linear[30] and cosine[80] < linear[80]  # cosine stays high longer, then falls faster


def test_stock_settings_are_training_flags():
    """`--stock` sets training options that the command line can override one by one."""
    from sptbench.core import run_schema as schema
    from sptbench.training import loop as train

    assert set(train.STOCK_SETTINGS) <= set(schema.TRAIN_FLAGS)


def test_peft_vocab_init_draws_what_peft_draws():
    """`init: peft_vocab`: with the same seed, the starting prompt is peft's SAMPLE_VOCAB prompt (the same random
    stream, so a stock peft loop and sptbench start alike); `vocab` draws another."""
    from peft import PromptTuningConfig, PromptTuningInit, TaskType
    from peft.tuners.prompt_tuning.model import PromptEmbedding

    from sptbench.methods.prompt_tuning import initial_prompt

    seed = random.randrange(10**6)
    words = nn.Embedding(300, 16)
    config = PromptTuningConfig(task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=7, token_dim=16,
                                num_transformer_submodules=1, prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB)
    torch.manual_seed(seed)
    theirs = PromptEmbedding(config, words).embedding.weight.detach()
    after_theirs = torch.rand(3)
    torch.manual_seed(seed)
    ours = initial_prompt(words, 7, "peft_vocab")
    assert torch.equal(ours, theirs) and torch.equal(torch.rand(3), after_theirs)  # the stream goes on alike
    torch.manual_seed(seed)
    assert not torch.equal(initial_prompt(words, 7, "vocab"), theirs)


def test_prompt_init_draws_prompts_at_the_scale_the_model_sees_its_tokens():
    """Gemma's embedding multiplies by sqrt(hidden) in its forward: `vocab` prompts are drawn through it (the tokens'
    scale) and `random` noise is scaled alike; a plain nn.Embedding's rows are taken as stored."""
    from transformers.models.gemma3.modeling_gemma3 import Gemma3TextScaledWordEmbedding

    from sptbench.methods.prompt_tuning import initial_prompt

    seed = random.randrange(10**6)
    scaled = Gemma3TextScaledWordEmbedding(300, 16, 0, embed_scale=4.0)
    plain = nn.Embedding(300, 16)
    plain.weight.data.copy_(scaled.weight.data)
    draws = {}
    for name, words in (("scaled", scaled), ("plain", plain)):
        for init in ("vocab", "random"):
            torch.manual_seed(seed)
            draws[name, init] = initial_prompt(words, 7, init)
    torch.manual_seed(seed)
    assert torch.equal(draws["plain", "vocab"], plain.weight[torch.randint(0, 300, (7,))].detach())
    for init in ("vocab", "random"):
        torch.testing.assert_close(draws["scaled", init], 4.0 * draws["plain", init])


def test_peft_vocab_is_a_config_choice():
    from sptbench.methods.registry import build_config, get_method

    assert build_config(get_method("prompt_tuning"), {"init": "peft_vocab"}).init == "peft_vocab"


def _tiny_classifier(seed: int):
    torch.manual_seed(seed)
    model, _, _ = load_backbone("tiny-bert", 2)
    model.freeze_backbone()
    return model


def test_evaluate_records_dev_loss_and_gold_probability():
    """`evaluate` adds the mean cross-entropy and the mean probability of the gold label, computed here by hand from
    the model's logits on the same (unsorted, unbatched) rows."""
    from sptbench.training.loop import evaluate

    seed = random.randrange(10**6)
    model, rows = _tiny_classifier(seed), random_rows(seed, 23)
    got = evaluate(model, rows, load_spec("sst2"), batch_size=5)
    losses, probs = [], []
    model.eval()
    with torch.no_grad():
        for r in rows:
            logits = model(torch.tensor([r["input_ids"]]), torch.ones(1, len(r["input_ids"]), dtype=torch.long)).logits
            losses.append(float(nn.functional.cross_entropy(logits, torch.tensor([r["label"]]))))
            probs.append(float(logits.softmax(-1)[0, r["label"]]))
    assert got["loss"] == pytest.approx(sum(losses) / len(losses), abs=2e-6)
    assert got["gold_prob"] == pytest.approx(sum(probs) / len(probs), abs=2e-6)
    assert 0 < got["gold_prob"] < 1 and got["score"] == got["accuracy"]


@pytest.mark.parametrize("rule, expected", [("first", 2), ("dev_loss", 4)])
def test_checkpoint_ties_on_the_dev_score_go_to_the_rule(monkeypatch, rule, expected):
    """Four evaluations: the best dev score (0.75) is reached at steps 2 and 4; `first` keeps step 2, `dev_loss`
    the one with the lower dev loss (step 4). The dev results are scripted so the right answer is known."""
    import sptbench.training.loop as loop

    script = iter([{"score": 0.5, "loss": 0.9}, {"score": 0.75, "loss": 0.6}, {"score": 0.5, "loss": 0.2},
                   {"score": 0.75, "loss": 0.4}])
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: dict(next(script)))
    model, rows = _tiny_classifier(0), random_rows(1, 8)
    tcfg = dataclasses.replace(TrainConfig(), max_steps=4, eval_every=1, batch_size=4, checkpoint_tie_break=rule)
    result = train(model, rows, rows, load_spec("sst2"), tcfg, params=[p for p in model.parameters()
                                                                     if p.requires_grad], progress=False)
    assert result.best_step == expected and result.best_dev["loss"] == {2: 0.6, 4: 0.4}[expected]
