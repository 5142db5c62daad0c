"""`sptbench compare`: paired differences over shared (task, seed) cells, on hand-made records."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import numpy as np
import pytest
from scipy import stats as sps

from sptbench.cli.main import main
from sptbench.core.errors import SptbenchError
from sptbench.records.io import append_record
from sptbench.reports.compare import compare, compare_family, parse_side
from sptbench.reports.stats import blocked_stats
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
    """Per task: the paired t-interval of that task's differences; overall: the mean of the task means with the
    pooled within-task residual SD, df = pairs - tasks (hand-computed here with numpy and scipy.stats.t)."""
    rng = random.Random(random.randrange(10**6))
    records, diffs = hand_made(rng)
    comp = compare(records, parse_side("spt"), parse_side("lpt"))
    assert comp.missing == ["mr 16shot seed 13"]
    for task in ("sst2", "trec"):
        s, d = comp.per_task[task], diffs[task]
        low, high = sps.ttest_1samp(d, 0.0).confidence_interval(0.95)
        assert (s.n, s.df) == (3, 2) and s.mean == pytest.approx(np.mean(d))
        assert (s.low, s.high) == (pytest.approx(low), pytest.approx(high))
        assert (s.wins, s.ties, s.losses) == (sum(x > 0 for x in d), sum(x == 0 for x in d), sum(x < 0 for x in d))
    o = comp.overall
    means = [np.mean(diffs[t]) for t in ("sst2", "trec")]
    resid = [x - m for t, m in zip(("sst2", "trec"), means, strict=True) for x in diffs[t]]
    sd = math.sqrt(sum(r * r for r in resid) / (6 - 2))
    half = sps.t.ppf(0.975, 4) * sd / math.sqrt(6)
    assert (o.n, o.tasks, o.df) == (6, 2, 4) and o.mean == pytest.approx(np.mean(means))
    assert (o.sd, o.low, o.high) == (pytest.approx(sd), pytest.approx(o.mean - half), pytest.approx(o.mean + half))
    assert 0 < o.p_sign_flip <= 1 and comp.diffs == diffs


def test_a_seed_pairs_within_its_split_source():
    """One seed's LM-BFF split and its sampled split are two cells: spt's lm-bff seed-13 record pairs with lpt's
    lm-bff seed-13 record, never with lpt's sampled one; labels name the split source only where sources mix."""
    rng = random.Random(random.randrange(10**6))
    scores = {(m, src, seed): round(rng.uniform(0.5, 0.9), 4)
              for m in ("spt", "lpt") for src in ("lm-bff", "sample") for seed in (13, 21)}
    records = []
    for (m, src, seed), score in scores.items():
        records.append(rec(m, "sst2", seed, score))
        records[-1]["protocol"]["split_source"] = src
    expected = [100 * (scores["spt", src, seed] - scores["lpt", src, seed])
                for src, seed in itertools.product(("lm-bff", "sample"), (13, 21))]
    comp = compare(records, parse_side("spt"), parse_side("lpt"))
    assert comp.overall.n == 4 and comp.missing == []
    assert sorted(comp.diffs["sst2"]) == pytest.approx(sorted(expected))
    lm_bff = [r for r in records if r["protocol"]["split_source"] == "lm-bff"]
    only_13 = [r for r in records if not (r["method"]["name"] == "lpt" and r["protocol"]["seed"] == 13
                                          and r["protocol"]["split_source"] == "lm-bff")]
    paired = compare(only_13, parse_side("spt"), parse_side("lpt"))  # lpt's lm-bff seed 13 is gone: no pair for it
    assert paired.overall.n == 3 and paired.missing == ["sst2 16shot seed 13 (split lm-bff)"]
    assert sorted(paired.diffs["sst2"]) == pytest.approx(sorted(
        100 * (scores["spt", src, seed] - scores["lpt", src, seed])
        for src, seed in (("lm-bff", 21), ("sample", 13), ("sample", 21))))
    one_source = compare([r for r in lm_bff if (r["method"]["name"], r["protocol"]["seed"]) != ("lpt", 13)],
                         parse_side("spt"), parse_side("lpt"))
    assert one_source.missing == ["sst2 16shot seed 13"]  # one split source: labels as before


