"""`sptbench bench`: train/eval throughput against the frozen-backbone floor (run/bench.py measures)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sptbench.core.argtypes import nonempty, nonneg_int, parse_sets, positive_int
from sptbench.core.errors import SptbenchError
from sptbench.core.run_schema import DEVICES, DTYPES
from sptbench.run.bench import Shape, bench, format_table

ORDER = 70  # place in `sptbench --help`


def cmd_bench(args: argparse.Namespace) -> int:
    import sys

    import yaml

    from sptbench.methods.registry import load_methods
    from sptbench.records.io import check_output, check_writable_dir, write_text_atomic

    if args.out:  # before any measuring: the output never replaces a results table or a saved run, and can be written
        check_output(args.out, "--out")
        check_writable_dir(Path(args.out).parent)
    methods = list(load_methods()) if args.method == "all" else [args.method]
    overrides = parse_sets(args.set)
    if overrides and len(methods) > 1:
        raise SptbenchError("--set applies to one method; use it with --method NAME, not 'all'")
    shape = Shape(batch=args.batch, seq_len=args.seq_len, steps=args.steps, warmup=args.warmup)
    records = bench(
        methods,
        args.model,
        shape,
        device=args.device,
        dtype=args.dtype,
        overrides=overrides,
        frozen_layers=args.frozen_layers,
        compile=args.compile,
        log=lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True),
        head=args.head,
        prompt_loss=args.prompt_loss,
    )
    print(format_table(records))
    if args.out:
        try:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SptbenchError(f"cannot create the folder of {args.out}: {err.strerror or err}") from None
        write_text_atomic(args.out, yaml.safe_dump_all(records, sort_keys=False, explicit_start=True, width=120))
        print(f"wrote {args.out} ({len(records)} record(s))")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `sptbench bench` to the main parser."""
    from sptbench.data.specs import add_tasks_dir_argument

    p = subparsers.add_parser("bench", help="train/eval throughput of a method vs the frozen-backbone floor")
    p.add_argument("--method", required=True, help="a method name, or 'all'")
    p.add_argument("--model", default="minilm-l6", type=nonempty,
                   help="backbone (minilm-l6, tiny-*, roberta-large-random, ...)")
    p.add_argument("--batch", type=positive_int, default=16, help="examples per step")
    p.add_argument("--seq-len", dest="seq_len", type=positive_int, default=128, help="tokens per example (all real)")
    p.add_argument("--steps", type=positive_int, default=10, help="measured steps (the median is reported)")
    p.add_argument("--warmup", type=nonneg_int, default=3, help="steps run first and not measured")
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto: CUDA when there is one")
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help="bf16: autocast")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="method config override (one method)")
    p.add_argument("--frozen-layers", dest="frozen_layers", choices=["dropout", "eval", "cache"], default="dropout",
                   help="layers below the first trainable one: as in training (dropout), without dropout (eval), "
                   "or computed once per example and reused (cache: few-shot steady state)")
    p.add_argument("--compile", action="store_true",
                   help="run the floor and every method through torch.compile (compilation happens in the warm-up)")
    p.add_argument("--head", choices=["linear", "prompt"], default="linear",
                   help="prompt: the frozen LM head at a mask token over SST-2's label words (docs/heads.md)")
    p.add_argument("--prompt-loss", dest="prompt_loss", choices=["label_words", "vocab"],
                   help="with --head prompt: the training loss (default label_words)")
    p.add_argument("--out", type=nonempty, help="also write the records (a YAML stream, one document per method) here")
    add_tasks_dir_argument(p)
    p.set_defaults(func=cmd_bench)
