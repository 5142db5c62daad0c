"""`sptbench run`: one run from flags and/or a --config file (its options declared once: core/run_schema.py)."""

from __future__ import annotations

import argparse
import dataclasses
import textwrap

from sptbench.core import safe_yaml
from sptbench.core.argtypes import nonempty, parse_sets, positive_int
from sptbench.core.errors import SptbenchError, unknown_choice
from sptbench.data.specs import add_tasks_dir_argument

ORDER = 10  # place in `sptbench --help`


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
        from sptbench.data.locate import env_data_path

        values["data_dir"] = env_data_path()
    train_overrides = {}
    if args.stock:
        from sptbench.training.loop import STOCK_SETTINGS

        train_overrides.update(STOCK_SETTINGS)
    train_overrides.update(_config_mapping(where, "train", file_cfg.get("train")))
    train_overrides.update({f.name: getattr(args, f.name) for f in flag_fields(TrainConfig)
                            if getattr(args, f.name) is not None})
    method_overrides = _config_mapping(where, "set", file_cfg.get("set"))
    method_overrides.update(parse_sets(args.set))
    if values["method"] is None or values["task"] is None:
        raise SptbenchError("run needs --method and --task (or a --config file that sets them)")
    spec = RunSpec(**values, method_overrides=method_overrides, train_overrides=train_overrides,
                   progress=not args.quiet)
    from sptbench.run.checks import check_run

    check_run(spec)  # a bad option is one line before torch, transformers and peft load (seconds each)
    from sptbench.run.runner import run

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


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `sptbench run`."""
    p = subparsers.add_parser(
        "run",
        help="train and evaluate one method on one task; append a record",
        description="Train and evaluate one method on one task and append its record to\n"
        "<results-dir>/v1/<backbone>/<setting>.yaml. Everything is checked before training starts.",
        epilog=_config_help(),
    )
    from sptbench.core.run_schema import RunSpec, TrainConfig

    _add_schema_arguments(p, RunSpec)
    add_tasks_dir_argument(p)
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="method config override (repeatable); a list field takes 9,10 or '[9, 10]' (quote brackets "
                   "in a shell)")
    p.add_argument("--config", type=nonempty, help="YAML file of run options (format below)")
    _add_schema_arguments(p, TrainConfig)
    p.add_argument("--stock", action="store_true",
                   help="the settings of a plain PyTorch loop (scripts/stock_loop.py): constant lr, no warmup, no "
                        "clipping, no head dropout, decay on all parameters, torch's shuffle; flags still override")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run, run_actions=p._actions)