def test_cli_split_source_and_seeds_filters(tmp_path, capsys):
    """`compare`/`table` with `--split-source` read only the records of that split source; with `--seeds`, only
    those seeds'."""
    rng = random.Random(random.randrange(10**6))
    table = tmp_path / "t.yaml"
    scores = {}
    for m, src, seed in itertools.product(("spt", "lpt"), ("lm-bff", "sample"), (13, 21, 42)):
        scores[m, src, seed] = round(rng.uniform(0.5, 0.9), 4)
        r = rec(m, "sst2", seed, scores[m, src, seed])
        r["protocol"]["split_source"] = src
        append_record(table, r)
    for src in ("lm-bff", "sample"):
        assert main(["compare", "spt", "lpt", str(table), "--split-source", src]) == 0
        mean = sum(100 * (scores["spt", src, s] - scores["lpt", src, s]) for s in (13, 21, 42)) / 3
        out = capsys.readouterr().out
        assert "| **all** | 3 " in out and f"{mean:+.2f}" in out
        assert main(["table", str(table), "--split-source", src, "--methods", "spt"]) == 0
        spt = [100 * scores["spt", src, s] for s in (13, 21, 42)]
        assert f"{sum(spt) / 3:.1f} ± {statistics.stdev(spt):.1f}" in capsys.readouterr().out
    # --seeds: only those seeds (both sources), e.g. a table frozen at its first seeds while later ones arrive
    assert main(["compare", "spt", "lpt", str(table), "--seeds", "13", "42"]) == 0
    mean = sum(100 * (scores["spt", src, s] - scores["lpt", src, s]) for src in ("lm-bff", "sample") for s in (13, 42))
    out = capsys.readouterr().out
    assert "| **all** | 4 " in out and f"{mean / 4:+.2f}" in out
    assert main(["table", str(table), "--seeds", "21", "--split-source", "sample", "--methods", "lpt"]) == 0
    assert f"{100 * scores['lpt', 'sample', 21]:.1f} ± 0.0" in capsys.readouterr().out
    assert main(["compare", "spt", "lpt", str(table), "--split-source", "nope"]) == 2
    assert main(["table", str(table), "--seeds", "-1"]) == 2


def test_blocked_stats_known_values():
    s = blocked_stats({"t": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]})
    assert s.mean == 3.5 and (s.wins, s.ties, s.losses) == (6, 0, 0)
    assert s.p_sign_flip == pytest.approx(2 / 2**6) and s.exact  # only all-plus and all-minus are as extreme
    assert s.p_wilcoxon == pytest.approx(0.03125)  # exact two-sided signed-rank: 2 / 2**6
    same = blocked_stats({"t": [0.0, 0.0, 0.0]})
    assert same.mean == 0 and same.p_sign_flip is None and same.p_wilcoxon is None and same.ties == 3
    with_ties = blocked_stats({"t": [0.0, 1.0, 2.0, 3.0]})  # Pratt: the zero is ranked, then dropped
    assert with_ties.p_wilcoxon == pytest.approx(sps.wilcoxon([0.0, 1.0, 2.0, 3.0], zero_method="pratt").pvalue)


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


def test_dev_ties_are_counted_and_their_sensitivity_shown():
    """Two LPT layers tie on dev in every cell: grid order picks the first (layer 1); the note counts the tied
    cells and moves the mean by what the last tied layer (layer 3) would have given, computed by hand."""
    records = []
    for seed, (t1, t3) in zip((13, 21, 42), ((0.60, 0.70), (0.62, 0.66), (0.58, 0.58)), strict=True):
        records.append(rec("spt", "sst2", seed, 0.65))
        for index, (layer, test) in enumerate(((1, t1), (3, t3))):
            r = rec("lpt", "sst2", seed, test, dev=0.75, layer=layer)
            r["sweep"] = {"name": "grid", "config_index": index, "configs": 2}
            records.append(r)
    comp = compare(records, parse_side("spt"), parse_side("lpt"), select=True)
    assert comp.overall.mean == pytest.approx(100 * (0.65 - np.mean([0.60, 0.62, 0.58])))
    shift = -100 * np.mean([0.70 - 0.60, 0.66 - 0.62, 0.0])
    assert comp.ties == [f"lpt: 3 of 3 cells tied on dev between configurations and were decided by grid order (the "
                         f"first); with the last tied configuration instead, over the 3 such cells whose tied "
                         f"configurations all have a test score, the overall mean difference moves by {shift:+.2f}"]


