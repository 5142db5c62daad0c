"""The per-seed table of docs/conformance.md, from the records only: the stock loop's output
(results/conformance/stock_loop.yaml) beside sptbench's records of the same runs (results/conformance/v1/...).

    python scripts/conformance_report.py [results/conformance] [--doc docs/conformance.md]

A stock-loop run is matched with the sptbench record of the same method, seed, learning rate and batch size that ran
under the stock settings (`--stock`).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import yaml
from tabulate import tabulate

from sptbench.records.io import read_records
from sptbench.training.loop import STOCK_SETTINGS


def stock_runs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def is_stock(rec: dict) -> bool:
    return all(rec["training"].get(k) == v for k, v in STOCK_SETTINGS.items())


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def report(root: Path) -> str:
    records = [r for r in read_records([root / "v1"]) if r["status"] == "ok"]
    rows, gaps = [], []
    for run in sorted(stock_runs(root / "stock_loop.yaml"), key=lambda d: (d["method"], d["seed"])):
        s = run["settings"]

        def same(rec: dict) -> bool:
            return (rec["method"]["name"] == run["method"] and rec["protocol"]["seed"] == run["seed"]  # noqa: B023
                    and rec["training"]["lr"] == s["lr"] and rec["training"]["batch_size"] == s["batch_size"])  # noqa: B023

        # prompt tuning: the run whose init draws peft's stream (init: peft_vocab) where there is one
        ours = sorted((r for r in records if same(r) and is_stock(r)),
                      key=lambda r: (r["method"]["config"].get("init") == "peft_vocab", r["created"]))
        test = ours[-1]["metrics"]["test"]["accuracy"] if ours else None
        gap = None if test is None else 100 * (test - run["test_accuracy"])  # the stock loop rounds to 6 digits
        if gap is not None:
            gaps.append(abs(gap))
        rows.append([
            run["method"], run["seed"], pct(run["dev_accuracy"]), pct(run["test_accuracy"]),
            pct(ours[-1]["metrics"]["dev"]["accuracy"]) if ours else "-", pct(test),
            "-" if gap is None else f"{abs(gap):.2f}", "-" if not ours else ours[-1]["outcome"]["best_step"],
            run["best_step"],
        ])
    table = tabulate(rows, headers=["method", "seed", "stock dev", "stock test", "sptbench --stock dev",
                                    "sptbench --stock test", "abs. gap (points)", "sptbench best step",
                                    "stock best step"],
                     tablefmt="github", disable_numparse=True)
    summary = f"\n\n{len(gaps)} pairs; largest |gap| {max(gaps):.2f} points" if gaps else ""
    return table + summary


def noise(path: Path) -> str:
    """The stock loop on one split with several init seeds: test accuracy mean, std, range."""
    runs = stock_runs(path)
    tests = [100 * r["test_accuracy"] for r in runs]
    if len(tests) < 2:
        return f"{len(tests)} run(s) so far"
    seeds = sorted({r["settings"].get("init_seed") for r in runs})
    return (f"{len(tests)} init seeds {seeds}: test {statistics.mean(tests):.1f} ± {statistics.stdev(tests):.1f} "
            f"(min {min(tests):.1f}, max {max(tests):.1f})")


def main(argv: list[str]) -> int:
    import argparse

    from sptbench.reports.readme import update_readme_block

    p = argparse.ArgumentParser(description="the per-seed conformance table", allow_abbrev=False)
    p.add_argument("root", nargs="?", default="results/conformance")
    p.add_argument("--doc", help="write the table into this Markdown file's `conformance` block instead of stdout")
    args = p.parse_args(argv)
    root = Path(args.root)
    text = report(root)
    if (root / "init_noise.yaml").is_file():
        text += "\n\nThe stock loop on seed 13's split with other initialisation seeds (`--init-seed`): " + \
            noise(root / "init_noise.yaml")
    if args.doc:
        update_readme_block(args.doc, "conformance", text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
