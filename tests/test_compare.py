"""`sptbench compare`: paired differences over shared (task, seed) cells, on hand-made records."""

from __future__ import annotations

import random

import pytest

from sptbench.cli.main import main
from sptbench.core.errors import SptbenchError
from sptbench.records.io import append_record
from sptbench.reports.compare import compare, paired_stats, parse_side
from tests.helpers import make_record


def rec(method: str, task: str, seed: int, test: float, dev: float = 0.5, **config) -> dict:
    r = make_record(method__name=method, method__config=dict(config), task__name=task, protocol__seed=seed)
    r["metrics"] = {"selection_metric": "accuracy", "dev": {"accuracy": dev, "score": dev},
                    "test": {"accuracy": test, "score": test}}
    return r


def hand_made(rng: random.Random):
    """Two tasks x three seeds for a and b (+ one cell only a has); returns records and the differences in points."""
    records, diffs = [], {}
    for task in ("sst2", "trec"):
        for seed in (13, 21, 42):
            a, b = round(rng.uniform(0.5, 0.9), 4), round(rng.uniform(0.5, 0.9), 4)
            records += [rec("spt", task, seed, a), rec("lpt", task, seed, b)]
            diffs.setdefault(task, []).append(100 * (a - b))
    records.append(rec("spt", "mr", 13, 0.7))
    return records, diffs


def test_compare_gives_the_hand_computed_numbers():
    rng = random.Random(random.randrange(10**6))
    records, diffs = hand_made(rng)
    comp = compare(records, parse_side("spt"), parse_side("lpt"))
    assert comp.missing == ["mr 16shot seed 13"]
    everything = diffs["sst2"] + diffs["trec"]
    for stats, d in [(comp.per_task["sst2"], diffs["sst2"]), (comp.per_task["trec"], diffs["trec"]),
                     (comp.overall, everything)]:
        assert stats.n == len(d)
        assert stats.mean == pytest.approx(sum(d) / len(d))
        assert stats.low <= stats.mean <= stats.high
        assert min(d) - 1e-9 <= stats.low and stats.high <= max(d) + 1e-9  # never outside the data (float sums aside)
        assert (stats.wins, stats.ties, stats.losses) == (sum(x > 0 for x in d), sum(x == 0 for x in d),
                                                           sum(x < 0 for x in d))


