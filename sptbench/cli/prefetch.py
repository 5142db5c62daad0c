"""`sptbench prefetch SWEEP.yaml`: download every model and dataset a sweep reads from the hub, once, so that its
runs can go with `HF_HUB_OFFLINE=1` (sptbench/sweep/prefetch.py)."""

from __future__ import annotations

import argparse
import os

from sptbench.core.argtypes import nonempty

ORDER = 85  # place in `sptbench --help`: after sweep


def cmd_prefetch(args: argparse.Namespace) -> int:
    """List what the sweep reads from the hub and from elsewhere; fetch the former (not with --dry-run)."""
    from sptbench.sweep.prefetch import fetch, prefetch_plan
    from sptbench.sweep.spec import load_sweep

    data_dir = args.data_dir or os.environ.get("SPTBENCH_DATA_DIR")
    sweep = load_sweep(args.sweep, overrides={"data_dir": data_dir})
    fetches, local = prefetch_plan(sweep)
    for line in local:
        print(line)
    print(f"{'would fetch' if args.dry_run else 'fetching'} {len(fetches)} from the hub"
          + (":" if fetches else ""))
    for item in fetches:
        print(f"  {item.label()}")
    if args.dry_run:
        return 0
    for item in fetches:
        sha = fetch(item)
        pin = "" if item.revision == sha else f" (pin it: revision {sha})"
        print(f"fetched {item.label()} -> commit {sha}{pin}")
    if fetches:
        print("done: the sweep's runs can go offline (HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `sptbench prefetch` to the main parser."""
    from sptbench.data.specs import add_tasks_dir_argument

    p = subparsers.add_parser("prefetch", help="download a sweep's model and datasets once (then run it offline)")
    p.add_argument("sweep", type=nonempty, help="sweep YAML file")
    p.add_argument("--dry-run", action="store_true", help="list what would be fetched and fetch nothing")
    p.add_argument("--data-dir", type=nonempty,
                   help="local data mirror the sweep reads (default: $SPTBENCH_DATA_DIR, else the file's data_dir): "
                   "its tasks need nothing from the hub")
    add_tasks_dir_argument(p)
    p.set_defaults(func=cmd_prefetch)
