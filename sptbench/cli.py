"""The `sptbench` command line. User errors print one line (no traceback) and exit 2."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

import yaml

from sptbench.errors import SptbenchError, unknown_choice


def _parse_sets(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SptbenchError(f"--set expects key=value, got '{pair}'")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _load_config_file(path: str | None) -> dict:
    """A run config YAML: any `run` option by its long name, plus `set:` (method) and `train:` mappings."""
    if not path:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise SptbenchError(f"cannot read config file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise SptbenchError(f"{where}: malformed YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise SptbenchError(f"{path}: a run config must be a mapping")
    return data


TRAIN_FLAGS = ("max_steps", "lr", "batch_size", "eval_every", "patience", "weight_decay", "warmup_ratio")
RUN_KEYS = {
    "method",
    "task",
    "seed",
    "shots",
    "train_size",
    "split_source",
    "model",
    "pooling",
    "head",
    "prompt_loss",
    "template",
    "data_dir",
    "results_dir",
    "device",
    "dtype",
    "save_dir",
    "set",
    "train",
}


def cmd_run(args) -> int:
    from sptbench.runner import RunSpec, run

    file_cfg = _load_config_file(args.config)
    unknown = set(file_cfg) - RUN_KEYS
    if unknown:
        raise unknown_choice(f"key in {args.config}", sorted(unknown)[0], RUN_KEYS)

    def pick(name, default=None):
        value = getattr(args, name, None)
        return value if value is not None else file_cfg.get(name, default)

    train_overrides = dict(file_cfg.get("train") or {})
    train_overrides.update({k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None})
    method_overrides = dict(file_cfg.get("set") or {})
    method_overrides.update(_parse_sets(args.set))
    if pick("method") is None or pick("task") is None:
        raise SptbenchError("run needs --method and --task (or a --config file that sets them)")
    spec = RunSpec(
        method=pick("method"),
        task=pick("task"),
        seed=int(pick("seed", 13)),
        shots=pick("shots"),
        train_size=pick("train_size"),
        split_source=pick("split_source", "sample"),
        model=pick("model", "minilm-l6"),
        pooling=pick("pooling"),
        head=pick("head", "linear"),
        prompt_loss=pick("prompt_loss"),
        template=pick("template"),
        data_dir=pick("data_dir"),
        results_dir=pick("results_dir", "results"),
        method_overrides=method_overrides,
        train_overrides=train_overrides,
        device=pick("device", "auto"),
        dtype=pick("dtype", "fp32"),
        save_dir=pick("save_dir"),
        progress=not args.quiet,
    )
    outcome = run(spec)
    from sptbench.train import world

    if world()[0] != 0:  # a data-parallel launch: rank 0 wrote the record and reports it
        return 0
    rec = outcome.record
    dev, test = rec["metrics"]["dev"], rec["metrics"]["test"]
    print(
        f"{rec['method']['name']} on {rec['task']['name']} (seed {rec['protocol']['seed']}): "
        f"dev {dev.get('score', float('nan')):.4f}  test {' '.join(f'{k} {v:.4f}' for k, v in test.items())}  "
        f"trainable {rec['params']['trainable']:,} (+head {rec['params']['trainable_with_head']:,})  "
        f"-> {outcome.table} [{rec['run_id']}]"
    )
    return 0


def cmd_list(args) -> int:
    if args.what == "methods":
        from sptbench.registry import load_methods

        for name, m in sorted(load_methods().items()):
            print(f"{name:16} {m.description}")
    elif args.what == "tasks":
        from sptbench.tasks import list_tasks, load_spec

        for name in list_tasks():
            spec = load_spec(name)
            print(f"{name:8} v{spec.version}  {'+'.join(spec.text_columns):22} {', '.join(spec.labels)}")
    else:
        from sptbench.backbones import BACKBONES

        for name in BACKBONES:
            print(name)
        print("(or any hub id / local folder of a BERT, RoBERTa, DeBERTa-v2 or GPT-2 model)")
    return 0


def cmd_params(args) -> int:
    from tabulate import tabulate

    from sptbench.backbones import load_backbone
    from sptbench.registry import build_config, get_method, load_methods
    from sptbench.tasks import load_spec
    from sptbench.templates import prompt_setup

    names = sorted(load_methods()) if args.method == "all" else [args.method]
    setup, num_labels = None, args.num_labels
    if args.head == "prompt" or args.task:  # the prompt head reads the task's label words (default: sst2's)
        spec = load_spec(args.task or "sst2")
        setup = prompt_setup(spec, args.head or "linear", args.prompt_loss, args.template)
        num_labels = spec.num_labels
    rows, skipped = [], []
    for name in names:
        method = get_method(name)
        try:
            method.check_head(args.head or "linear")
        except SptbenchError as e:
            if args.method != "all":
                raise
            skipped.append(f"{name}: {e}")
            continue
        model, _, _ = load_backbone(args.model, num_labels, prompt=setup)
        model.freeze_backbone()
        method.apply(model, build_config(method, _parse_sets(args.set)))
        c = model.count_parameters()
        rows.append(
            [
                name,
                c["trainable"],
                c["trainable_with_head"],
                c["stored"],
                c["stored_bytes"],
                f"{100 * c['trainable'] / c['backbone']:.3f}%",
            ]
        )
    print(
        tabulate(
            rows,
            headers=["method", "trainable", "with head", "stored", "stored bytes", "% of backbone"],
            tablefmt="github",
            intfmt=",",
        )
    )
    for line in skipped:
        print(f"skipped {line}")
    return 0


def cmd_plot(args) -> int:
    from sptbench.plots import plot_gates
    from sptbench.records import read_records

    records = [r for r in read_records(args.paths) if r.get("extra", {}).get("alpha")]
    if not records:
        raise SptbenchError("no records with learned gates (spt / spt_darts) in the given paths")
    plot_gates(records, args.out, by=args.by)
    print(f"wrote {args.out} ({len(records)} runs)")
    return 0


def _head_arguments(p: argparse.ArgumentParser) -> None:
    """--head, --prompt-loss, --template (docs/heads.md)."""
    p.add_argument("--head", choices=["linear", "prompt"],
                   help="linear: a fresh linear layer on the pooled tokens (default); prompt: the pretrained LM head, "
                   "frozen, read at the task template's mask over its label words (needs an LM checkpoint)")
    p.add_argument("--prompt-loss", dest="prompt_loss", choices=["label_words", "vocab"],
                   help="prompt head training loss: cross-entropy over the label words (default, LM-BFF) or over the "
                   "whole vocabulary with the label word as target (LPT)")
    p.add_argument("--template", help="prompt head: the task's template by name (default: its first)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sptbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="train and evaluate one method on one task; append a record")
    p.add_argument("--method")
    p.add_argument("--task")
    p.add_argument("--shots", type=int, help="K examples per class for train and another K for dev (LM-BFF)")
    p.add_argument("--train-size", type=int, help="N training examples sampled from the pool (dev from the rest)")
    p.add_argument("--split-source", choices=["sample", "lm-bff"], help="lm-bff: the published 16-shot splits")
    p.add_argument("--seed", type=int)
    p.add_argument("--model", help="minilm-l6, tiny-bert, tiny-roberta, tiny-deberta, tiny-gpt2, a hub id or a folder")
    p.add_argument("--pooling", choices=["cls", "mean", "last"], help="default: from the backbone")
    _head_arguments(p)
    p.add_argument(
        "--data-dir",
        default=os.environ.get("SPTBENCH_DATA_DIR"),
        help="local mirror folder (default: $SPTBENCH_DATA_DIR, else the Hugging Face hub)",
    )
    p.add_argument("--results-dir", help="root of the result tables (default: results)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="method config override (repeatable)")
    p.add_argument("--config", help="YAML file with any of these options")
    p.add_argument("--max-steps", dest="max_steps", type=int)
    p.add_argument("--lr", type=float, help="learning rate (default: the method's)")
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--eval-every", dest="eval_every", type=int)
    p.add_argument("--patience", type=int, help="early stopping after this many evaluations without improvement")
    p.add_argument("--weight-decay", dest="weight_decay", type=float)
    p.add_argument("--warmup-ratio", dest="warmup_ratio", type=float)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", choices=["fp32", "bf16"])
    p.add_argument("--save-dir", help="also write the trained parameters + head (safetensors) here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("list", help="list methods, tasks or backbones")
    p.add_argument("what", choices=["methods", "tasks", "backbones"])
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("params", help="parameter counts of a method (or 'all') on a backbone")
    p.add_argument("--method", required=True)
    p.add_argument("--model", default="minilm-l6")
    p.add_argument("--num-labels", type=int, default=2)
    p.add_argument("--task", help="the task whose labels (and, with --head prompt, label words) to use")
    _head_arguments(p)
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("plot", help="plots from recorded runs")
    p.add_argument("what", choices=["gates"])
    p.add_argument("paths", nargs="+", help="result tables or folders")
    p.add_argument("--out", default="gates.png")
    p.add_argument("--by", choices=["run", "task"], default="run",
                   help="one row per run, or per task and method (α averaged over seeds, k/n seeds chosen)")
    p.set_defaults(func=cmd_plot)

    for module in ("sptbench.cli_results", "sptbench.bench", "sptbench.sweep"):
        try:
            importlib.import_module(module).register(sub)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SptbenchError as e:
        print(f"sptbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sptbench: interrupted (no record written)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
