"""Issue 18, item by item: a saved model loads exactly or not at all, no finished run is lost, every bad input gets
one clear line (exit 2, no traceback) before any training. Each test failed on the code before the fix (d626df1)."""

from __future__ import annotations

import random
import shutil
import stat

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import sptbench.run.runner as runner_mod
from sptbench.cli.main import build_parser
from sptbench.core.errors import SptbenchError
from sptbench.records.io import append_record, dump_record, read_records, read_table, validate_paths
from sptbench.run.persist import load_trained
from tests.helpers import make_record
from tests.helpers import run_cli as cli

FAST = {"max_steps": 2, "eval_every": 2, "batch_size": 4}



def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if any training starts: the bad input must be refused before."""

    def trained(*args, **kwargs):
        raise AssertionError("training started before the bad input was refused")

    monkeypatch.setattr(runner_mod, "train", trained)


def fresh_mirror(mirror, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(mirror, copy)
    return copy


def run_args(mirror, tmp_path, *extra: str) -> list[str]:
    return ["run", "--method", "head", "--task", "rte", "--shots", "4", "--model", "tiny-bert", "--data-dir",
            str(mirror), "--results-dir", str(tmp_path / "results"), "--max-steps", "2", "--eval-every", "2",
            "--batch-size", "4", "--quiet", *extra]


# ---------------------------------------------------------------------------------------------------- Why 1


@pytest.fixture
def saves(saved_runs):
    return saved_runs


def _lora_b(state: dict) -> str:
    return sorted(k for k in state if "lora_B" in k)[0]


MUTATIONS = {
    "drop head.weight": ("prompt_tuning", lambda s: s.pop("head.weight"), "head.weight"),
    "drop the prompt": ("prompt_tuning", lambda s: s.pop("injections.0.prompt"), "injections.0.prompt"),
    "drop a lora_B": ("lora", lambda s: s.pop(_lora_b(s)), "lora_B"),
    "head (2, 32) -> (1, 32)": ("prompt_tuning", lambda s: s.update({"head.weight": torch.ones(1, 32)}), "head.weight"),
    "prompt (20, 32) -> (1, 32)": ("prompt_tuning", lambda s: s.update({"injections.0.prompt": torch.ones(1, 32)}),
                                   "injections.0.prompt"),
    "lora matrix -> scalar": ("lora", lambda s: s.update({_lora_b(s): torch.tensor(0.5)}), "lora_B"),
    "head.weight as int64": ("prompt_tuning", lambda s: s.update({"head.weight": s["head.weight"].long()}),
                             "head.weight"),
    "extra tensor": ("lora", lambda s: s.update({"head.extra": torch.zeros(3)}), "head.extra"),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_why1_mutated_weights_are_refused_naming_file_and_tensor(saves, tmp_path, name):
    method, mutate, tensor = MUTATIONS[name]
    folder = tmp_path / "save"
    shutil.copytree(saves[method][0], folder)
    state = load_file(str(folder / "trained.safetensors"))
    mutate(state)
    save_file(state, str(folder / "trained.safetensors"))
    with pytest.raises(SptbenchError) as info:
        load_trained(folder)
    message = str(info.value)
    assert "trained.safetensors" in message and tensor in message and "\n" not in message


@pytest.mark.parametrize(
    "damage",
    ["pickle weights", "empty record", "record a list", "record without method", "missing weights"],
)
def test_why1_bad_files_are_one_line_errors(saves, tmp_path, damage):
    folder = tmp_path / "save"
    shutil.copytree(saves["prompt_tuning"][0], folder)
    if damage == "pickle weights":
        torch.save({"head.weight": torch.zeros(2, 32)}, folder / "trained.safetensors")
    elif damage == "empty record":
        (folder / "record.yaml").write_text("")
    elif damage == "record a list":
        (folder / "record.yaml").write_text("- 1\n- 2\n")
    elif damage == "record without method":
        rec = yaml.safe_load((folder / "record.yaml").read_text())
        del rec["method"]
        (folder / "record.yaml").write_text(yaml.safe_dump(rec))
    else:
        (folder / "trained.safetensors").unlink()
    with pytest.raises(SptbenchError) as info:
        load_trained(folder)
    assert str(folder) in str(info.value) and "\n" not in str(info.value)


def test_why1_an_intact_save_rebuilds_the_exact_parameters(saves):
    for folder, trained in saves.values():
        model, _ = load_trained(folder)
        saved = load_file(str(folder / "trained.safetensors"))
        rebuilt = model.export_state()
        assert rebuilt.keys() == saved.keys()
        for name, tensor in saved.items():
            assert torch.equal(rebuilt[name], tensor), name
        ids = torch.randint(1000, 5000, (2, 7), generator=torch.Generator().manual_seed(random.randrange(2**31)))
        with torch.no_grad():
            torch.testing.assert_close(model(ids, torch.ones_like(ids)), trained(ids, torch.ones_like(ids)))


# ---------------------------------------------------------------------------------------------------- Why 2


def _read_only_folder(tmp_path, mirror):
    results = tmp_path / "results"
    results.mkdir()
    results.chmod(0o555)
    return []


def _results_is_file(tmp_path, mirror):
    (tmp_path / "results").write_text("not a folder\n")
    return []


def _malformed_table(tmp_path, mirror):
    table = tmp_path / "results" / "v1" / "tiny-bert" / "4shot.yaml"
    table.parent.mkdir(parents=True)
    table.write_text("---\nrun_id: [unclosed\n")
    return []


def _config_shots_true(tmp_path, mirror):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("shots: true\n")
    return ["--config", str(cfg)]


def _save_dir_is_file(tmp_path, mirror):
    (tmp_path / "saved").write_text("a file\n")
    return ["--save-dir", str(tmp_path / "saved")]


def _save_dir_holds_a_run(tmp_path, mirror):
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "trained.safetensors").write_bytes(b"another run's weights")
    return ["--save-dir", str(tmp_path / "saved")]


@pytest.mark.parametrize(
    "setup",
    [_read_only_folder, _results_is_file, _malformed_table, _config_shots_true, _save_dir_is_file,
     _save_dir_holds_a_run],
)
def test_why2_results_and_save_locations_are_checked_before_training(mirror, tmp_path, capsys, no_training, setup):
    extra = setup(tmp_path, mirror)
    try:
        code, _, err = cli(run_args(mirror, tmp_path, *extra), capsys)
    finally:
        for path in (tmp_path / "results",):
            if path.is_dir():
                path.chmod(0o755)
    assert_one_line_error(code, err)
    if setup is _save_dir_holds_a_run:
        assert (tmp_path / "saved" / "trained.safetensors").read_bytes() == b"another run's weights"
        assert "--overwrite" in err


def test_why2_overwrite_lets_a_save_dir_be_replaced(mirror, tmp_path, capsys):
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "record.yaml").write_text("old\n")
    code, _, err = cli(run_args(mirror, tmp_path, "--save-dir", str(tmp_path / "saved"), "--overwrite"), capsys)
    assert code == 0, err
    assert load_trained(tmp_path / "saved")[0] is not None


def test_why2_a_record_that_cannot_be_written_is_recovered(mirror, tmp_path, capsys, monkeypatch):
    def disk_full(path, record):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runner_mod, "append_record", disk_full)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    code, _, err = cli(run_args(mirror, tmp_path), capsys)
    assert_one_line_error(code, err, "No space left on device")
    (recovered,) = tmp_path.glob("sptbench-record-*.yaml")
    assert str(recovered) in err
    (rec,) = read_table(recovered)
    assert rec["status"] == "ok" and rec["run_id"] in recovered.name and rec["metrics"]["test"]


# ---------------------------------------------------------------------------------------------------- Why 3


def test_why3_a_read_only_table_is_an_error_not_replaced(tmp_path):
    table = tmp_path / "t.yaml"
    append_record(table, make_record())
    table.chmod(0o444)
    before = table.read_bytes()
    with pytest.raises(SptbenchError, match="read-only"):
        append_record(table, make_record())
    assert table.read_bytes() == before and stat.S_IMODE(table.stat().st_mode) == 0o444


def test_why3_run_refuses_a_read_only_table_before_training(mirror, tmp_path, capsys, no_training):
    table = tmp_path / "results" / "v1" / "tiny-bert" / "4shot.yaml"
    table.parent.mkdir(parents=True)
    append_record(table, make_record())
    table.chmod(0o444)
    before = table.read_bytes()
    code, _, err = cli(run_args(mirror, tmp_path), capsys)
    assert_one_line_error(code, err, "read-only")
    assert table.read_bytes() == before


def test_why3_tables_keep_their_mode_across_appends(tmp_path):
    table = tmp_path / "t.yaml"
    append_record(table, make_record())
    mode = random.choice([0o600, 0o640, 0o664])
    table.chmod(mode)
    append_record(table, make_record())
    assert stat.S_IMODE(table.stat().st_mode) == mode and len(read_table(table)) == 2


# ---------------------------------------------------------------------------------------------------- Why 4


def _sweep(tmp_path, mirror, **over) -> str:
    body = {"name": "s", "model": "tiny-bert", "tasks": "rte", "methods": "head", "shots": 4, "seeds": [13, 21],
            "data_dir": str(mirror), "results_dir": str(tmp_path / "results"), "train": dict(FAST)}
    body.update(over)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(body))
    return str(path)


@pytest.mark.parametrize("over", [{"train": {**FAST, "lr": [-1, 0.01]}}, {"seeds": [-1, 2]},
                                  {"train": {**FAST, "patience": [0, 2]}}, {"seeds": [1.5]}])
def test_why4_every_grid_point_is_checked_in_dry_run(mirror, tmp_path, capsys, no_training, over):
    code, _, err = cli(["sweep", _sweep(tmp_path, mirror, **over), "--dry-run"], capsys)
    assert_one_line_error(code, err, "sweep.yaml")


def test_why4_a_run_failing_at_run_time_is_recorded_and_the_sweep_goes_on(mirror, tmp_path, capsys, monkeypatch):
    real = runner_mod.default_fit
    bad_seed = random.choice([13, 21])

    def flaky(method, ctx):
        if ctx.tcfg.seed == bad_seed:
            raise RuntimeError("boom in training")
        return real(method, ctx)

    monkeypatch.setattr(runner_mod, "default_fit", flaky)
    code, out, err = cli(["sweep", _sweep(tmp_path, mirror), "--quiet"], capsys)
    assert code == 1 and "Traceback" not in err
    records = read_records([tmp_path / "results"])
    status = {r["protocol"]["seed"]: r["status"] for r in records}
    assert status == {bad_seed: "failed", 34 - bad_seed: "ok"}
    assert "boom in training" in next(r["error"] for r in records if r["status"] == "failed")
    assert f"failed: head/rte 4shot seed {bad_seed}" in out and "1 ok, 1 failed" in out


# ---------------------------------------------------------------------------------------------------- Why 5


def _config(tmp_path, text: str | bytes) -> list[str]:
    path = tmp_path / "cfg.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return ["--config", str(path)]


CONFIG_VALUES = ["seed: abc\n", 'shots: "2"\n', "shots: 1.5\n", "set: [a, b]\n", "train: 5\n", "method: [head]\n",
                 b"task: rte\nmodel: tiny-\xff\xfebert\n", "max_steps: 3\n", "seed: 1.9\n", "results_dir: ''\n"]


@pytest.mark.parametrize("flags", [["--lr", "-1"], ["--lr", "nan"], ["--seed", "-1"], ["--seed", "99999999999999"],
                                   ["--weight-decay", "-3"], ["--warmup-ratio", "5"], ["--patience", "0"],
                                   ["--patience", "-2"], ["--results-dir", ""], ["--shot", "3"],
                                   ["--method", "spt", "--set", "top_k=99"]])
def test_why5_6_bad_flags_are_one_line_before_training(mirror, tmp_path, capsys, no_training, flags):
    code, _, err = cli(run_args(mirror, tmp_path, *flags), capsys)
    assert_one_line_error(code, err)
    assert not (tmp_path / "results").exists() and not any(tmp_path.glob("v1"))


@pytest.mark.parametrize("text", CONFIG_VALUES)
def test_why5_6_bad_config_values_are_one_line_before_training(mirror, tmp_path, capsys, no_training, text):
    code, _, err = cli(run_args(mirror, tmp_path, *_config(tmp_path, text)), capsys)
    assert_one_line_error(code, err, "cfg.yaml")
    if isinstance(text, str) and text.startswith("max_steps"):
        assert "goes under 'train:'" in err


def _damage(root, what: str):
    rte = root / "rte"
    split = root / "lm-bff-16-shot" / "RTE" / "16-13"
    if what == "non-utf8 jsonl":
        lines = (rte / "train.jsonl").read_bytes().split(b"\n")
        line = random.randrange(len(lines) - 1)
        lines[line] = lines[line].replace(b'"sentence1": "', b'"sentence1": "\xff\xfe', 1)
        (rte / "train.jsonl").write_bytes(b"\n".join(lines))
        return "train.jsonl", f"train.jsonl:{line + 1}"
    if what == "empty test":
        (rte / "test.jsonl").write_text("")
        return "test.jsonl", "no rows"
    if what == "non-utf8 tsv":
        (split / "dev.tsv").write_bytes((split / "dev.tsv").read_bytes().replace(b"\t", b"\t\xc3\x28", 3))
        return "dev.tsv", "dev.tsv:"
    header = (split / "train.tsv").read_text(encoding="utf-8").splitlines()[0]
    (split / "train.tsv").write_text(header + "\n", encoding="utf-8")
    return "train.tsv", "no rows"


@pytest.mark.parametrize("what", ["non-utf8 jsonl", "empty test", "non-utf8 tsv", "header-only split"])
def test_why5_bad_data_is_one_line_naming_the_file_before_training(mirror, tmp_path, capsys, no_training, what):
    data = fresh_mirror(mirror, tmp_path)
    needles = _damage(data, what)
    args = run_args(data, tmp_path)
    if "tsv" in what or "split" in what:
        args = [a if a != "4" or args[i - 1] != "--shots" else "16" for i, a in enumerate(args)]
        args += ["--split-source", "lm-bff", "--seed", "13"]
    code, _, err = cli(args, capsys)
    assert_one_line_error(code, err, *needles)


def _nan_table(path, metric=float("nan")):
    rec = make_record()
    rec["metrics"]["test"]["accuracy"] = metric
    path.write_text(dump_record(rec) + dump_record(make_record()))
    return path


@pytest.mark.parametrize("metric", [float("nan"), float("inf"), -float("inf")])
def test_why5_6_non_finite_metrics_are_invalid_everywhere(tmp_path, capsys, metric):
    table = _nan_table(tmp_path / "nan.yaml", metric)
    assert any("non-finite" in p for p in validate_paths([table]))
    good = tmp_path / "good.yaml"
    good.write_text(dump_record(make_record()))
    assert_one_line_error(*cli(["table", str(table)], capsys)[::2])
    assert_one_line_error(*cli(["check", str(good), "--against", str(table)], capsys)[::2])


def test_why5_plot_table_params_outputs(tmp_path, capsys):
    rec = make_record(method__name="spt")
    rec["extra"] = {"alpha": [0.2, 0.9], "candidate_layers": [0, 1], "chosen_layers": [1]}
    table = tmp_path / "t.yaml"
    table.write_text(dump_record(rec))
    for kind in ("gates", "layers"):
        assert_one_line_error(*cli(["plot", kind, str(table), "--out", str(tmp_path / "plot.txt")], capsys)[::2],
                              "unknown image format '.txt'; use a suffix from: ")
    assert_one_line_error(*cli(["params", "--method", "head", "--model", "tiny-bert", "--num-labels", "-1"],
                               capsys)[::2])
    out = tmp_path / "missing" / "folder" / "table.md"
    code, _, err = cli(["table", str(table), "--out", str(out)], capsys)
    assert code == 0 and "spt" in out.read_text(), err


def test_why6_expected_seeds_and_empty_paths(tmp_path, capsys):
    table = tmp_path / "t.yaml"
    table.write_text(dump_record(make_record()))
    for argv in (["table", str(table), "--expected-seeds", "-1"], ["table", str(table), "--expected-seeds", "0"],
                 ["validate", ""], ["table", "--results-dir", ""], ["sweep", ""]):
        assert_one_line_error(*cli(argv, capsys)[::2])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.yaml").write_text("")
    for path in ("empty", "empty.yaml"):  # a gate on nothing must not pass
        for command in ("validate", "table"):
            assert_one_line_error(*cli([command, str(tmp_path / path)], capsys)[::2], "no records in")
    assert_one_line_error(*cli(["table", str(table), "--setting", "bogus"], capsys)[::2],
                          f"no records match backbone any, setting bogus; the records hold: "
                          f"{make_record()['backbone']['id']} 16shot")
    assert_one_line_error(*cli(["params", "--method", "all", "--set", "layer=3"], capsys)[::2],
                          "--set overrides one method's config")
    with pytest.MonkeyPatch.context() as m:  # the layer is checked before a model is built
        m.setattr("sptbench.run.assemble.build_classifier", lambda *a, **k: pytest.fail("a model was built"))
        argv = ["params", "--method", "lpt", "--model", "tiny-bert", "--set", "layer=99"]
        assert_one_line_error(*cli(argv, capsys)[::2], "layer 99 out of range")


def test_why6_no_abbreviated_options_anywhere():
    parser = build_parser()
    assert parser.allow_abbrev is False
    assert all(p.allow_abbrev is False for p in _subparsers(parser).values())


# ---------------------------------------------------------------------------------------------------- Why 7


def _alias_bomb(levels: int = 12, width: int = 9) -> str:
    lines = ["---", "a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [2, 12])
def test_why7_yaml_aliases_are_refused_in_every_reader(mirror, tmp_path, capsys, no_training, levels):
    bomb = _alias_bomb(levels)
    table = tmp_path / "bomb.yaml"
    table.write_text(bomb)
    for argv in (["validate", str(table)], ["table", str(table)], ["check", str(table), "--against", str(table)],
                 ["sweep", str(table), "--dry-run"], run_args(mirror, tmp_path, "--config", str(table))):
        code, out, err = cli(argv, capsys)
        assert "aliases" in out + err and "Traceback" not in err
        assert code in (1, 2)


def test_why7_aliases_in_a_record_or_task_spec_are_refused(tmp_path, monkeypatch):
    from sptbench.core import safe_yaml
    from sptbench.data import specs

    rec = make_record()
    text = dump_record(rec).replace("metrics:\n", "metrics: &m\n", 1) + "copy: *m\n"
    (tmp_path / "t.yaml").write_text(text)
    assert any("aliases" in p for p in validate_paths([tmp_path / "t.yaml"]))
    spec = (specs._specs_root() / "rte.yaml").read_text().replace("labels: [", "labels: &l [", 1) + "x: *l\n"
    with pytest.raises(SptbenchError, match="aliases"):
        safe_yaml.load_one(spec, "rte.yaml")


def test_why7_oversize_documents_are_refused_before_parsing(tmp_path, monkeypatch, capsys):
    from sptbench.core import safe_yaml

    cfg = tmp_path / "big.yaml"
    cfg.write_text("method: head\n" + "#" * (safe_yaml.MAX_FILE_BYTES + 1))
    assert_one_line_error(*cli(["run", "--config", str(cfg)], capsys)[::2])
    table = tmp_path / "t.yaml"
    table.write_text(dump_record(make_record()) * 3)
    monkeypatch.setattr(safe_yaml, "MAX_TABLE_BYTES", 1000)
    assert_one_line_error(*cli(["table", str(table)], capsys)[::2], "limit")


def test_records_are_written_without_aliases(tmp_path):
    rec = make_record()
    shared = [1, 2]
    rec["extra"] = {"a": shared, "b": shared}
    append_record(tmp_path / "t.yaml", rec)
    assert "&" not in (tmp_path / "t.yaml").read_text() and read_table(tmp_path / "t.yaml")[0]["extra"]["b"] == shared


# ---------------------------------------------------------------------------------------------------- Why 8


def _subparsers(parser):
    return next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict)).choices


def test_why8_every_option_has_help_and_shows_its_default():
    for name, sub in _subparsers(build_parser()).items():
        text = sub.format_help()
        for action in sub._actions:
            if action.dest == "help":
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
            if action.default not in (None, False) and action.option_strings:
                assert "default" in action.help or "(default: " in text, f"{name} {action.option_strings}"
            if action.choices and not isinstance(action.choices, dict):
                assert "{" + ",".join(map(str, action.choices)) + "}" in text, f"{name} {action.dest}"


def test_why8_run_help_states_the_training_defaults_of_train_config():
    import dataclasses
    import re

    from sptbench.core.run_schema import TRAIN_FLAGS, TrainConfig

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    run_parser = _subparsers(build_parser())["run"]
    for action in run_parser._actions:
        said = re.search(r"\(default: ([^)]*)\)", action.help or "")
        if action.dest in TRAIN_FLAGS and said and said.group(1)[0].isdigit():
            assert type(defaults[action.dest])(said.group(1)) == defaults[action.dest], action.dest


def test_why8_run_help_documents_the_config_file(capsys):
    code, out, _ = cli(["run", "--help"], capsys)
    assert code == 0 and "train:" in out and "Training options go under train:" in out


def test_why8_records_doc_cli_block_lists_every_table_and_check_option():
    from tests.conftest import REPO

    doc = (REPO / "docs" / "records.md").read_text()
    block = doc[doc.index("## CLI") :]
    block = block[: block.index("```", block.index("```") + 3)]
    subparsers = _subparsers(build_parser())
    for name in ("table", "check", "show", "validate"):
        for action in subparsers[name]._actions:
            for option in action.option_strings:
                assert option in ("-h", "--help") or option in block, f"docs/records.md lacks {name} {option}"


def test_why8_seed_footnote_counts_distinct_seeds(tmp_path, capsys):
    seeds = random.sample(range(1, 1000), 3)
    records = [make_record(protocol__seed=s) for s in seeds]
    twin = make_record(protocol__seed=seeds[0])
    twin["training"] = {**twin["training"], "lr": 0.01}  # another config, same seed: a mixed cell
    other = [make_record(protocol__seed=s, method__name="lora") for s in seeds[:2]]
    table = tmp_path / "t.yaml"
    table.write_text("".join(dump_record(r) for r in records + [twin] + other))
    code, out, err = cli(["table", str(table)], capsys)
    assert code == 0, err
    assert "fewer than 3 seeds" in out
    lora = next(line for line in out.splitlines() if line.startswith("| lora"))
    prompt = next(line for line in out.splitlines() if line.startswith("| prompt_tuning"))
    assert "(n=2)" in lora and "(n=" not in prompt


def test_why8_unknown_set_key_for_a_method_without_options(tmp_path, capsys):
    code, _, err = cli(["params", "--method", "head", "--model", "tiny-bert", "--set", "x=1"], capsys)
    assert_one_line_error(code, err, "'x'")
    assert "Choices: \n" not in err and not err.rstrip().endswith("Choices:")



def test_outputs_never_replace_records_or_protected_files(tmp_path, capsys):
    """`table`/`compare` output aimed at a results table (one read, or any file of records) is refused; a README
    without the block, or not UTF-8, is refused before `--out` is written; plots refuse a write-protected file."""
    rng = random.Random()
    table, other = tmp_path / "t.yaml", tmp_path / "other.yaml"
    for seed in (13, 21):
        for method in ("spt", "lpt"):
            rec = make_record(method__name=method, protocol__seed=seed)
            acc = rng.random()
            rec["metrics"]["test"] = {"accuracy": acc, "score": acc}
            append_record(table, rec)
    append_record(other, make_record())
    before = {p: p.read_bytes() for p in (table, other)}
    for argv in (["table", str(table), "--out", str(table)],
                 ["compare", "spt", "lpt", str(table), "--out", str(tmp_path / "." / "t.yaml")],
                 ["table", str(table), "--out", str(other)],
                 ["table", str(table), "--readme", str(other), "--block", "x"]):
        assert_one_line_error(*cli(argv, capsys)[::2], "is a results table: not overwritten")
    precious, readme = tmp_path / "out.md", tmp_path / "README.md"
    precious.write_text("PRECIOUS")
    readme.write_text("# no markers\n")
    for content, needle in ((b"# no markers\n", "needs exactly one"), (b"caf\xff\n", "not UTF-8 text (byte 0xff")):
        readme.write_bytes(content)
        argv = ["table", str(table), "--out", str(precious), "--readme", str(readme), "--block", "main"]
        assert_one_line_error(*cli(argv, capsys)[::2], needle)
    assert precious.read_text() == "PRECIOUS" and {p: p.read_bytes() for p in before} == before
    gates = make_record(method__name="spt")
    gates["extra"] = {"alpha": [0.2, 0.9], "candidate_layers": [0, 1], "chosen_layers": [1]}
    spt_table = tmp_path / "spt.yaml"
    append_record(spt_table, gates)
    png = tmp_path / "gates.png"
    png.write_bytes(b"old image")
    png.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    assert_one_line_error(*cli(["plot", "gates", str(spt_table), "--out", str(png)], capsys)[::2], "read-only")
    assert png.read_bytes() == b"old image"
    png.chmod(0o644)
    code, out, err = cli(["plot", "gates", str(spt_table), "--out", str(png)], capsys)
    assert code == 0 and png.read_bytes().startswith(b"\x89PNG"), err
    assert_one_line_error(*cli(["plot", "layers", str(spt_table), "--by", "task"], capsys)[::2],
                          "--by applies to `plot gates` only")


@pytest.mark.parametrize("extra, needle", [
    (None, "field 'extra' is null"),
    ({"alpha": "abc"}, "extra.alpha must be a list of numbers"),
    ({"alpha": [0.1, 0.2], "candidate_layers": [0, 1, 2]}, "differ in length"),
    ({"alpha": [0.1, 0.2], "chosen_layers": ["x"]}, "extra.chosen_layers must be a list of layer indices"),
])
def test_plot_gates_reads_bad_records_as_one_line(tmp_path, capsys, extra, needle):
    rec = make_record(method__name="spt")
    rec["extra"] = extra
    table = tmp_path / "t.yaml"
    table.write_text(dump_record(rec))
    assert_one_line_error(*cli(["plot", "gates", str(table), "--out", str(tmp_path / "g.png")], capsys)[::2], needle)
    assert not (tmp_path / "g.png").exists()
