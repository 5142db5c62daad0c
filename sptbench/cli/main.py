"""The `sptbench` command line. User errors print one line (no traceback) and exit 2."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import textwrap

from sptbench.core import safe_yaml
from sptbench.core.argtypes import Parser, nonempty, positive_int
from sptbench.core.errors import SptbenchError, unknown_choice
from sptbench.data.tasks import add_tasks_dir_argument, apply_tasks_dirs


def parse_sets(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SptbenchError(f"--set expects key=value, got '{pair}'")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _load_config_file(path: str | None) -> dict:
    """A run config YAML: `run` options by their long name, plus `set:` (method) and `train:` mappings."""
    if path is None:
        return {}
    data = safe_yaml.load_file(path, "run config")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SptbenchError(f"{path}: a run config must be a mapping of option -> value")
    return data


def _config_help() -> str:
    """The `--config FILE` format, from the run schema."""
    from sptbench.core.run_schema import RunSpec, TrainConfig, flag_fields

    run_keys = ", ".join(f.name for f in flag_fields(RunSpec))
    train_keys = ", ".join(f.name for f in dataclasses.fields(TrainConfig) if f.name != "seed")
    return textwrap.dedent(f"""\
        config file (--config FILE): a YAML mapping of run options by their long name, '_' for '-'
          ({run_keys}),
          plus two mappings:
            set:   method options, as --set KEY=VALUE
            train: training options ({train_keys})
          Training options go under train: only. Options given on the command line win over the file.
          Example:
            method: lora
            task: sst2
            shots: 16
            seed: 13
            set: {{r: 8}}
            train: {{max_steps: 200, lr: 5.0e-4}}
        """)


def _add_schema_arguments(p: argparse.ArgumentParser, cls: type) -> None:
    """One flag per schema field that has one (sptbench/core/run_schema.py): type, choices, help and default from there.
    The parser's own default stays None, so that a --config file can fill in what the command line does not say."""
    from sptbench.core.run_schema import default_of, flag_fields

    for f in flag_fields(cls):
        meta, default = f.metadata, default_of(f)
        text = meta["help"]
        if default not in (None, False, {}) and "default" not in text:
            text += f" (default: {default})"
        flag = f"--{f.name.replace('_', '-')}"
        if meta["boolean"] and default:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, help=text)
        elif meta["boolean"]:
            p.add_argument(flag, dest=f.name, action="store_true", default=None, help=text)
        else:
            p.add_argument(flag, dest=f.name, type=meta["type"], choices=meta["choices"], help=text)


def _config_value(where: str, key: str, value, action: argparse.Action):
    """A config-file value checked as the command line checks the same option (type, choices, non-empty)."""
    if value is None:
        return None
    if isinstance(action, argparse._StoreTrueAction):
        ok = isinstance(value, bool)
        want = "true or false"
    elif action.type is int or action.type in (positive_int,):
        ok = isinstance(value, int) and not isinstance(value, bool)
        want = "an integer"
    elif action.type is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        want = "a number"
    else:
        ok = isinstance(value, str) and bool(value.strip())
        want = "a non-empty string"
    if not ok:
        raise SptbenchError(f"{where}: '{key}' must be {want}, got {type(value).__name__} {value!r}")
    if action.choices is not None and value not in action.choices:
        raise unknown_choice(f"value for '{key}' in {where}", str(value), [str(c) for c in action.choices])
    return value