def test_a_lower_dev_loss_breaks_a_dev_tie():
    """Tied on dev accuracy, the configuration with the lower dev loss wins, whatever its grid position."""
    records = [rec("spt", "sst2", 13, 0.65)]
    for index, (layer, test, loss) in enumerate(((1, 0.60, 0.70), (3, 0.70, 0.40))):
        r = rec("lpt", "sst2", 13, test, dev=0.75, layer=layer)
        r["metrics"]["dev"]["loss"] = loss
        r["sweep"] = {"name": "grid", "config_index": index, "configs": 2}
        records.append(r)
    comp = compare(records, parse_side("spt"), parse_side("lpt"), select=True)
    assert comp.overall.mean == pytest.approx(100 * (0.65 - 0.70)) and comp.ties == []


def test_a_family_gets_holm_adjusted_p_values(tmp_path, capsys):
    records, _ = hand_made(random.Random(9))
    records += [rec("prompt_tuning", r["task"]["name"], r["protocol"]["seed"], 0.5) for r in records
                if r["method"]["name"] == "lpt"]
    pairs = [(parse_side("spt"), parse_side("lpt")), (parse_side("spt"), parse_side("prompt_tuning")),
             (parse_side("lpt"), parse_side("prompt_tuning"))]
    comps, skipped = compare_family(records, pairs)
    assert skipped == []
    raw = [c.overall.p_sign_flip for c in comps]
    order = sorted(range(3), key=lambda i: raw[i])
    expected, running = [0.0] * 3, 0.0
    for rank, i in enumerate(order):  # Holm by hand
        running = max(running, min(1.0, (3 - rank) * raw[i]))
        expected[i] = running
    assert [c.p_holm for c in comps] == pytest.approx(expected) and {c.family_size for c in comps} == {3}
    table = tmp_path / "t.yaml"
    table.write_text("".join(__import__("yaml").safe_dump(r, sort_keys=False, explicit_start=True) for r in records))
    family = tmp_path / "family.yaml"
    family.write_text("name: demo\npairs:\n  - [spt, lpt]\n  - [spt, prompt_tuning]\n  - [lpt, prompt_tuning]\n")
    assert main(["compare", "--family", str(family), str(table)]) == 0
    out = capsys.readouterr().out
    assert "family demo: 3 comparison(s), Holm-adjusted" in out and "| spt - prompt_tuning" in out
    assert main(["compare", str(table), "--pair", "spt", "lpt", "--pair", "spt", "prompt_tuning"]) == 0
    assert "2 comparison(s)" in capsys.readouterr().out
    family.write_text("pairs: [[spt]]\n")
    assert main(["compare", "--family", str(family), str(table)]) == 2
    assert f"{family}: pairs must be a non-empty list" in capsys.readouterr().err
    assert main(["compare", str(table)]) == 2
    assert "compare needs two sides" in capsys.readouterr().err


def test_power_planning_from_pilot_records(tmp_path, capsys):
    """`--effect` answers "how many seeds must my next sweep have": the pairs the blocked t-test needs at the SD the
    records show (reports/stats.pairs_needed), and seeds per task."""
    from sptbench.reports import stats

    records, diffs = hand_made(random.Random(17))
    table = tmp_path / "t.yaml"
    for r in records:
        append_record(table, r)
    assert main(["compare", "spt", "lpt", str(table), "--effect", "1.5"]) == 0
    out = capsys.readouterr().out
    sd, _ = stats.pooled_sd(diffs)
    n = stats.pairs_needed(1.5, sd, 2)
    assert f"within-task SD of the differences {sd:.2f}" in out
    assert f"1.5 point(s): {n} ({math.ceil(n / 2)} seeds per task)" in out
