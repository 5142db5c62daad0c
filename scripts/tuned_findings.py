"""The paired comparisons of the dev-tuned sweeps (issue 20) as one Markdown table, one row per comparison.

SPT against prompt tuning, P-tuning v2, LPT at the middle layer and LPT with its layer chosen on dev; SPT-DARTS
against SPT. Every side is dev-selected per (task, seed) exactly as `sptbench compare A B --select-by-dev` does (the
same function: learning rate, and LPT's layer where the side does not fix it); each row is that command's overall
line plus each task's mean difference. Comparisons whose methods are not both recorded are left out (said below the
table).

  python scripts/tuned_findings.py results/tuned/v1 --shots 16 --tasks sst2 mpqa mr subj trec \
      [--middle-layer 3] [--readme README.md --block tuned-16shot-compare]
"""

from __future__ import annotations

import argparse
import sys

from tabulate import tabulate

from sptbench.core.errors import SptbenchError
from sptbench.records.io import read_records
from sptbench.records.keys import setting_name
from sptbench.reports.compare import STATS_HEADERS, compare, parse_side, stats_cells
from sptbench.reports.readme import update_readme_block


def comparisons(middle: int) -> list[tuple[str, str, str]]:
    """(side a, side b, label of b) in the order the Findings discuss them."""
    return [
        ("spt", "prompt_tuning", "prompt_tuning"),
        ("spt", "p_tuning_v2", "p_tuning_v2"),
        ("spt", f"lpt:layer={middle}", f"lpt (middle layer {middle})"),
        ("spt", "lpt", "lpt (dev layer)"),
        ("spt_darts", "spt", "spt"),
    ]


def summary(records: list[dict], tasks: list[str] | None, middle: int) -> str:
    rows, skipped, partial = [], [], []
    for a, b, label in comparisons(middle):
        try:
            comp = compare(records, parse_side(a), parse_side(b), tasks=tasks, select=True)
        except SptbenchError as err:
            skipped.append(f"{a} - {label} ({err})")
            continue
        per_task = ", ".join(f"{t} {st.mean:+.1f}" for t, st in comp.per_task.items() if st.mean is not None)
        rows.append([f"{a} - {label}", *stats_cells(comp.overall), per_task])
        partial += [f"- {a} - {label}: {note}" for note in comp.partial]
    if not rows:
        raise SptbenchError("no comparison has records on both sides")
    table = tabulate(rows, headers=["comparison", *STATS_HEADERS, "per task (mean diff)"], tablefmt="github",
                     disable_numparse=True)
    notes = [
        "- paired test-score differences in points over the (task, seed) cells both sides have (a positive mean "
        "favours the first); each side dev-selected per (task, seed) (`sptbench compare A B --select-by-dev`); "
        "interval: percentile bootstrap of the mean (10,000 resamples, seeded); Wilcoxon: two-sided signed-rank.",
    ]
    notes += [f"- left out: {s}" for s in skipped] + partial
    return table + "\n\n" + "\n".join(notes) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", help="result tables or folders (e.g. results/tuned/v1)")
    regime = ap.add_mutually_exclusive_group(required=True)
    regime.add_argument("--shots", type=int)
    regime.add_argument("--train-size", type=int)
    ap.add_argument("--tasks", nargs="+", help="only these tasks (default: every task both sides have)")
    ap.add_argument("--middle-layer", type=int, default=3, help="LPT's fixed layer to compare with (default: 3)")
    ap.add_argument("--readme", help="README to update in place (with --block)")
    ap.add_argument("--block", help="name in <!-- sptbench:table NAME --> markers")
    args = ap.parse_args(argv)
    if (args.readme is None) != (args.block is None):
        ap.error("--readme and --block go together")
    setting = setting_name(args.shots, args.train_size)
    try:
        records = [r for r in read_records(args.paths)
                   if setting_name(r["protocol"]["shots"], r["protocol"]["train_size"]) == setting]
        text = summary(records, args.tasks, args.middle_layer)
        if args.readme:
            update_readme_block(args.readme, args.block, text)
        else:
            print(text, end="")
    except SptbenchError as err:
        print(f"tuned_findings: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
