"""scripts/gate_bias.py: Kendall's W and the per-configuration gate summary of issue 35's evidence."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

from sptbench.records.io import append_record
from tests.helpers import make_record

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gate_bias.py"
spec = importlib.util.spec_from_file_location("gate_bias", SCRIPT)
gate_bias = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gate_bias)


def test_kendall_w_known_values():
    rng = random.Random(random.randrange(10**6))
    ranking = rng.sample(range(7), 7)
    assert gate_bias.kendall_w([ranking] * rng.randint(2, 6)) == pytest.approx(1.0)  # identical rankings
    assert gate_bias.kendall_w([ranking, [6 - r for r in ranking]]) == pytest.approx(0.0)  # two opposite ones
    # two raters: W = (1 + Spearman's rho) / 2
    a, b = rng.sample(range(8), 8), rng.sample(range(8), 8)
    rho = 1 - 6 * sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) / (8 * (64 - 1))
    assert gate_bias.kendall_w([a, b]) == pytest.approx((1 + rho) / 2)
    draws = [gate_bias.kendall_w([rng.sample(range(6), 6) for _ in range(3)]) for _ in range(3000)]
    assert sum(draws) / len(draws) == pytest.approx(gate_bias.null_w(3), abs=0.02)  # E[W] = 1/m: no agreement


def test_summary_reads_alphas_per_configuration(tmp_path, capsys):
    """Two configurations whose gates always put a fixed (different) layer on top, whatever the seed: the summary
    counts the top layers per configuration, W across seeds is 1 and W across configurations is low."""
    table = tmp_path / "t.yaml"
    rng = random.Random(random.randrange(10**6))
    for seed in (13, 21, 42):
        for lr, top in ((1e-3, 0), (1e-2, 3)):
            alpha = [0.5 - 0.01 * abs(i - top) + rng.uniform(-1e-4, 1e-4) for i in range(4)]
            rec = make_record(method__name="spt", task__name="sst2", protocol__seed=seed, training__lr=lr)
            rec["method"]["config"].update(gate="deterministic", gate_lr=0.01)
            rec["extra"] = {"alpha": alpha}
            append_record(table, rec)
    gate_bias.main([str(table)])
    out = capsys.readouterr().out
    assert "gate=deterministic lr=0.001 gate_lr=0.01 (3 runs)" in out and "on top: layer 0 x3" in out
    assert "gate=deterministic lr=0.01 gate_lr=0.01 (3 runs)" in out and "on top: layer 3 x3" in out
    assert "sst2: α across seeds 1.00" in out
