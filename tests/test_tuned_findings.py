"""scripts/tuned_findings.py: one row per comparison, each equal to `sptbench compare A B --select-by-dev`'s overall
line on the same records (learning-rate grids for every method, a layer grid for LPT)."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest
import yaml

from sptbench.records.io import validate_paths
from sptbench.reports.compare import compare, parse_side
from tests.helpers import make_record

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "tuned_findings.py"
spec = importlib.util.spec_from_file_location("tuned_findings", SCRIPT)
tuned = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tuned)


def grid_records(rng: random.Random) -> list[dict]:
    records = []
    for task in ("sst2", "trec"):
        for seed in (13, 21, 42):
            for method, layers in (("prompt_tuning", [None]), ("p_tuning_v2", [None]), ("lpt", [1, 3, 5]),
                                   ("spt", [None]), ("spt_darts", [None])):
                for layer in layers:
                    for lr in (1e-3, 3e-3, 1e-2):
                        rec = make_record(method={"name": method, "config": {} if layer is None else {"layer": layer}},
                                          task__name=task, protocol__seed=seed, training__lr=lr)
                        rec["run_id"] = f"{method}-{task}-{seed}-{layer}-{lr}"
                        rec["metrics"] = {"selection_metric": "accuracy", "dev": {"score": rng.randrange(33) / 32},
                                          "test": {"score": round(rng.uniform(0.5, 0.9), 4)}}
                        records.append(rec)
    return records


def write_table(tmp_path: Path, records: list[dict]) -> Path:
    table = tmp_path / "t.yaml"  # one write (append_record re-reads the table per record)
    table.write_text("".join(yaml.safe_dump(r, sort_keys=False, explicit_start=True) for r in records))
    assert validate_paths([table]) == []
    return table


def test_each_row_is_compare_select_by_dev(tmp_path: Path, capsys) -> None:
    records = grid_records(random.Random(21))
    table = write_table(tmp_path, records)
    assert tuned.main([str(table), "--shots", "16", "--middle-layer", "3"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| s")}
    assert len(rows) == 5 and "left out" not in out
    for a, b, label in tuned.comparisons(3):
        overall = compare(records, parse_side(a), parse_side(b), select=True).overall
        cells = [c.strip() for c in rows[f"{a} - {label}"].split("|")[2:-1]]
        assert cells[:5] == [str(overall.n), f"{overall.mean:+.2f}", f"[{overall.low:+.2f}, {overall.high:+.2f}]",
                             f"{overall.wins}/{overall.ties}/{overall.losses}", f"{overall.p_wilcoxon:.3g}"]
    # the middle layer is LPT at layer 3 only, the dev layer any of them: different pairs, so (here) different means
    assert rows["spt - lpt (middle layer 3)"] != rows["spt - lpt (dev layer)"]


def test_a_missing_side_is_left_out_and_said(tmp_path: Path, capsys) -> None:
    records = [r for r in grid_records(random.Random(3)) if r["method"]["name"] != "spt_darts"]
    table = write_table(tmp_path, records)
    readme = tmp_path / "README.md"
    readme.write_text("<!-- sptbench:table cmp -->\n<!-- /sptbench:table cmp -->\n")
    assert tuned.main([str(table), "--shots", "16", "--readme", str(readme), "--block", "cmp"]) == 0
    text = readme.read_text()
    assert "| spt - prompt_tuning" in text and "left out: spt_darts - spt" in text
    assert tuned.main([str(table), "--train-size", "1000"]) == 2
    assert "no comparison has records" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tuned.main([str(table), "--shots", "16", "--readme", str(readme)])
