"""`sptbench report`: one self-contained HTML page of recorded results (tables, Pareto plots, paired comparisons,
gates, layer curves, and the record behind every number)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sptbench.core.argtypes import nonempty
from sptbench.core.errors import SptbenchError

ORDER = 35  # place in `sptbench --help`


def _names(values: list[str] | None) -> list[str] | None:
    return None if values is None else [n for v in values for n in v.split(",") if n]


def _check_targets(args: argparse.Namespace) -> None:
    """Before any work: the outputs are HTML / CSV files that are neither a results table nor each other."""
    from sptbench.records.io import holds_records, table_files

    read = {f.resolve() for f in table_files(args.paths)}
    for flag, target in (("--out", args.out), ("--csv", args.csv)):
        if target is not None and (Path(target).resolve() in read or holds_records(Path(target))):
            raise SptbenchError(f"{flag} {target} is a results table: not overwritten (write to another file)")
    if args.csv is not None and Path(args.csv).resolve() == Path(args.out).resolve():
        raise SptbenchError("--csv and --out name the same file")


def _write(path: str, text: str) -> None:
    from sptbench.records.io import write_text_atomic

    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SptbenchError(f"cannot create the folder of {path}: {err.strerror or err}") from None
    write_text_atomic(path, text)


def cmd_report(args: argparse.Namespace) -> int:
    from sptbench.reports.compare import load_family
    from sptbench.reports.report import build_report, load, report_csv, restrict
    from sptbench.reports.report_html import plotly_js, render_html

    start = time.perf_counter()
    _check_targets(args)
    plotly_js()  # a missing plotly is said before the records are read
    pairs = load_family(args.family).pairs if args.family else None
    loaded = restrict(load(args.paths), _names(args.tasks), _names(args.methods))
    report = build_report(loaded, pairs)
    page = render_html(report, args.title)
    _write(args.out, page)
    if args.csv:
        _write(args.csv, report_csv(report))
    print(f"wrote {args.out} ({len(page.encode()) / 1e6:.1f} MB: {len(report['sections'])} sections, "
          f"{len(report['records'])} of {report['n_records']} records shown"
          + (f"; {args.csv}" if args.csv else "") + f") in {time.perf_counter() - start:.1f} s")
    for line in report["skipped"]:
        print(f"not shown (no successful tested run): {line}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `sptbench report`."""
    p = subparsers.add_parser(
        "report", help="one self-contained HTML page of results: tables, Pareto plots, paired comparisons, records",
        description="One self-contained HTML file (plotly's JavaScript inlined: it opens without a network) with, "
                    "per results collection, backbone and data regime: the dev-selected comparison table, a Pareto "
                    "plot of test score against trainable parameters (or train throughput, peak memory), paired "
                    "comparisons with intervals, SPT's gates and LPT's layer curves; filters by task and method; "
                    "every number opens the records behind it. Needs plotly (the `report` extra).")
    p.add_argument("paths", nargs="+", type=nonempty, help="result tables or folders (e.g. results)")
    p.add_argument("--out", required=True, type=nonempty, help="the HTML file to write")
    p.add_argument("--csv", type=nonempty, help="also write the tables as CSV (one line per section, method, task)")
    p.add_argument("--family", type=nonempty,
                   help="the paired comparisons to show (a comparison family file, as `sptbench compare --family`); "
                        "default: each method with learned gates against every other, else every pair")
    p.add_argument("--tasks", nargs="+", help="only these tasks (names, or a,b)")
    p.add_argument("--methods", nargs="+", help="only these methods (names, or a,b)")
    p.add_argument("--title", default="sptbench report", type=nonempty, help="the page's title")
    p.set_defaults(func=cmd_report)
