"""Tests for reports/check.py (bands, missing/extra keys, version mismatch) and the results CLI (cli/results.py)."""

from __future__ import annotations

import argparse
import copy

import pytest
import yaml

from sptbench.cli import results as cli_results
from sptbench.core.errors import SptbenchError
from sptbench.records.io import append_record, table_path
from sptbench.reports.check import check, format_result
from tests.helpers import fresh_run_id, make_record

SEEDS = (13, 21, 42)


def reference_runs() -> list[dict]:
    return [
        make_record(method__name=m, task__name=t, protocol__seed=s, data__fingerprint=f"fp-{t}-{s}")
        for m in ("lora", "spt")
        for t in ("rte", "sst2")
        for s in SEEDS
    ]


def rerun(records: list[dict]) -> list[dict]:
    """The same experiments run again: new run ids, same keys and metrics."""
    out = copy.deepcopy(records)
    for rec in out:
        rec["run_id"] = fresh_run_id()
    return out


def find(records: list[dict], method: str, task: str, seed: int) -> dict:
    return next(
        r for r in records if (r["method"]["name"], r["task"]["name"], r["protocol"]["seed"]) == (method, task, seed)
    )


# ---------------------------------------------------------------------------------------------------- check


def test_identical_runs_pass():
    ref = reference_runs()
    result = check(rerun(ref), ref)
    assert result.ok and result.abs_tol == 1e-6
    assert len(result.comparisons) == len(ref) * 3  # dev.accuracy, dev.score, test.accuracy
    assert "check OK" in format_result(result)


def test_planted_regression_fails_and_is_reported():
    ref = reference_runs()
    fresh = rerun(ref)
    find(fresh, "spt", "rte", 21)["metrics"]["test"]["accuracy"] -= 0.05
    result = check(fresh, ref, abs_tol=0.01)
    assert not result.ok
    (moved,) = result.moved
    assert moved.metric == "test.accuracy" and moved.verdict == "down"
    assert moved.delta == pytest.approx(-0.05)
    report = format_result(result)
    assert "spt/rte@v1 16shot seed=21" in report and "-0.0500" in report and "check FAILED" in report


def test_moves_inside_abs_tol_pass_and_upward_moves_outside_fail():
    ref = reference_runs()
    fresh = rerun(ref)
    find(fresh, "lora", "sst2", 13)["metrics"]["test"]["accuracy"] += 0.005
    assert check(fresh, ref, abs_tol=0.01).ok
    assert not check(fresh, ref).ok  # default band 1e-6
    find(fresh, "lora", "sst2", 42)["metrics"]["test"]["accuracy"] += 0.02  # (dev's score must follow its accuracy)
    result = check(fresh, ref, abs_tol=0.01)
    assert [c.verdict for c in result.moved] == ["up"]


def test_missing_key_fails_and_extra_key_warns():
    ref = reference_runs()
    fresh = [r for r in rerun(ref) if not (r["method"]["name"] == "spt" and r["protocol"]["seed"] == 42)]
    result = check(fresh, ref)
    assert not result.ok and len(result.missing) == 2
    assert "missing" in format_result(result)
    extra = check(rerun(ref) + [make_record(method__name="adapter")], ref)
    assert extra.ok and len(extra.extra) == 1
    assert "extra" in format_result(extra)


def test_failed_fresh_run_fails():
    ref = reference_runs()
    fresh = rerun(ref)
    victim = find(fresh, "lora", "rte", 13)
    victim.update(status="failed", error="nan loss", metrics=None)
    result = check(fresh, ref)
    assert not result.ok and len(result.failed) == 1 and not result.missing


def test_missing_metric_fails():
    ref = reference_runs()
    fresh = rerun(ref)
    del find(fresh, "lora", "rte", 13)["metrics"]["dev"]["score"]
    result = check(fresh, ref)
    assert [c.verdict for c in result.moved] == ["missing metric"]


def test_std_k_band():
    ref = reference_runs()
    group = [find(ref, "spt", "sst2", s) for s in SEEDS]
    for rec, acc in zip(group, (0.80, 0.82, 0.84), strict=True):  # sample std 0.02
        rec["metrics"]["test"]["accuracy"] = acc
    fresh = rerun(ref)
    find(fresh, "spt", "sst2", 21)["metrics"]["test"]["accuracy"] = 0.82 - 0.03
    assert check(fresh, ref, std_k=2).ok  # |move| 0.03 <= 2 x 0.02
    assert not check(fresh, ref, std_k=1).ok  # 0.03 > 1 x 0.02
    assert check(fresh, ref, std_k=1, abs_tol=0.05).ok  # band = max of the two
    for s, acc in zip(SEEDS, (0.6, 0.7, 0.8), strict=True):  # lora/rte: its own std, 0.1
        find(ref, "lora", "rte", s)["metrics"]["test"]["accuracy"] = acc
    other = rerun(ref)
    find(other, "lora", "rte", 13)["metrics"]["test"]["accuracy"] += 0.25
    assert check(other, ref, std_k=3).ok  # 0.25 <= 3 x 0.1, though far outside spt/sst2's band
    single = [find(ref, "lora", "rte", 13)]  # one seed: std 0, so the band is 0
    assert not check([find(other, "lora", "rte", 13)], single, std_k=3).ok


def test_task_version_mismatch_is_flagged():
    ref = reference_runs()
    fresh = rerun(ref)
    find(fresh, "spt", "rte", 13)["task"]["version"] = 2
    result = check(fresh, ref)
    assert not result.ok
    assert any("task version mismatch" in m and "spt/rte@v1" in m for m in result.mismatches)
    assert "task version mismatch" in format_result(result)


