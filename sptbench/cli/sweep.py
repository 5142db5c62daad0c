"""`sptbench sweep`: a grid of runs from one YAML file (regimes x tasks x methods x hyper-parameter values x seeds),
resumable (runs already recorded are skipped), run here one after another or as a submitit (Slurm) job array
(docs/sweeps.md). The sweep itself lives in sptbench/sweep/: the file (spec.py), the plan and ETA (plan.py, eta.py),
the launchers (launch.py) and the test-once protocol (test_once.py); dev selection in sptbench/reports/selection.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sptbench.core.argtypes import nonempty, nonneg_int, positive_int
from sptbench.sweep.launch import run_local, submit
from sptbench.sweep.plan import format_plan, plan, preflight
from sptbench.sweep.spec import LAUNCHERS, SLURM_KEYS, load_sweep, restrict, run_label
from sptbench.sweep.test_once import awaiting_test, run_pending_tests

ORDER = 80  # place in `sptbench --help`


def cmd_sweep(args: argparse.Namespace) -> int:
    """Expand, validate, skip what is recorded, then dry-run, run here, or submit a job array."""
    from sptbench.data.locate import env_data_path

    data_dir = args.data_dir or env_data_path()
    overrides = {"data_dir": data_dir, "results_dir": args.results_dir, "launcher": args.launcher,
                 "strict_data": args.strict_data or None}
    sweep = restrict(load_sweep(args.sweep, overrides=overrides), args.tasks, args.methods)
    slurm = {**sweep.slurm, **{k: getattr(args, k) for k in SLURM_KEYS if getattr(args, k, None) is not None}}
    p = plan(sweep, retry_failed=args.retry_failed, eta_from=args.eta_from)
    parallel = int(slurm.get("array_parallelism") or 1) if sweep.launcher == "slurm" else 1
    print(format_plan(sweep, p, parallel))
    if sweep.test == "selected":
        print(f"test: selected — {len(awaiting_test(sweep))} group(s) complete and awaiting the test of their "
              "dev-selected configuration")
    if p.todo:
        preflight(sweep, p.todo)
    if args.dry_run:
        return 0
    if sweep.launcher == "local":
        # groups an earlier sitting completed, then each as soon as it is
        tested = [run_pending_tests(sweep, quiet=args.quiet)]
        after_each = None
        if sweep.test == "selected":
            def after_each() -> None:
                tested.append(run_pending_tests(sweep, quiet=args.quiet))
        failures, skipped = run_local(p.todo, progress=not args.quiet, after_each=after_each, seen=p.seen)
        for spec, why in failures:
            print(f"failed: {run_label(spec, len(sweep.split_sources) > 1)}: {why}")
        if p.todo:
            ran = len(p.todo) - len(skipped)
            print(f"ran {ran}: {ran - len(failures)} ok, {len(failures)} failed"
                  + (f"; {len(skipped)} left to other sweep processes" if skipped else ""))
        if sum(tested):
            print(f"tested {sum(tested)} dev-selected configuration(s) once each")
        return 1 if failures else 0
    if not p.todo:
        return 0
    folder = Path(args.log_dir or Path(sweep.results_dir) / "submitit" / sweep.name) / "%j"
    jobs = submit(
        p.todo,
        folder=folder,
        cluster=args.cluster,
        name=f"sptbench-{sweep.name}",
        partition=slurm.get("partition"),
        gpus=slurm.get("gpus"),
        time_min=slurm.get("time"),
        mem_gb=slurm.get("mem"),
        cpus=slurm.get("cpus"),
        array_parallelism=slurm.get("array_parallelism"),
        seen=p.seen,
    )
    files = sweep.options.get("record_to") != "table"
    print(f"submitted {len(jobs)} jobs (array {jobs[0].job_id.split('_')[0]}); logs in {folder.parent}"
          + (f"; records go to run files: `sptbench merge {sweep.results_dir}` folds them in" if files else ""))
    if not (args.wait or args.cluster != "slurm"):
        return 0
    return _report_array([job.result() for job in jobs], sweep.results_dir)


def _report_array(results: list[dict], results_dir: str) -> int:
    """After waiting for an array: its failures, its counts, and its run files merged into the tables."""
    from sptbench.records.merge import merge_runs

    bad = [r for r in results if r["status"] not in ("ok", "skipped")]
    skipped = sum(r["status"] == "skipped" for r in results)
    for r in bad:
        print(f"failed: {r['run']}: {r.get('error')}", file=sys.stderr)
    ran = len(results) - skipped
    print(f"ran {ran}: {ran - len(bad)} ok, {len(bad)} failed"
          + (f"; {skipped} left to other jobs (running or recorded)" if skipped else ""))
    report = merge_runs(results_dir)
    print(f"merged {report.added} record(s) into the tables")
    return 1 if bad else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `sptbench sweep` to the main parser."""
    from sptbench.data.specs import add_tasks_dir_argument

    p = subparsers.add_parser("sweep", help="run a grid of runs from a sweep file (resumable; local or Slurm; local "
                              "processes started on one file share its runs)")
    p.add_argument("sweep", type=nonempty, help="sweep YAML file (see docs/sweeps.md and sweeps/)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (counts, ETA) and run nothing")
    p.add_argument("--launcher", choices=LAUNCHERS, help="local: one after another here (default); slurm: submitit")
    p.add_argument("--results-dir", type=nonempty,
                   help="root of the result tables (default: the file's results_dir, else results/local, git-ignored)")
    p.add_argument("--data-dir", type=nonempty,
                   help="local data folders, searched in order (A:B; default: $SPTBENCH_DATA_PATH, then "
                   "$SPTBENCH_DATA_DIR, else the file's data_dir)")
    p.add_argument("--strict-data", action="store_true",
                   help="refuse data with empty texts (default: the file's strict_data, else keep and count them)")
    p.add_argument("--retry-failed", action="store_true", help="rerun runs recorded only as failed")
    p.add_argument("--eta-from", nargs="+", type=nonempty, metavar="BENCH.yaml",
                   help="`sptbench bench` records of the hardware the runs will use: the ETA of runs nothing measured "
                   "on their backbone is scaled from them (backbone size, budget, method cost)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--tasks", nargs="+", type=nonempty, metavar="TASK",
                   help="only these of the file's tasks (default: all); e.g. one part per machine")
    p.add_argument("--methods", nargs="+", type=nonempty, metavar="METHOD",
                   help="only these of the file's methods (default: all)")
    add_tasks_dir_argument(p)
    g = p.add_argument_group("slurm (submitit) options; also settable in the file's `slurm:` mapping")
    g.add_argument("--partition", type=nonempty, help="Slurm partition (default: the cluster's)")
    g.add_argument("--gpus", type=nonneg_int, help="GPUs per job")
    g.add_argument("--time", type=positive_int, help="time limit per job, minutes")
    g.add_argument("--mem", type=positive_int, help="memory per job, GB")
    g.add_argument("--cpus", type=positive_int, help="CPUs per job")
    g.add_argument("--array-parallelism", dest="array_parallelism", type=positive_int,
                   help="jobs of the array at once")
    g.add_argument("--cluster", choices=["slurm", "local", "debug"], default="slurm",
                   help="submitit executor: slurm; local (the same array as processes here) or debug (in this "
                   "process), for testing")
    g.add_argument("--log-dir", type=nonempty, help="submitit folder (default: <results-dir>/submitit/<name>)")
    g.add_argument("--wait", action="store_true", help="wait for the jobs and report (always with local/debug)")
    p.set_defaults(func=cmd_sweep)