def test_paired_stats_known_values():
    s = paired_stats([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert s.mean == 3.5 and (s.wins, s.ties, s.losses) == (6, 0, 0)
    assert s.p_wilcoxon == pytest.approx(0.03125)  # exact two-sided: 2 / 2**6
    assert 2.0 <= s.low < 3.5 < s.high <= 5.0
    same = paired_stats([0.0, 0.0, 0.0])
    assert same.mean == 0 and same.low == same.high == 0 and same.p_wilcoxon is None and same.ties == 3


def test_several_configurations_need_a_filter_or_dev_selection():
    records = []
    for seed in (13, 21):
        records += [rec("spt", "sst2", seed, 0.7)]
        records += [rec("lpt", "sst2", seed, 0.6 + layer / 100, dev=0.5 + layer / 10, layer=layer) for layer in (1, 3)]
    with pytest.raises(SptbenchError, match="2 configurations"):
        compare(records, parse_side("spt"), parse_side("lpt"))
    middle = compare(records, parse_side("spt"), parse_side("lpt:layer=1"))
    assert middle.overall.mean == pytest.approx(9.0)
    by_dev = compare(records, parse_side("spt"), parse_side("lpt"), select=True)
    assert by_dev.overall.mean == pytest.approx(7.0)  # layer 3 is best on dev


def test_cli_compare(tmp_path, capsys):
    records, diffs = hand_made(random.Random(5))
    table = tmp_path / "t.yaml"
    for r in records:
        append_record(table, r)
    assert main(["compare", "spt", "lpt", str(table), "--tasks", "sst2"]) == 0
    out = capsys.readouterr().out
    assert "| sst2" in out and "| trec" not in out and f"{sum(diffs['sst2']) / 3:+.2f}" in out
    assert main(["compare", "spt", "lpt", str(table), "--tasks", "mr"]) == 2  # only spt has mr
    assert "no (task, seed) cell" in capsys.readouterr().err
    readme = tmp_path / "README.md"  # a generated README block, as `table` writes them
    readme.write_text("intro\n<!-- sptbench:table cmp -->\nold\n<!-- /sptbench:table cmp -->\nend\n")
    block = ["--readme", str(readme), "--block", "cmp"]
    assert main(["compare", "spt", "lpt", str(table), "--tasks", "sst2", *block]) == 0
    text = readme.read_text()
    assert capsys.readouterr().out == "" and "old" not in text and out.strip() in text and text.endswith("end\n")
    assert main(["compare", "spt", "lpt", str(table), "--readme", str(readme)]) == 2
    assert "--readme and --block go together" in capsys.readouterr().err


def test_selection_over_a_grid_not_fully_recorded_is_flagged(tmp_path, capsys):
    """A sweep in progress: seed 13 has all three LPT layers of its sweep's grid, seed 21 only one. Table and
    compare still select on dev, and say which selections may change; a complete grid, or a config filter that
    narrows the grid on purpose, says nothing."""
    rng = random.Random(random.randrange(10**6))
    records = []
    for seed, layers in ((13, (1, 3, 5)), (21, (1,))):
        records.append(rec("spt", "sst2", seed, round(rng.uniform(0.5, 0.9), 4)))
        for index, layer in enumerate(layers):
            r = rec("lpt", "sst2", seed, round(rng.uniform(0.5, 0.9), 4), dev=round(rng.uniform(0.5, 0.9), 4),
                    layer=layer)
            r["sweep"] = {"name": "grid", "config_index": index, "configs": 3}
            records.append(r)
    table = tmp_path / "t.yaml"
    for r in records:
        append_record(table, r)
    note = "lpt: 1 of 2 dev selections ran over an incomplete grid (as few as 1 of 3 configurations recorded)"
    assert note in compare(records, parse_side("spt"), parse_side("lpt"), select=True).partial[0]
    assert compare(records, parse_side("spt"), parse_side("lpt:layer=1"), select=True).partial == []
    assert main(["table", str(table), "--select-by-dev"]) == 0
    assert note in capsys.readouterr().out
    assert main(["compare", "spt", "lpt", str(table), "--select-by-dev"]) == 0
    assert note in capsys.readouterr().out
    complete = [r for r in records if r["protocol"]["seed"] == 13]
    assert compare(complete, parse_side("spt"), parse_side("lpt"), select=True).partial == []
    complete_table = tmp_path / "complete.yaml"
    for r in complete:
        append_record(complete_table, r)
    assert main(["table", str(complete_table), "--select-by-dev"]) == 0
    assert "incomplete grid" not in capsys.readouterr().out


@pytest.mark.parametrize("a, b, tasks, message", [
    ("spt", "lptt", None, "unknown method in these records 'lptt'. Did you mean 'lpt'? Choices: lpt, spt"),
    ("spt", "spt", None, "compare needs two different sides, got 'spt' twice"),
    ("spt", "lpt:layr=3", None, "unknown config key of lpt 'layr'. Did you mean 'layer'? Choices: generator, layer"),
    ("spt", "lpt:layer=4", None, "no lpt record has layer=4; recorded: 1, 3"),
    ("spt", "lpt:layer=", None, "'lpt:layer=': a config filter is key=value, got 'layer='"),
    ("spt", "lpt:", None, "'lpt:': no config filter after ':' (e.g. lpt:layer=3)"),
    ("spt", "lpt:layer=1", ["sst2", "qqp"], "unknown task in these records 'qqp'. Choices: sst2"),
])
def test_compare_names_what_the_records_hold(tmp_path, capsys, a, b, tasks, message):
    """An unknown method, config key or value, or task is one line listing what the records have, never the vague
    'no cell has both'; a side compared with itself is an error."""
    table = tmp_path / "t.yaml"
    for seed in (13, 21):
        append_record(table, rec("spt", "sst2", seed, 0.7))
        for layer in (1, 3):
            append_record(table, rec("lpt", "sst2", seed, 0.6, layer=layer))
    argv = ["compare", a, b, str(table), "--select-by-dev"] + (["--tasks", *tasks] if tasks else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"sptbench: error: {message}"]
