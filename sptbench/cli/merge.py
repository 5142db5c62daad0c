"""`sptbench merge`: fold the records runs wrote as their own files (a Slurm sweep's default) into the tables."""

from __future__ import annotations

import argparse

from sptbench.core.argtypes import nonempty

ORDER = 85  # place in `sptbench --help`: after sweep


def cmd_merge(args: argparse.Namespace) -> int:
    from sptbench.records.merge import merge_runs

    report = merge_runs(args.results_dir, keep=args.keep)
    for table, n in sorted(report.tables.items()):
        print(f"{table}: +{n}")
    done = "renamed *.yaml.merged" if args.keep else "removed"
    print(f"merged {report.added} record(s), {report.already} already in their table; {report.removed} run file(s) "
          f"{done}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `sptbench merge` to the main parser."""
    p = subparsers.add_parser(
        "merge", help="fold run files (<results>/v1/<backbone>/runs/<run_id>.yaml) into the tables; idempotent")
    p.add_argument("results_dir", nargs="?", default="results", type=nonempty,
                   help="root of the result tables (default: results)")
    p.add_argument("--keep", action="store_true",
                   help="keep the merged run files, renamed <run_id>.yaml.merged (no reader counts them)")
    p.set_defaults(func=cmd_merge)