def _config_mapping(where: str, key: str, value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise SptbenchError(f"{where}: '{key}' must be a mapping of option -> value, got {type(value).__name__}")
    return dict(value)


def cmd_run(args) -> int:
    from sptbench.core.run_schema import RunSpec, TrainConfig, default_of, flag_fields
    from sptbench.run.runner import run

    run_fields = flag_fields(RunSpec)
    actions = {a.dest: a for a in args.run_actions}
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    file_cfg = _load_config_file(args.config)
    where = args.config
    for key in file_cfg:
        if key in train_keys:
            raise SptbenchError(f"{where}: training option '{key}' goes under 'train:' (train: {{{key}: ...}})")
        if key not in {f.name for f in run_fields} | {"set", "train"}:
            raise unknown_choice(f"key in {where}", str(key), [*(f.name for f in run_fields), "set", "train"])
    checked = {k: _config_value(where, k, v, actions[k]) for k, v in file_cfg.items() if k not in ("set", "train")}

    def pick(f: dataclasses.Field):
        """The command line, else the config file, else the schema's default."""
        value = getattr(args, f.name, None)
        if value is not None:
            return value
        return checked[f.name] if checked.get(f.name) is not None else default_of(f)

    values = {f.name: pick(f) for f in run_fields}
    if values["data_dir"] is None:
        values["data_dir"] = os.environ.get("SPTBENCH_DATA_DIR") or None
    from sptbench.training.loop import STOCK_SETTINGS

    train_overrides = dict(STOCK_SETTINGS) if args.stock else {}
    train_overrides.update(_config_mapping(where, "train", file_cfg.get("train")))
    train_overrides.update({f.name: getattr(args, f.name) for f in flag_fields(TrainConfig)
                            if getattr(args, f.name) is not None})
    method_overrides = _config_mapping(where, "set", file_cfg.get("set"))
    method_overrides.update(parse_sets(args.set))
    if values["method"] is None or values["task"] is None:
        raise SptbenchError("run needs --method and --task (or a --config file that sets them)")
    spec = RunSpec(**values, method_overrides=method_overrides, train_overrides=train_overrides,
                   progress=not args.quiet)
    outcome = run(spec)
    from sptbench.training.loop import world

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
        from sptbench.methods.registry import load_methods

        for name, m in sorted(load_methods().items()):
            print(f"{name:16} {m.description}")
            if args.verbose:
                _print_method_fields(m)
    elif args.what == "tasks":
        from sptbench.data.tasks import load_spec, packaged_tasks, spec_files

        packaged = set(packaged_tasks())  # source: packaged, user (a --tasks-dir / $SPTBENCH_TASKS_PATH spec), or
        for name, (path, user) in sorted(spec_files().items()):  # override (a user spec shadowing a packaged one)
            spec = load_spec(name)
            source = ("override" if name in packaged else "user") if user else "packaged"
            where = f"  [{path}]" if user else ""
            columns, labels = "+".join(spec.text_columns), ", ".join(spec.labels)
            print(f"{name:8} v{spec.version}  {source:8}  {columns:22} {labels}{where}")
    else:
        from sptbench.models.backbones import BACKBONES

        for name in BACKBONES:
            print(name)
        print("(or any hub id / local folder of a BERT, RoBERTa, DeBERTa-v2, MPNet or GPT-2 model)")
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

    from sptbench.data.tasks import load_spec
    from sptbench.data.templates import prompt_setup
    from sptbench.methods.registry import build_config, check_config_layers, get_method, load_methods
    from sptbench.run.assemble import build_classifier

    if args.method == "all" and args.set:
        raise SptbenchError("--set overrides one method's config: name the method (--method M), not all")
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
        cfg = build_config(method, parse_sets(args.set))
        check_config_layers(cfg, args.model)  # before loading weights, as `run` does
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


def cmd_plot(args) -> int:
    from sptbench.records.io import read_records, require_valid
    from sptbench.reports.plots import plot_gates, plot_layers

    if args.what == "layers" and args.by is not None:
        raise SptbenchError("--by applies to `plot gates` only")
    out = args.out or f"{args.what}.png"
    records = require_valid(read_records(args.paths))
    if args.what == "layers":
        plot_layers(records, out)
        print(f"wrote {out}")
        return 0
    records = [r for r in records if (r.get("extra") or {}).get("alpha")]
    if not records:
        raise SptbenchError("no records with learned gates (spt / spt_darts) in the given paths")
    plot_gates(records, out, by=args.by or "run")
    print(f"wrote {out} ({len(records)} runs)")
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
    parser = Parser(prog="sptbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser(
        "run",
        help="train and evaluate one method on one task; append a record",
        description="Train and evaluate one method on one task and append its record to\n"
        "<results-dir>/v1/<backbone>/<setting>.yaml. Everything is checked before training starts.",
        epilog=_config_help(),
    )
    from sptbench.core.run_schema import RunSpec, TrainConfig

    _add_schema_arguments(p, RunSpec)
    add_tasks_dir_argument(p)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="method config override (repeatable)")
    p.add_argument("--config", type=nonempty, help="YAML file of run options (format below)")
    _add_schema_arguments(p, TrainConfig)
    p.add_argument("--stock", action="store_true",
                   help="the settings of a plain PyTorch loop (scripts/stock_loop.py): constant lr, no warmup, no "
                        "clipping, no head dropout, decay on all parameters, torch's shuffle; flags still override")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run, run_actions=p._actions)

    p = sub.add_parser("list", help="list methods, tasks or backbones")
    p.add_argument("what", choices=["methods", "tasks", "backbones"], help="what to list")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="methods: also each method's options (--set keys) with type, default and help")
    add_tasks_dir_argument(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("params", help="parameter counts of a method (or 'all') on a backbone")
    p.add_argument("--method", required=True, help="a method name, or 'all'")
    p.add_argument("--model", default="minilm-l6", type=nonempty, help="backbone (as for run --model)")
    p.add_argument("--num-labels", type=positive_int, default=2, help="classes of the head")
    p.add_argument("--task", help="the task whose labels (and, with --head prompt, label words) to use")
    _head_arguments(p)
    add_tasks_dir_argument(p)
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="method config override (one method); the keys: sptbench list methods -v")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("plot", help="plots from recorded runs")
    p.add_argument("what", choices=["gates", "layers"],
                   help="gates: SPT's learned gate values per layer; layers: LPT's test score against its prompt "
                        "layer (a layer grid), SPT's and SPT-DARTS's chosen layers marked")
    p.add_argument("paths", nargs="+", type=nonempty, help="result tables or folders")
    p.add_argument("--out", type=nonempty,
                   help="image file; its suffix picks the format (png, pdf, svg, ...) (default: gates.png or "
                   "layers.png)")
    p.add_argument("--by", choices=["run", "task"],
                   help="gates: one row per run (default), or per task and method (α averaged over seeds, k/n seeds "
                   "chosen)")
    p.set_defaults(func=cmd_plot)

    for module in ("sptbench.cli.results", "sptbench.run.bench", "sptbench.sweep.plan"):
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error, already printed as one line (2)
        return e.code if isinstance(e.code, int) else 2
    try:
        apply_tasks_dirs(getattr(args, "tasks_dir", None))
        return args.func(args)
    except SptbenchError as e:
        print(f"sptbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sptbench: interrupted (no record written)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `sptbench list tasks | head`: the reader left; no traceback, and none at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