def _on(records: list[dict], hardware: str | None) -> list[dict]:
    for rec in records:
        rec["throughput"]["hardware"] = hardware
    return records


def test_hardware_tol_widens_the_band_only_across_hardware():
    cpu_a, cpu_b = "Xeon [GenuineIntel 6/167/1] (AVX512, 2 threads)", "EPYC [AuthenticAMD 25/1/1] (AVX2, 2 threads)"
    ref = _on(reference_runs(), cpu_a)
    move = 0.02
    same, other = _on(rerun(ref), cpu_a), _on(rerun(ref), cpu_b)
    for fresh in (same, other):
        find(fresh, "spt", "rte", 13)["metrics"]["test"]["accuracy"] += move
    # The same processor: still exact, whatever hardware_tol says.
    result = check(same, ref, abs_tol=1e-4, hardware_tol=0.05)
    assert [c.metric for c in result.moved] == ["test.accuracy"] and not result.cross_hardware
    # Another processor: the move is inside the hardware band, and the report says the check was not exact.
    result = check(other, ref, abs_tol=1e-4, hardware_tol=0.05)
    assert result.ok and len(result.cross_hardware) == len(ref)
    report = format_result(result)
    assert "other hardware" in report and cpu_b in report and f"{len(ref)} run(s) on other hardware" in report
    # ... but not a move beyond it, and not without --hardware-tol.
    assert not check(other, ref, abs_tol=1e-4, hardware_tol=move / 2).ok
    assert not check(other, ref, abs_tol=1e-4).ok
    # A reference from before records named their hardware counts as other hardware.
    legacy = reference_runs()
    for rec in legacy:
        del rec["throughput"]["hardware"]
    assert check(_on(rerun(legacy), cpu_a), legacy, abs_tol=1e-4, hardware_tol=0.05).cross_hardware


def test_negative_band_and_empty_reference_are_errors():
    with pytest.raises(SptbenchError):
        check([], reference_runs(), abs_tol=-1)
    with pytest.raises(SptbenchError, match="hardware-tol"):
        check([], reference_runs(), hardware_tol=-0.1)
    with pytest.raises(SptbenchError, match="no successful runs"):
        check([], [])


# ---------------------------------------------------------------------------------------------------- CLI


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sptbench")
    cli_results.register(p.add_subparsers(dest="command", required=True))
    return p


def run_cli(*argv: str) -> int:
    args = parser().parse_args(list(argv))
    return args.func(args)


@pytest.fixture
def results(tmp_path):
    """A results directory holding the reference runs as the lead's runner would write them."""
    ref = reference_runs()
    path = table_path(tmp_path / "results", "roberta-large", "16shot")
    for rec in ref:
        append_record(path, rec)
    return tmp_path / "results", path, ref


def test_cli_table(results, capsys, tmp_path):
    root, _, _ = results
    assert run_cli("table", "--results-dir", str(root), "--tasks", "rte,sst2", "--methods", "spt", "lora") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("| method") and "| spt " in out.splitlines()[2]
    readme = tmp_path / "README.md"
    readme.write_text("<!-- sptbench:table few -->\n<!-- /sptbench:table few -->\n")
    run_cli("table", "--results-dir", str(root), "--format", "latex", "--readme", str(readme), "--block", "few")
    assert r"\begin{tabular}" in readme.read_text()
    out_file = tmp_path / "t.csv"
    run_cli("table", "--results-dir", str(root), "--format", "csv", "--out", str(out_file))
    assert out_file.read_text().startswith("method,rte,rte_std")
    with pytest.raises(SptbenchError, match="together"):
        run_cli("table", "--results-dir", str(root), "--readme", str(readme))


def test_cli_check(results, capsys, tmp_path):
    root, ref_path, ref = results
    fresh_path = tmp_path / "fresh.yaml"
    for rec in rerun(ref):
        append_record(fresh_path, rec)
    assert run_cli("check", "--against", str(ref_path), str(fresh_path)) == 0
    assert "check OK" in capsys.readouterr().out
    bad = rerun(ref)
    find(bad, "spt", "sst2", 42)["metrics"]["test"]["accuracy"] -= 0.05
    bad_path = tmp_path / "bad.yaml"
    for rec in bad:
        append_record(bad_path, rec)
    assert run_cli("check", "--against", str(ref_path), str(bad_path), "--abs-tol", "0.01") == 1
    assert "test.accuracy" in capsys.readouterr().out
    assert run_cli("check", "--against", str(ref_path), str(bad_path), "--abs-tol", "0.1") == 0


def test_cli_show(results, capsys):
    root, _, ref = results
    assert run_cli("show", ref[4]["run_id"], "--results-dir", str(root)) == 0
    assert yaml.safe_load(capsys.readouterr().out) == ref[4]
    with pytest.raises(SptbenchError, match="no record"):
        run_cli("show", "nope", "--results-dir", str(root))


def test_cli_validate(results, capsys, tmp_path):
    root, _, ref = results
    assert run_cli("validate", "--results-dir", str(root)) == 0
    assert f"ok: {len(ref)} record(s) valid" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    rec = make_record()
    rec["protocol"]["seed"] = None
    bad.write_text(yaml.safe_dump(rec, explicit_start=True))
    assert run_cli("validate", str(bad)) == 1
    assert f"{bad}:2: field 'protocol.seed' is null" in capsys.readouterr().out


def test_invalid_records_are_a_user_error():
    broken = make_record(protocol__shots=0)
    with pytest.raises(SptbenchError, match="protocol.shots must be positive"):
        check([broken], reference_runs())
