"""The results subcommands: `table`, `compare`, `check`, `show` and `validate` (registered on the main `sptbench`
parser)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sptbench.core.argtypes import nonempty, nonneg_float, nonneg_int, positive_float, positive_int
from sptbench.core.errors import SptbenchError
from sptbench.core.run_schema import LOCAL_RESULTS_DIR, SPLIT_SOURCES
from sptbench.records.io import (
    check_output,
    dump_record,
    find_record,
    read_records,
    table_files,
    validate_paths,
    write_text_atomic,
)
from sptbench.records.schema import TABLE_DIR
from sptbench.reports.check import check, format_result
from sptbench.reports.readme import check_readme_block, update_readme_block
from sptbench.reports.tables import FORMATS, build_table, render

ORDER = 40  # place in `sptbench --help`


def _names(values: list[str] | None) -> list[str] | None:
    """Names given as `a b` or `a,b` (or both)."""
    if values is None:
        return None
    return [name for value in values for name in value.split(",") if name]


def _paths(args: argparse.Namespace) -> list[Path]:
    """The table paths given, else `<results-dir>/v1` (which must exist: one line saying what to name instead)."""
    if args.paths:
        return [Path(p) for p in args.paths]
    default = Path(args.results_dir) / TABLE_DIR
    if not default.exists():
        raise SptbenchError(f"no records in {default} (where `run` and `sweep` write by default) yet; name tables or "
                            "folders, e.g. results/v1 for the committed reproduction")
    return [default]


def _of_splits(records: list[dict], args: argparse.Namespace) -> list[dict]:
    """Only the records whose few-shot splits came from `--split-source` and whose seed is one of `--seeds` (either
    unset: no restriction)."""
    source, seeds = args.split_source, None if args.seeds is None else set(args.seeds)
    return [r for r in records if (source is None or r["protocol"]["split_source"] == source)
            and (seeds is None or r["protocol"]["seed"] in seeds)]


def _add_splits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split-source", choices=SPLIT_SOURCES,
                   help="only records whose splits came from here (lm-bff: the published splits; sample: drawn by "
                   "the seed; default: both)")
    p.add_argument("--seeds", nargs="+", type=nonneg_int, metavar="SEED",
                   help="only records of these seeds (default: all), e.g. a table frozen at its first seeds while "
                   "later ones are recorded")


def cmd_table(args: argparse.Namespace) -> int:
    """Render a results table to stdout, a file, or a README block."""
    _check_output(args)
    records = _of_splits(read_records(_paths(args)), args)
    sizes = ties = None
    if args.select_by_dev:  # hyper-parameter grids: per method/task/seed/setting, the config best on dev only
        from sptbench.reports.selection import dev_selection, dev_ties

        ties = dev_ties(records)
        records, sizes = dev_selection(records)
    table = build_table(
        records,
        backbone=args.backbone,
        shots=args.shots,
        train_size=args.train_size,
        setting=args.setting,
        tasks=_names(args.tasks),
        methods=_names(args.methods),
        expected_seeds=args.expected_seeds,
        selected=args.select_by_dev,
        grid_sizes=sizes,
        ties=ties,
    )
    text = render(table, args.format)
    if args.format == "csv":  # CSV carries numbers only; the notes still reach the user
        print("\n".join(table.notes), file=sys.stderr)
    _emit(args, text)
    return 0


def _check_output(args: argparse.Namespace) -> None:
    """Before any work: --readme and --block come as a pair, the README has the block, and neither output is a
    results table (one of those read, or any file of run records): output never replaces records."""
    if (args.readme is None) != (args.block is None):
        raise SptbenchError("--readme and --block go together")
    read = {f.resolve() for f in table_files(_paths(args))}
    for flag, target in (("--out", args.out), ("--readme", args.readme)):
        if target is not None and Path(target).resolve() in read:
            raise SptbenchError(f"{flag} {target} is a results table: not overwritten (write to another file)")
        if target is not None:
            check_output(target, flag)
    if args.readme:
        check_readme_block(args.readme, args.block)


def _emit(args: argparse.Namespace, text: str) -> None:
    """Write `text` to --out, into a README block (--readme/--block), or to stdout."""
    if args.out:
        try:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SptbenchError(f"cannot create the folder of {args.out}: {err.strerror or err}") from None
        write_text_atomic(args.out, text)
    if args.readme:
        update_readme_block(args.readme, args.block, text)
    if not args.out and not args.readme:
        print(text, end="")


def _add_output(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--out", type=nonempty, help=f"write the {what} to this file instead of stdout")
    p.add_argument("--readme", type=nonempty, help="README to update in place (with --block)")
    p.add_argument("--block", type=nonempty, help="name in <!-- sptbench:table NAME --> markers")


def cmd_compare(args: argparse.Namespace) -> int:
    """Paired differences of two methods, or of a declared family of pairs, over the (task, seed) cells both sides
    have (sptbench/reports/compare.py, docs/statistics.md)."""
    from sptbench.records.keys import setting_name
    from sptbench.reports.compare import (
        Family,
        compare_family,
        few_pairs_warning,
        load_family,
        parse_side,
        render,
        render_family,
    )

    family = None
    if args.family or args.pair:
        if args.family and args.pair:
            raise SptbenchError("give the comparisons as --family FILE or as --pair A B, not both")
        args.paths = [x for x in (args.a, args.b) if x is not None] + list(args.paths)  # all positionals are paths
        family = load_family(args.family) if args.family else Family(
            "", [(parse_side(a), parse_side(b)) for a, b in args.pair])
    elif args.a is None or args.b is None:
        raise SptbenchError("compare needs two sides (compare A B), --pair A B (repeatable) or --family FILE")
    _check_output(args)
    records = _of_splits(read_records(_paths(args)), args)
    setting = args.setting or (setting_name(args.shots, args.train_size) if args.shots or args.train_size else None)
    if setting is not None:
        records = [r for r in records
                   if setting_name(r["protocol"]["shots"], r["protocol"]["train_size"]) == setting]
    if args.backbone is not None:
        records = [r for r in records if r["backbone"]["id"] == args.backbone]
    pairs = family.pairs if family else [(parse_side(args.a), parse_side(args.b))]
    comps, skipped = compare_family(records, pairs, tasks=_names(args.tasks), select=args.select_by_dev)
    effects = tuple(args.effect or (1.0, 2.0))
    for warning in filter(None, map(few_pairs_warning, comps)):
        print(f"sptbench compare: {warning}", file=sys.stderr)
    _emit(args, render_family(comps, family.name, family.alpha, skipped) if family else render(comps[0], effects))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Compare fresh runs with a reference table; exit 1 on a move outside the band, a missing key or a failed run."""
    result = check(
        read_records(_paths(args)),
        read_records(args.against),
        abs_tol=args.abs_tol,
        std_k=args.std_k,
        hardware_tol=args.hardware_tol,
    )
    print(format_result(result))
    return 0 if result.ok else 1


