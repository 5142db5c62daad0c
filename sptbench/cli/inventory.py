"""`sptbench list` and `sptbench params`: what can be named, and what a method trains."""

from __future__ import annotations

import argparse

from sptbench.cli.common import head_arguments
from sptbench.core.argtypes import nonempty, parse_sets, positive_int
from sptbench.core.errors import SptbenchError
from sptbench.data.specs import add_tasks_dir_argument

ORDER = 20  # place in `sptbench --help`


def cmd_list(args) -> int:
    if args.what == "methods":
        from sptbench.methods.registry import load_methods

        for name, m in sorted(load_methods().items()):
            print(f"{name:16} {m.description}")
            if args.verbose:
                _print_method_fields(m)
    elif args.what == "tasks":
        from sptbench.data.specs import load_spec, packaged_tasks, spec_files

        packaged = set(packaged_tasks())  # source: packaged, user (a --tasks-dir / $SPTBENCH_TASKS_PATH spec), or
        for name, (path, user) in sorted(spec_files().items()):  # override (a user spec shadowing a packaged one)
            spec = load_spec(name)
            source = ("override" if name in packaged else "user") if user else "packaged"
            where = f"  [{path}]" if user else ""
            columns, labels = "+".join(spec.text_columns), ", ".join(spec.labels)
            print(f"{name:8} v{spec.version}  {source:8}  {columns:22} {labels}{where}")
    else:
        from sptbench.models.backbones import ARCHITECTURES, BACKBONES

        for name in BACKBONES:
            print(name)
        *first, last = ARCHITECTURES  # the discovered families (sptbench/families/<arch>.py), in listing order
        print(f"(or any hub id / local folder of a {', '.join(first) + ' or ' if first else ''}{last} model)")
    return 0


def _print_method_fields(method) -> None:
    """`list methods -v`: default lr, heads, and each config field (the --set keys) with type, default and help."""
    from sptbench.methods.registry import config_fields

    print(f"{'':16} default lr {method.default_lr:g}; heads: {', '.join(method.heads)}; trains: {method.trains}")
    fields = config_fields(method.config_cls)
    if not fields:
        print(f"{'':16} (no options)")
    for f in fields:
        default = "none" if f.default is None else f.default
        print(f"{'':16} --set {f.name}  ({f.type}, default {default}): {f.help}")


def cmd_params(args) -> int:
    from tabulate import tabulate

    from sptbench.data.specs import load_spec
    from sptbench.data.templates import prompt_setup
    from sptbench.methods.registry import build_config, check_config_layers, get_method, load_methods
    from sptbench.run.assemble import build_classifier

    if args.method == "all" and args.set:
        raise SptbenchError("--set overrides one method's config: name the method (--method M), not all")
    if (args.template or args.prompt_loss) and args.head != "prompt":
        raise SptbenchError("--template and --prompt-loss apply to the prompt head only (--head prompt)")
    names = sorted(load_methods()) if args.method == "all" else [args.method]
    setup, num_labels = None, args.num_labels
    if args.head == "prompt" or args.task:  # the prompt head reads the task's label words (default: sst2's)
        spec = load_spec(args.task or "sst2")
        from sptbench.models.backbones import backbone_is_causal

        setup = prompt_setup(spec, args.head or "linear", args.prompt_loss, args.template,
                             causal=args.head == "prompt" and backbone_is_causal(args.model))
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
        cfg = build_config(method, parse_sets(args.set))
        check_config_layers(cfg, args.model, num_labels if setup is None else None)  # before weights, as `run`
        model, _, _ = build_classifier(method, cfg, args.model, num_labels, prompt=setup)
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


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `sptbench list` and `sptbench params`."""
    p = subparsers.add_parser("list", help="list methods, tasks or backbones")
    p.add_argument("what", choices=["methods", "tasks", "backbones"], help="what to list")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="methods: also each method's options (--set keys) with type, default and help")
    add_tasks_dir_argument(p)
    p.set_defaults(func=cmd_list)

    p = subparsers.add_parser("params", help="parameter counts of a method (or 'all') on a backbone")
    p.add_argument("--method", required=True, help="a method name, or 'all'")
    p.add_argument("--model", default="minilm-l6", type=nonempty, help="backbone (as for run --model)")
    p.add_argument("--num-labels", type=positive_int, default=2, help="classes of the head")
    p.add_argument("--task", help="the task whose labels (and, with --head prompt, label words) to use")
    head_arguments(p)
    add_tasks_dir_argument(p)
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="method config override (one method); the keys: sptbench list methods -v")
    p.set_defaults(func=cmd_params)
