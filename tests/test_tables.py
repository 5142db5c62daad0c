"""Tests for sptbench/reports/tables.py: cell statistics, markings, notes, the three formats and README blocks."""

from __future__ import annotations

import csv
import io
import random
import re
import statistics

import pytest

from sptbench.core.errors import SptbenchError
from sptbench.reports.readme import update_readme_block
from sptbench.reports.tables import build_table, cell_metric, latex_escape, render
from tests.helpers import make_record

TASKS = ("rte", "sst2")
METHODS = ("lora", "prompt_tuning", "spt")
SEEDS = (13, 21, 42)


def grid(**overrides) -> list[dict]:
    """Every method x task x seed, with random test accuracies."""
    return [
        make_record(method__name=m, task__name=t, protocol__seed=s, data__fingerprint=f"fp-{t}-{s}", **overrides)
        for m in METHODS
        for t in TASKS
        for s in SEEDS
    ]


def test_cells_are_mean_and_sample_std_in_percent():
    records = grid()
    table = build_table(records)
    assert table.rows == list(METHODS) and table.tasks == list(TASKS)
    md = render(table, "md")
    for m in METHODS:
        for t in TASKS:
            mine = [r for r in records if (r["method"]["name"], r["task"]["name"]) == (m, t)]
            values = [100 * r["metrics"]["test"]["accuracy"] for r in mine]
            cell = table.cells[m, t]
            assert cell.mean == pytest.approx(statistics.mean(values))
            assert cell.std == pytest.approx(statistics.stdev(values))
            assert f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}" in md
        expected_avg = statistics.mean(table.cells[m, t].mean for t in TASKS)
        assert table.avg[m] == pytest.approx(expected_avg)


def test_single_seed_std_is_zero_and_short_cells_are_annotated():
    records = grid()
    records = [r for r in records if not (r["method"]["name"] == "spt" and r["protocol"]["seed"] == 42)]
    records += [make_record(method__name="solo", task__name="rte", protocol__seed=13)]
    table = build_table(records)
    md = render(table, "md")
    assert table.expected_seeds == 3
    assert table.cells["solo", "rte"].std == 0.0
    spt_row = next(line for line in md.splitlines() if line.startswith("| spt"))
    assert spt_row.count("(n=2)") == 2
    assert "(n=3)" not in md
    assert "(n=1)" in next(line for line in md.splitlines() if line.startswith("| solo"))
    assert "(n=" not in render(build_table(records, expected_seeds=1), "md").split("\n\n")[0]


def test_best_mean_per_column_is_bold():
    records = grid()
    for r in records:  # make spt best on rte, lora best on sst2
        best = (r["method"]["name"], r["task"]["name"]) in {("spt", "rte"), ("lora", "sst2")}
        r["metrics"]["test"]["accuracy"] = random.uniform(0.96, 0.99) if best else random.uniform(0.5, 0.9)
    table = build_table(records)
    assert table.best["rte"] == {"spt"} and table.best["sst2"] == {"lora"}
    md_rows = {line.split("|")[1].strip(): line.split("|")[2:4] for line in render(table, "md").splitlines()[2:5]}
    assert "**" in md_rows["spt"][0] and "**" not in md_rows["spt"][1]
    assert "**" in md_rows["lora"][1] and "**" not in md_rows["lora"][0]
    assert "**" not in "".join(md_rows["prompt_tuning"])
    latex = render(table, "latex")
    spt_cells = next(line for line in latex.splitlines() if line.strip().startswith("spt")).split("&")[1:3]
    assert r"\textbf{" in spt_cells[0] and r"\textbf{" not in spt_cells[1]


def test_duplicate_key_uses_latest_and_says_so():
    records = grid()
    old = next(r for r in records if r["method"]["name"] == "spt" and r["task"]["name"] == "rte")
    seed, later = old["protocol"]["seed"], "2027-01-01T00:00:00+00:00"
    same = {"protocol__seed": seed, "data__fingerprint": old["data"]["fingerprint"]}
    newer = make_record(method__name="spt", task__name="rte", created=later, **same)
    newer["metrics"]["test"]["accuracy"] = 0.123
    table = build_table([newer, *records])  # the newer one first: order must not matter, `created` does
    assert 12.3 in table.cells["spt", "rte"].values
    assert 100 * old["metrics"]["test"]["accuracy"] not in table.cells["spt", "rte"].values
    assert table.cells["spt", "rte"].n == 3
    assert any("duplicate" in n and old["run_id"] in n for n in table.notes)
    assert "duplicate" in render(table, "md")