def cmd_show(args: argparse.Namespace) -> int:
    """Print one record as YAML."""
    print(dump_record(find_record([args.results_dir], args.run_id)), end="")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Print every problem in the tables with file:line; exit 1 if there is any."""
    paths = _paths(args)
    problems = validate_paths(paths)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s)")
        return 1
    n = len(read_records(paths))
    if n == 0:  # a gate on an empty or mistyped folder must not pass
        raise SptbenchError(f"no records in {', '.join(map(str, paths))}")
    print(f"ok: {n} record(s) valid")
    return 0


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", type=nonempty,
                        help="table files or directories (default: <results-dir>/v1)")
    parser.add_argument("--results-dir", default=LOCAL_RESULTS_DIR, type=nonempty,
                        help=f"results root, read when no PATHS are given (default: {LOCAL_RESULTS_DIR}, where `run` "
                        "and `sweep` write by default)")


def _add_table(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("table", help="render a results table (methods x tasks, mean ± std over seeds)")
    _add_common(p)
    p.add_argument("--backbone", help="backbone id (or its directory name under v1/); default: the only one")
    regime = p.add_mutually_exclusive_group()
    regime.add_argument("--shots", type=positive_int, help="the K-shot tables")
    regime.add_argument("--train-size", type=positive_int, help="the N-example tables")
    regime.add_argument("--setting", help="a setting name: 16shot, n1000, full")
    p.add_argument("--tasks", nargs="+", help="columns, in this order (default: all, sorted)")
    p.add_argument("--methods", nargs="+", help="rows, in this order (default: all, sorted)")
    p.add_argument("--expected-seeds", type=positive_int, help="seeds per cell (default: the most any cell has)")
    _add_splits(p)
    p.add_argument("--select-by-dev", action="store_true",
                   help="of several configs per method/task/seed, keep the best on dev (docs/sweeps.md)")
    p.add_argument("--format", choices=FORMATS, default="md", help="md: Markdown; latex: tabular; csv: numbers only")
    _add_output(p, "table")
    p.set_defaults(func=cmd_table)


def _add_compare(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare", help="paired differences of two methods (or a family of pairs): task-blocked interval, "
        "sign-flip p, W/T/L, power",
    )
    p.add_argument("a", nargs="?", help="a method, optionally narrowed by config values: lpt:layer=3")
    p.add_argument("b", nargs="?", help="the other side, as A")
    _add_common(p)
    p.add_argument("--pair", nargs=2, action="append", metavar=("A", "B"),
                   help="a comparison of a declared family (repeatable; p-values Holm-adjusted across the pairs); "
                   "then every positional argument is a results path")
    p.add_argument("--family", type=nonempty,
                   help="a YAML file declaring the family: name, alpha (default 0.05), pairs: [[a, b], ...]")
    p.add_argument("--effect", type=positive_float, nargs="+", metavar="POINTS",
                   help="power planning: the (task, seed) pairs and seeds per task needed to detect these true "
                   "differences with 80%% power, from the SD these records show (default: 1 2)")
    p.add_argument("--tasks", nargs="+", help="only these tasks (default: every task both sides have)")
    regime = p.add_mutually_exclusive_group()
    regime.add_argument("--shots", type=positive_int, help="only the K-shot records")
    regime.add_argument("--train-size", type=positive_int, help="only the N-example records")
    regime.add_argument("--setting", help="only this setting: 16shot, n1000, full")
    p.add_argument("--backbone", help="only this backbone id")
    _add_splits(p)
    p.add_argument("--select-by-dev", action="store_true",
                   help="where a side has several configurations in a cell, keep the best on dev")
    _add_output(p, "Markdown")
    p.set_defaults(func=cmd_compare)


def _add_check(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("check", help="compare fresh runs with a reference table (exit 1 on regression)")
    _add_common(p)
    p.add_argument("--against", required=True, action="append", type=nonempty,
                   help="reference table file or directory (repeatable)")
    p.add_argument("--abs-tol", type=nonneg_float,
                   help="allowed absolute move of a metric (default 1e-6 if no --std-k)")
    p.add_argument("--std-k", type=nonneg_float, help="allowed move in units of the reference std over seeds")
    p.add_argument(
        "--hardware-tol",
        type=nonneg_float,
        help="allowed move for a run whose reference was computed on another processor (throughput.hardware) or "
        "on an unknown one (default: no exception, the same band for every run)",
    )
    p.set_defaults(func=cmd_check)


def _add_show(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("show", help="print one record as YAML")
    p.add_argument("run_id", help="run id (or a unique prefix)")
    p.add_argument("--results-dir", default="results", type=nonempty,
                   help="results root, searched recursively (default: results: the committed tables and your own)")
    p.set_defaults(func=cmd_show)


def _add_validate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("validate", help="check tables against the record schema (exit 1 on problems)")
    _add_common(p)
    p.set_defaults(func=cmd_validate)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the results subcommands to the main parser; each sets `func(args) -> exit code`."""
    for add in (_add_table, _add_compare, _add_check, _add_show, _add_validate):
        add(subparsers)
