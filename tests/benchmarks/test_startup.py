"""Cold start of the CLI's face: `sptbench --help`, `list methods|tasks`, `validate results`, `table results`, each
in a fresh interpreter (nothing imported, as a user's shell runs it). Skipped by default; run with

    python -m pytest tests/benchmarks/test_startup.py -n 0 --benchmark-only -s

and read the median of 5 starts per command (the goal on 2 cores: under 1.5 s). No timed assertion: a shared
machine's load moves these numbers; `tests/test_lazy_imports.py` checks (untimed) what keeps them small.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

COMMANDS = {
    "--help": ["--help"],
    "list methods": ["list", "methods"],
    "list tasks": ["list", "tasks"],
    "validate results": ["validate", "results"],
    "table results": ["table", "results", "--shots", "16"],
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_cold_start(benchmark, name):
    argv = [sys.executable, "-m", "sptbench.cli", *COMMANDS[name]]
    runs: list[subprocess.CompletedProcess] = []

    def start() -> None:
        runs.append(subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600))

    benchmark.pedantic(start, rounds=5, iterations=1)
    assert all("Traceback" not in r.stderr for r in runs), runs[-1].stderr  # it ran; its verdict is not measured
    median = benchmark.stats.stats.median
    benchmark.extra_info["median_s"] = round(median, 3)
    print(f"\nsptbench {' '.join(COMMANDS[name])}: median cold start {median:.2f} s (5 starts)")