def test_task_version_mismatch_is_flagged():
    records = grid()
    records = [r for r in records if not (r["method"]["name"] == "lora" and r["task"]["name"] == "sst2")]
    records += [make_record(method__name="lora", task__name="sst2", task__version=2, protocol__seed=s) for s in SEEDS]
    table = build_table(records)
    assert table.version_mismatch == {"sst2"}
    assert any("sst2" in n and "[1, 2]" in n for n in table.notes)
    header = render(table, "md").splitlines()[0]
    assert "sst2 †" in header and "rte †" not in header
    assert build_table(grid()).version_mismatch == set()


def test_cells_mixing_configurations_are_marked():
    records = grid() + [make_record(method__name="spt", task__name="rte", protocol__seed=99, training__lr=0.01)]
    table = build_table(records)
    assert table.cells["spt", "rte"].mixed and not table.cells["spt", "sst2"].mixed  # fingerprints differ per seed
    assert "‡" in render(table, "md")


def test_failed_runs_are_not_counted_but_reported():
    records = grid()
    failed = [
        make_record(method__name="spt", task__name="rte", status="failed", error="nan loss", metrics=None)
        for _ in range(2)
    ]
    table = build_table(records + failed)
    assert table.n_failed == 2
    assert table.cells["spt", "rte"].n == 3
    assert any(n.startswith("2 failed run(s) not counted") for n in table.notes)
    assert not any("(sample)" in n or "(lm-bff)" in n for n in table.notes)  # one split source: not named
    sampled = make_record(method__name="spt", task__name="rte", status="failed", error="nan loss", metrics=None)
    sampled["protocol"]["split_source"] = "lm-bff" if sampled["protocol"]["split_source"] == "sample" else "sample"
    note = next(n for n in build_table(records + failed + [sampled]).notes if "failed run(s)" in n)
    assert f"seed={sampled['protocol']['seed']} ({sampled['protocol']['split_source']})" in note


def test_cell_metric_follows_selection_metric():
    test = {"accuracy": 0.8, "f1": 0.9, "acc_and_f1": 0.85}
    pair = make_record(metrics__selection_metric="acc_and_f1", metrics__test=test)
    assert cell_metric(pair) == 0.85
    as_runner_writes = make_record(metrics__selection_metric="acc_f1", metrics__test={"accuracy": 0.8, "score": 0.7})
    assert cell_metric(as_runner_writes) == 0.7
    fallback = make_record(metrics__selection_metric="acc_and_f1", metrics__test={"accuracy": 0.8})
    assert cell_metric(fallback) == 0.8
    assert cell_metric(make_record(metrics__test={"f1": 0.5})) is None


def test_parameter_and_throughput_columns():
    records = grid(params__trainable=150_000, params__backbone=100_000_000)
    for r in records:
        r["throughput"]["train_samples_per_s"] = {"lora": 16.0, "prompt_tuning": 13.0, "spt": 10.0}[r["method"]["name"]]
    md = render(build_table(records), "md")
    lora = next(line for line in md.splitlines() if line.startswith("| lora"))
    assert "0.15M (0.15%)" in lora and lora.rstrip("| ").endswith("16.0")


def test_markdown_is_a_pipe_table_with_right_column_count():
    table = build_table(grid())
    lines = render(table, "md").split("\n\n")[0].splitlines()
    ncols = 1 + len(TASKS) + 3
    assert len(lines) == 2 + len(METHODS)
    for line in lines:
        assert line.startswith("|") and line.endswith("|")
        assert len(re.split(r"(?<!\\)\|", line)) - 2 == ncols
    assert re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[1])


def test_latex_is_balanced_and_escaped():
    records = grid()
    for r in records:
        r["task"]["name"] = r["task"]["name"] + "_x"
    latex = render(build_table(records), "latex")
    assert latex.count(r"\begin{tabular}") == latex.count(r"\end{tabular}") == 1
    assert latex.index(r"\begin{tabular}") < latex.index(r"\end{tabular}")
    assert re.search(r"(?<!\\)_", latex) is None, "unescaped underscore"
    assert r"prompt\_tuning" in latex and r"rte\_x" in latex
    assert "±" not in latex and r"$\pm$" in latex
    assert latex.count("{") - latex.count(r"\{") == latex.count("}") - latex.count(r"\}")
    assert re.search(r"(?<!\\)%", latex) is None, "unescaped percent"
    assert latex.count("$") % 2 == 0


def test_latex_escape():
    assert latex_escape("a_b & 5% #1 ± –") == r"a\_b \& 5\% \#1 $\pm$ --"


