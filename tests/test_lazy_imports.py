"""The CLI's face starts fast because it imports no heavy library: `sptbench --help`, `list`, `show`, `validate` and
`table` load none of torch, transformers, peft, evaluate, datasets, matplotlib, scipy, accelerate (each costs
seconds on a small machine; the timings are in tests/benchmarks/test_startup.py). Checked in a fresh interpreter,
command after command, so the first command that pulls one in is named."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

HEAVY = ("torch", "transformers", "peft", "evaluate", "datasets", "matplotlib", "scipy", "accelerate")
COMMANDS = [
    ["--help"],
    ["run", "--help"],
    ["list", "methods"],
    ["list", "tasks"],
    ["list", "backbones"],
    ["validate", "results/v1"],
    ["table", "results/v1", "--shots", "16"],
    ["show", "no-such-run"],
]
PROBE = """
import contextlib, io, json, sys
from sptbench.cli.main import main
heavy, commands = set(json.loads(sys.argv[1])), json.loads(sys.argv[2])
for argv in commands:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(argv)
    loaded = sorted({m.split('.')[0] for m in sys.modules} & heavy)
    print(json.dumps({"argv": argv, "code": code, "heavy": loaded}))
"""


def test_the_face_imports_no_heavy_library():
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(HEAVY), json.dumps(COMMANDS)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["argv"] for r in results] == COMMANDS
    for r in results:
        assert r["heavy"] == [], f"sptbench {' '.join(r['argv'])} imported {r['heavy']}"
        assert r["code"] in (0, 2)  # `show` of an unknown run id is a one-line error


def test_listing_methods_lists_every_registered_method():
    """The torch-free listing is the registry itself: the names a run accepts, each with its description."""
    out = subprocess.run([sys.executable, "-m", "sptbench.cli", "list", "methods"], cwd=REPO, capture_output=True,
                         text=True, timeout=300, check=True)
    from sptbench.methods.registry import load_methods

    listed = {line.split()[0]: line.split(None, 1)[1] for line in out.stdout.splitlines() if line.strip()}
    assert listed == {name: m.description for name, m in load_methods().items()}
