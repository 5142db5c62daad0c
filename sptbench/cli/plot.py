"""`sptbench plot`: gate values and the layer analysis from recorded runs."""

from __future__ import annotations

import argparse

from sptbench.core.argtypes import nonempty
from sptbench.core.errors import SptbenchError

ORDER = 30  # place in `sptbench --help`


def cmd_plot(args) -> int:
    from sptbench.records.io import check_output, read_records
    from sptbench.records.schema import require_valid
    from sptbench.reports.plots import plot_gate_trajectories, plot_gates, plot_layers

    if args.what == "layers" and args.by is not None:
        raise SptbenchError("--by applies to `plot gates` only")
    if args.what == "layers" and args.view is not None:
        raise SptbenchError("--view applies to `plot gates` only")
    if args.view == "trajectory" and args.by is not None:
        raise SptbenchError("--by applies to the heatmap view; the trajectory view has one panel per run")
    out = args.out or f"{args.what}.png"
    check_output(out, "--out")
    records = require_valid(read_records(args.paths))
    if args.what == "layers":
        plot_layers(records, out)
        print(f"wrote {out}")
        return 0
    records = [r for r in records if (r.get("extra") or {}).get("alpha")]
    if not records:
        raise SptbenchError("no records with learned gates (spt / spt_darts) in the given paths")
    if args.view == "trajectory":
        plot_gate_trajectories(records, out)
    else:
        plot_gates(records, out, by=args.by or "run")
    print(f"wrote {out} ({len(records)} runs)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `sptbench plot`."""
    p = subparsers.add_parser("plot", help="plots from recorded runs")
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
    p.add_argument("--view", choices=["heatmap", "trajectory"],
                   help="gates: the final α as a heatmap (default), or α per layer against the search step, one "
                   "panel per run (at most 30)")
    p.set_defaults(func=cmd_plot)