def test_csv_round_trips_numbers():
    records = grid()
    table = build_table(records)
    rows = list(csv.DictReader(io.StringIO(render(table, "csv"))))
    assert [r["method"] for r in rows] == list(METHODS)
    assert float(rows[0]["rte"]) == pytest.approx(table.cells["lora", "rte"].mean, abs=1e-4)
    assert int(rows[0]["rte_n"]) == 3


def test_filters_and_errors():
    records = grid()
    table = build_table(records, tasks=["sst2"], methods=["spt", "lora"])
    assert table.tasks == ["sst2"] and table.rows == ["spt", "lora"]
    with pytest.raises(SptbenchError, match="Did you mean 'sst2'"):
        build_table(records, tasks=["sst"])
    mixed = records + [make_record(backbone__id="bert-base-uncased")]
    with pytest.raises(SptbenchError, match="several backbones"):
        build_table(mixed)
    assert build_table(mixed, backbone="bert-base-uncased").rows == ["prompt_tuning"]
    settings = records + [make_record(protocol__shots=None, protocol__train_size=1000)]
    with pytest.raises(SptbenchError, match="several settings"):
        build_table(settings)
    assert build_table(settings, train_size=1000).setting == "n1000"
    assert build_table(settings, shots=16).setting == "16shot"
    with pytest.raises(SptbenchError, match="no records"):
        build_table(records, shots=32)
    with pytest.raises(SptbenchError, match="unknown table format"):
        render(build_table(records), "html")


def test_method_with_two_configs_gets_two_rows():
    records = grid() + [make_record(method__name="spt", method__config={"budget": 4}, task__name="rte")]
    table = build_table(records)
    spt_rows = [r for r in table.rows if r.startswith("spt")]
    assert len(spt_rows) == 2 and all(" [" in r for r in spt_rows)
    assert any("spt ran with 2 method configs" in n for n in table.notes)


README = "# Title\n\nintro\n<!-- sptbench:table main -->\nold table\n<!-- /sptbench:table main -->\n\nfooter\n"


def test_update_readme_block_round_trip(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    update_readme_block(readme, "main", "| a |\n|---|\n| 1 |\n")
    text = readme.read_text()
    assert "old table" not in text
    assert text == README.replace("old table\n", "| a |\n|---|\n| 1 |\n")
    update_readme_block(readme, "main", "old table")
    assert readme.read_text() == README


def test_update_readme_block_errors(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    with pytest.raises(SptbenchError, match="sptbench:table other"):
        update_readme_block(readme, "other", "x")
    reversed_markers = "<!-- /sptbench:table main -->\n<!-- sptbench:table main -->\n"
    readme.write_text(reversed_markers)
    with pytest.raises(SptbenchError, match="before"):
        update_readme_block(readme, "main", "x")
    assert readme.read_text() == reversed_markers


def test_invalid_records_are_a_user_error_not_a_crash():
    broken = make_record()
    del broken["params"]
    with pytest.raises(SptbenchError, match="1 invalid record.*missing field 'params'"):
        build_table(grid() + [broken])


def test_unmeasured_throughput_shows_a_dash():
    records = grid()
    for r in records:
        if r["method"]["name"] == "spt":
            r["throughput"]["train_samples_per_s"] = None
    md = render(build_table(records), "md")
    spt = next(line for line in md.splitlines() if line.startswith("| spt"))
    assert spt.rstrip("| ").endswith("–")


def test_select_by_dev_counts_the_ties_grid_order_decided(tmp_path, capsys):
    """Two LPT layers tie on dev for seed 13 (grid order decides) and not for seed 21; a dev loss breaks seed 42's
    tie: the note counts 1 of 3."""
    import yaml

    from sptbench.cli.main import main
    from tests.helpers import make_record

    records = []
    for seed, devs, losses in ((13, (0.7, 0.7), None), (21, (0.6, 0.8), None), (42, (0.7, 0.7), (0.5, 0.4))):
        for index, layer in enumerate((1, 3)):
            r = make_record(method__name="lpt", method__config={"layer": layer}, protocol__seed=seed)
            r["metrics"]["dev"] = {"accuracy": devs[index], "score": devs[index]}
            if losses:
                r["metrics"]["dev"]["loss"] = losses[index]
            r["sweep"] = {"name": "g", "config_index": index, "configs": 2}
            records.append(r)
    table = tmp_path / "t.yaml"
    table.write_text("".join(yaml.safe_dump(r, sort_keys=False, explicit_start=True) for r in records))
    assert main(["table", str(table), "--select-by-dev"]) == 0
    assert "decided by grid order, the first configuration winning: lpt 1 of 3 selections" in capsys.readouterr().out
