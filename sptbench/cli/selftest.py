"""`sptbench selftest`: the per-method tests generated from the registry (the installed `sptbench.testing`), run on
the methods named, e.g. a method of another package after `pip install`."""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys

from sptbench.core.argtypes import nonempty
from sptbench.core.errors import SptbenchError

ORDER = 90  # place in `sptbench --help`
METHODS_ENV = "SPTBENCH_TEST_METHODS"  # read by sptbench.testing (the layer above the CLI: named, not imported)


def pytest_command(methods: list[str], extra: list[str]) -> tuple[list[str], dict[str, str]]:
    """The pytest command line and environment that run `sptbench.testing` on `methods` only. The folder's own
    pytest settings (`addopts`) are cleared: the same tests run from a checkout or an installed package."""
    argv = [sys.executable, "-m", "pytest", "--pyargs", "sptbench.testing", "-q", "-p", "no:cacheprovider",
            "-o", "addopts=", *extra]
    return argv, {**os.environ, METHODS_ENV: ",".join(methods)}


def cmd_selftest(args) -> int:
    from sptbench.methods.registry import get_method

    for name in args.method:
        get_method(name)  # an unknown name: one line, with the closest ones
    if importlib.util.find_spec("pytest") is None:
        raise SptbenchError("selftest runs pytest, which is not installed (pip install pytest)")
    argv, env = pytest_command(args.method, ["-x"] if args.exitfirst else [])
    print(f"sptbench selftest: {', '.join(args.method)}: {' '.join(argv[1:])}", flush=True)
    return subprocess.run(argv, env=env, check=False).returncode


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `sptbench selftest`."""
    p = subparsers.add_parser(
        "selftest", help="run the generated per-method tests (sptbench.testing) on the methods named",
        description="Run the tests generated from the method registry (parameter counts against what the method "
                    "declares it trains, gradients, the backbone untouched, batch invariance, save -> load) on the "
                    "tiny backbone of every family, for the methods named: the built-in ones or a method of an "
                    "installed package (its entry point). Same as: SPTBENCH_TEST_METHODS=NAME pytest --pyargs "
                    "sptbench.testing. Exit status: pytest's.")
    p.add_argument("--method", nargs="+", required=True, type=nonempty, help="the method(s) to test")
    p.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failure")
    p.set_defaults(func=cmd_selftest)
