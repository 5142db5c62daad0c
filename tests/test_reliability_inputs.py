"""Issue 38, items 4 and 6: every checkable input is checked before work, and every bad input is one line (CLI: exit
2, no traceback) or, in the Python API, a ValueError/TypeError naming the argument. Each case is one of the
hostile-user probe's findings; each test failed on the code before its fix."""

from __future__ import annotations

import os
import signal
from collections import Counter
from contextlib import contextmanager

import pytest

from sptbench.core import safe_yaml
from sptbench.core.errors import SptbenchError
from sptbench.data import specs
from tests.helpers import run_cli as cli
from tests.test_reliability import assert_one_line_error, run_args

RTE_SPEC = (specs.Path(__file__).resolve().parents[1] / "tasks" / "rte.yaml").read_text(encoding="utf-8")


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if any training starts: the bad input must be refused before."""
    import sptbench.run.runner as runner_mod

    def trained(*args, **kwargs):
        raise AssertionError("training started before the bad input was refused")

    monkeypatch.setattr(runner_mod, "train", trained)


@contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) when the block takes longer than `seconds`."""

    def expired(signum, frame):
        raise AssertionError(f"took more than {seconds} s (a hang)")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def user_task(tmp_path, monkeypatch, text: str, name: str = "rte") -> None:
    """A user task folder holding `<name>.yaml` = `text`, searched first."""
    folder = tmp_path / "user-tasks"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(text, encoding="utf-8")
    monkeypatch.setenv(specs.TASKS_PATH_ENV, str(folder))


# ------------------------------------------------------------------------------------- duplicate keys, FIFOs


@pytest.mark.parametrize("text, line", [("a: 1\nb: 2\na: 3\n", 3), ("x:\n  k: 1\n  j: 2\n  k: 1\n", 4),
                                        ("x: {a: 1, a: 2}\n", 1), ("- {k: 1}\n- {k: 2, j: 3, k: 4}\n", 2)])
def test_duplicate_yaml_keys_are_refused_with_file_and_line(text, line):
    with pytest.raises(SptbenchError, match=rf"^f\.yaml:{line}: duplicate key '\w'"):
        safe_yaml.load_one(text, "f.yaml")


def test_same_key_in_different_mappings_and_types_is_fine():
    assert safe_yaml.load_one("- {k: 1}\n- {k: 2}\n", "f.yaml") == [{"k": 1}, {"k": 2}]
    assert safe_yaml.load_one("a: {k: 1}\nb: {k: 2}\n", "f.yaml") == {"a": {"k": 1}, "b": {"k": 2}}
    assert safe_yaml.load_one("1: a\n'1': b\n", "f.yaml") == {1: "a", "1": "b"}


def test_duplicate_keys_in_run_config_sweep_file_and_task_spec(mirror, tmp_path, monkeypatch, capsys, no_training):
    config = tmp_path / "cfg.yaml"
    config.write_text("method: head\nseed: 13\nmethod: lora\n")
    code, _, err = cli(run_args(mirror, tmp_path, "--config", str(config)), capsys)
    assert_one_line_error(code, err, "cfg.yaml:3: duplicate key 'method'")

    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"name: s\nmethods: [head]\ntasks: [rte]\nshots: 4\nseeds: [13]\nmodel: tiny-bert\n"
                     f"data_dir: {mirror}\nseeds: [21]\n")
    code, _, err = cli(["sweep", str(sweep), "--dry-run"], capsys)
    assert_one_line_error(code, err, "s.yaml:8: duplicate key 'seeds'")

    user_task(tmp_path, monkeypatch, RTE_SPEC.replace("max_length: 256\n", "max_length: 256\nmax_length: 8\n"))
    with pytest.raises(SptbenchError, match=r"rte\.yaml:9: duplicate key 'max_length'"):
        specs.load_spec("rte")


def test_a_config_that_is_not_a_regular_file_is_refused_not_waited_on(mirror, tmp_path, capsys, no_training):
    fifo = tmp_path / "cfg.fifo"
    os.mkfifo(fifo)
    with deadline(60):
        code, _, err = cli(run_args(mirror, tmp_path, "--config", str(fifo)), capsys)
    assert_one_line_error(code, err, "cfg.fifo", "not a regular file")
    code, _, err = cli(run_args(mirror, tmp_path, "--config", str(tmp_path)), capsys)
    assert_one_line_error(code, err, "a folder")


# ------------------------------------------------------------------------------------- duplicate CLI options


@pytest.mark.parametrize("argv, needle", [
    (["run", "--method", "head", "--task", "rte", "--seed", "13", "--seed", "21"], "--seed was given twice"),
    (["run", "--method", "head", "--method=lora", "--task", "rte"], "--method was given twice"),
    (["run", "--method", "head", "--task", "rte", "--max-steps", "2", "--max-steps", "3"], "--max-steps"),
    (["table", "--results-dir", "a", "--results-dir", "b"], "--results-dir was given twice"),
    (["params", "--method", "lora", "--model", "tiny-bert", "--model", "tiny-gpt2"], "--model was given twice"),
])
def test_an_option_given_twice_is_refused(capsys, no_training, argv, needle):
    code, _, err = cli(argv, capsys)
    assert_one_line_error(code, err, needle)


def test_repeatable_options_stay_repeatable():
    from sptbench.cli.main import build_parser

    args = build_parser().parse_args(["params", "--method", "lora", "--set", "rank=2", "--set", "alpha=4",
                                      "--tasks-dir", "a", "--tasks-dir", "b"])
    assert args.set == ["rank=2", "alpha=4"] and args.tasks_dir == ["a", "b"]


# ------------------------------------------------------------------------------------- types and silent drops


@pytest.mark.parametrize("text, needle", [
    ("method: head\ntrain: {patience: true}\n", "'patience' expects int"),
    ("method: head\ntrain: {lr: true}\n", "'lr' expects float"),
    ("method: head\ntrain: {weight_decay: false}\n", "'weight_decay' expects float"),
    ("method: head\ntrain: {seed: 99}\n", "'seed' is a run option"),
])
def test_config_booleans_are_not_numbers_and_train_seed_is_not_dropped(mirror, tmp_path, capsys, no_training,
                                                                       text, needle):
    config = tmp_path / "cfg.yaml"
    config.write_text(text)
    code, _, err = cli(run_args(mirror, tmp_path, "--config", str(config)), capsys)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("edit, needle", [
    (("max_length: 256", "max_length: true"), "'max_length' must be a positive integer, got True"),
    (("labels: [entailment, not_entailment]", "labels: [entailment]"), "at least 2 classes"),
    (("text_columns: [sentence1, sentence2]", "text_columns: [label, sentence2]"), "must not name 'label'"),
])
def test_task_spec_values_that_would_train_nonsense_are_refused(tmp_path, monkeypatch, edit, needle):
    user_task(tmp_path, monkeypatch, RTE_SPEC.replace(*edit))
    with pytest.raises(SptbenchError, match=needle):
        specs.load_spec("rte")


# ------------------------------------------------------------------------------------- lengths and sizes


@pytest.mark.parametrize("extra, spec_edit, needle", [
    (["--method", "prompt_tuning", "--set", "num_tokens=600"], None, "600 prompt tokens"),
    ([], ("max_length: 256", "max_length: 4096"), "4096 tokens = 4096 positions, more than the backbone's 512"),
    ([], ("max_length: 256", "max_length: 2"), "max_length 2 leaves no room for text"),
    (["--method", "prompt_tuning"], ("max_length: 256", "max_length: 500"), "500 tokens + 20 prompt tokens = 520"),
])
def test_max_length_fits_special_tokens_and_positions_with_prompts(mirror, tmp_path, monkeypatch, capsys,
                                                                   no_training, extra, spec_edit, needle):
    argv = run_args(mirror, tmp_path)
    if extra:
        argv[argv.index("--method") + 1: argv.index("--method") + 2] = []  # the method comes from `extra`
        argv.remove("--method")
    if spec_edit:
        user_task(tmp_path, monkeypatch, RTE_SPEC.replace(*spec_edit))
    code, _, err = cli([*argv, *extra], capsys)
    assert_one_line_error(code, err, needle)
    assert not list((tmp_path / "results").rglob("*.yaml")) if (tmp_path / "results").exists() else True


@pytest.mark.parametrize("argv, needle", [
    (["params", "--method", "head", "--num-labels", "1000000000"], "num_labels=1,000,000,000 needs"),
    (["params", "--method", "lora", "--set", "rank=1000000000"], "rank=1,000,000,000"),
    (["params", "--method", "adapter", "--set", "bottleneck=1000000000"], "bottleneck=1,000,000,000"),
    (["params", "--method", "prompt_tuning", "--set", "num_tokens=1000000000"], "num_tokens=1,000,000,000"),
    (["params", "--method", "p_tuning_v2", "--set", "prefix_len=1000000000"], "prefix_len=1,000,000,000"),
])
def test_huge_allocations_are_refused_with_the_number(capsys, argv, needle):
    code, _, err = cli([*argv, "--model", "tiny-bert"], capsys)
    assert_one_line_error(code, err, needle, "GiB), more than this machine's")


def test_sizes_that_fit_are_not_refused(capsys):
    code, out, err = cli(["params", "--method", "lora", "--set", "rank=64", "--model", "tiny-bert"], capsys)
    assert code == 0, err
    assert "| lora" in out


def test_bench_seq_len_counts_prompt_tokens_and_out_below_a_file(tmp_path, capsys):
    bench = ["bench", "--model", "tiny-bert", "--batch", "1", "--steps", "1", "--warmup", "0", "--device", "cpu"]
    code, _, err = cli([*bench, "--method", "prompt_tuning", "--seq-len", "500"], capsys)
    assert_one_line_error(code, err, "--seq-len with prompt_tuning: 500 tokens + 20 prompt tokens")
    (tmp_path / "file").write_text("x")
    code, _, err = cli([*bench, "--method", "lora", "--out", str(tmp_path / "file" / "b.yaml")], capsys)
    assert_one_line_error(code, err, str(tmp_path / "file"))
    assert "not a folder" in err and (tmp_path / "file").read_text() == "x"


# ------------------------------------------------------------------------------------- the Python API


@pytest.mark.parametrize("kwargs, error, needle", [
    ({"num_labels": "2"}, TypeError, "num_labels must be an int, got str"),
    ({"num_labels": 2.0}, TypeError, "num_labels must be an int, got float"),
    ({"num_labels": True}, TypeError, "num_labels must be an int, got bool"),
    ({"num_labels": -3}, ValueError, "num_labels must be at least 2"),
    ({"num_labels": 1}, ValueError, "num_labels must be at least 2"),
    ({"num_labels": 0}, ValueError, "num_labels must be at least 2"),
    ({"model": None}, TypeError, "model must be a str"),
    ({"method": None}, TypeError, "method must be a str"),
    ({"seed": -1}, ValueError, "seed must be in"),
    ({"seed": 2**70}, ValueError, "seed must be in"),
    ({"seed": 1.5}, TypeError, "seed must be an int"),
    ({"rank": True}, ValueError, "'rank' expects int"),
    ({"rank": 10**9}, ValueError, "rank=1,000,000,000"),
    ({"num_labels": 10**9}, ValueError, "num_labels=1,000,000,000"),
])
def test_api_misuse_raises_value_or_type_errors_naming_the_argument(kwargs, error, needle):
    import sptbench

    args = {"method": "lora", "model": "tiny-bert", **kwargs}
    with pytest.raises(error, match=needle):
        sptbench.build_model(**args)


def test_api_load_save_and_forward_misuse():
    import torch

    import sptbench

    for folder, error in ((None, TypeError), (3, TypeError), ("", ValueError)):
        with pytest.raises(error, match="folder"):
            sptbench.load(folder)
    with pytest.raises(TypeError, match="model must be a model"):
        sptbench.save(None, "x")
    model = sptbench.build_model("prompt_tuning", "tiny-bert", seed=0)
    for shape in ((0, 5), (2, 0)):
        empty = torch.zeros(shape, dtype=torch.long)
        with pytest.raises(ValueError, match="input_ids must be a non-empty"):
            model(empty, empty)
    ids = torch.randint(1000, 2000, (2, 7), generator=torch.Generator().manual_seed(3))
    assert model(ids, torch.ones_like(ids)).logits.shape == (2, 2)
    with pytest.raises(ValueError, match="493 tokens \\+ 20 prompt tokens = 513 positions"):
        model.check_length(493)
    model.check_length(492)


# ------------------------------------------------------------------------------------- sweeps and models, dry


def _sweep_file(tmp_path, mirror, **over) -> str:
    import yaml

    raw = {"name": "s", "methods": ["head"], "tasks": ["rte"], "shots": 4, "seeds": [13], "model": "tiny-bert",
           "data_dir": str(mirror), "results_dir": str(tmp_path / "results"), **over}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.mark.parametrize("over, needle", [
    ({"model": "tiny-bertt"}, "Did you mean 'tiny-bert'?"),
    ({"model": "./no/such/folder"}, "does not exist"),
    ({"model": "org/na me"}, "a hub id org/name"),
    ({"device": "cuda"}, "no CUDA device"),
    ({"template": "default"}, "prompt head only"),
    ({"prompt_loss": "vocab"}, "prompt head only"),
    ({"train": {"lr": [1e-3, 0.001]}}, "0.001 is listed twice"),
    ({"shots": [4, 4]}, "4 is listed twice"),
    ({"method_set": {"lora": {"rank": [2, 2]}}, "methods": ["lora"]}, "2 is listed twice"),
])
def test_sweep_dry_run_checks_models_devices_templates_and_repeats(mirror, tmp_path, capsys, no_training, monkeypatch,
                                                                    over, needle):
    if over.get("device") == "cuda":
        monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    code, _, err = cli(["sweep", _sweep_file(tmp_path, mirror, **over), "--dry-run"], capsys)
    assert_one_line_error(code, err, needle)


def test_a_million_point_grid_is_counted_and_refused_in_seconds(mirror, tmp_path, capsys, no_training):
    import time

    from sptbench.sweep.bounds import MAX_RUNS

    grid = {"lr": [round(1e-5 * (i + 1), 8) for i in range(1000)], "weight_decay": [i / 1000 for i in range(1000)]}
    t0 = time.perf_counter()
    code, _, err = cli(["sweep", _sweep_file(tmp_path, mirror, train=grid), "--dry-run"], capsys)
    assert_one_line_error(code, err, f"the grid has 1,000,000 runs, more than the limit of {MAX_RUNS:,}")
    assert time.perf_counter() - t0 < 30


def test_a_sweep_parses_each_task_spec_once(mirror, tmp_path, capsys, monkeypatch):
    """100 grid points, each checked (twice: parsing and preflight) and planned, read the task spec file once."""
    import time

    reads = []
    real = safe_yaml.read_text
    monkeypatch.setattr(safe_yaml, "read_text", lambda path, *a, **k: (reads.append(str(path)), real(path, *a, **k))[1])
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "rte.yaml").write_text(RTE_SPEC)
    settled = time.time() - 10  # an mtime older than the file system's clock tick: its version is known
    os.utime(folder / "rte.yaml", (settled, settled))
    os.utime(folder, (settled, settled))
    path = _sweep_file(tmp_path, mirror, train={"lr": [round(1e-4 * (i + 1), 6) for i in range(100)]},
                       tasks_dir=[str(folder)])
    code, out, err = cli(["sweep", path, "--dry-run"], capsys)
    assert code == 0, err
    assert "100 runs" in out
    assert reads.count(str(folder / "rte.yaml")) == 1, Counter(reads)


def test_params_template_needs_the_prompt_head(capsys):
    code, _, err = cli(["params", "--method", "lora", "--model", "tiny-bert", "--template", "default"], capsys)
    assert_one_line_error(code, err, "prompt head only")


@pytest.mark.parametrize("model, needle", [
    ("sentence-transformers/all-MiniLM-L6-v3", "Did you mean 'minilm-l6'?"),
    ("someone/tiny-bert", "Did you mean 'tiny-bert'?"),
])
def test_offline_hub_ids_fail_fast_with_did_you_mean(mirror, tmp_path, capsys, no_training, monkeypatch, model,
                                                     needle):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = run_args(mirror, tmp_path)
    argv[argv.index("tiny-bert")] = model
    t0 = time.perf_counter()
    code, _, err = cli(argv, capsys)
    assert_one_line_error(code, err, "the hub cannot be asked (HF_HUB_OFFLINE is set)", needle)
    assert time.perf_counter() - t0 < 20


def test_no_network_is_found_in_seconds_for_hub_data(tmp_path, monkeypatch):
    """No offline variable, no connection (the endpoint refuses): one quick attempt, then the one-line error."""
    import sptbench.core.hub as hub
    from sptbench.data.tasks import load_task

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("SPTBENCH_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    hub._unreachable.cache_clear()
    with pytest.raises(SptbenchError, match=r"no local data folder and the hub cannot be asked \(127\.0\.0\.1"):
        load_task("rte", data_dir=None, shots=4, seed=13)
    hub._unreachable.cache_clear()


# ------------------------------------------------------------------------------------- model folders from others


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A tiny BERT model folder (safetensors weights, the MiniLM tokenizer): tests copy it before damaging it."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from sptbench.models.backbones import minilm_path

    folder = tmp_path_factory.mktemp("models") / "good"
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    torch.manual_seed(3)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _config_edit(**changes):
    def edit(folder):
        import json

        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return edit


def _pooling(data: bytes):
    def edit(folder):
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_bytes(data)
    return edit


def _truncate(folder):
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _malicious_pickle(folder):
    import torch

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {folder / 'PWNED'}",))

    (folder / "model.safetensors").unlink()
    torch.save({"embeddings.word_embeddings.weight": torch.zeros(2, 2), "x": Payload()}, folder / "pytorch_model.bin")


FOLDER_DAMAGE = {
    "100,000 layers": (_config_edit(num_hidden_layers=100_000), "says 100,000 layers; the weights hold 2"),
    "hidden size": (_config_edit(hidden_size=64), "says hidden size 64; the weights' embeddings have 32"),
    "vocabulary": (_config_edit(vocab_size=100), "says a vocabulary of 100"),
    "huge intermediate": (_config_edit(intermediate_size=10**7), "sizes imply ~1,28"),
    "pooling not JSON": (_pooling(b"{not json"), "1_Pooling/config.json:1: not valid JSON"),
    "pooling a list": (_pooling(b"[1, 2]"), "expected a JSON object of pooling modes, got list"),
    "pooling not UTF-8": (_pooling(b"\xff\xfe{}"), "1_Pooling/config.json:1: not UTF-8 text"),
    "truncated safetensors": (_truncate, "model.safetensors: not a readable safetensors file"),
    "malicious pickle": (_malicious_pickle, "pytorch_model.bin: refused: it holds pickled objects"),
}


@pytest.mark.parametrize("damage", list(FOLDER_DAMAGE))
def test_damaged_model_folders_are_one_line_before_building(model_folder, tmp_path, mirror, capsys, no_training,
                                                            damage):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(model_folder, folder)
    edit, needle = FOLDER_DAMAGE[damage]
    edit(folder)
    argv = run_args(mirror, tmp_path)
    argv[argv.index("tiny-bert")] = str(folder)
    with deadline(60):
        code, _, err = cli(argv, capsys)
    assert_one_line_error(code, err, needle)
    assert not (folder / "PWNED").exists()


def test_an_intact_model_folder_loads(model_folder):
    from sptbench.models.backbones import load_backbone

    model, _, info = load_backbone(str(model_folder), 2)
    assert info.num_parameters == sum(p.numel() for p in model.backbone.parameters()) and len(model.layers) == 2


# ------------------------------------------------------------------------------------- reports and printing


def test_plot_gates_with_a_chosen_layer_beyond_the_candidates_is_one_line(tmp_path, capsys):
    from sptbench.records.io import dump_record
    from tests.helpers import make_record

    rec = make_record(method__name="spt")
    rec["extra"] = {"alpha": [0.1, 0.2], "candidate_layers": [0, 1], "chosen_layers": [7]}
    table = tmp_path / "t.yaml"
    table.write_text(dump_record(rec))
    code, _, err = cli(["plot", "gates", str(table), "--out", str(tmp_path / "g.png")], capsys)
    assert_one_line_error(code, err, "chosen_layers has layer 7, which is not a candidate layer")
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("command", [["table"], ["validate"]])
def test_an_unreadable_table_is_one_line(tmp_path, capsys, monkeypatch, command):
    """As a user who may not read one of the tables (simulated: the tests run as root, who may read anything)."""
    import builtins
    import pathlib

    from sptbench.records.io import dump_record
    from tests.helpers import make_record

    folder = tmp_path / "results" / "v1" / "tiny-bert"
    folder.mkdir(parents=True)
    secret = folder / "4shot.yaml"
    secret.write_text(dump_record(make_record()))

    def refuse(opener):
        def opened(file, *args, **kwargs):
            if str(file) == str(secret):
                raise PermissionError(13, "Permission denied", str(file))
            return opener(file, *args, **kwargs)
        return opened

    monkeypatch.setattr(builtins, "open", refuse(builtins.open))
    monkeypatch.setattr(pathlib.Path, "open", refuse(pathlib.Path.open))
    code, out, err = cli([*command, str(tmp_path / "results")], capsys)
    if command == ["validate"]:  # a problem it reports, as any other
        assert code == 1 and "Traceback" not in err, err
        assert "4shot.yaml: cannot read results table: Permission denied\n1 problem(s)" in out
    else:
        assert_one_line_error(code, err, "4shot.yaml: cannot read results table: Permission denied")


ESCAPES = ["\x1b[2J\x1b]0;pwned\x07", "\x9b31m", "a\rb", "x\x08y"]


@pytest.mark.parametrize("evil", ESCAPES)
def test_control_characters_from_files_are_printed_escaped(tmp_path, monkeypatch, capsys, evil):
    from sptbench.records.io import dump_record
    from tests.helpers import make_record

    table = tmp_path / "t.yaml"
    table.write_text(dump_record(make_record(method__name=f"m{evil}")))
    code, out, err = cli(["table", str(table)], capsys)
    assert code == 0, err
    import json

    user_task(tmp_path, monkeypatch, RTE_SPEC.replace("not_entailment", json.dumps("not" + evil)))  # YAML escapes
    code, listed, err = cli(["list", "tasks"], capsys)
    assert code == 0, err
    for text in (out, listed):
        assert not any(ord(c) < 32 and c not in "\t\n" or 127 <= ord(c) < 160 for c in text), repr(text)
    escaped = evil.encode("unicode_escape").decode()
    assert escaped in listed
    assert escaped in out or "\r" in evil  # tabulate shows a carriage return as a line break in its cell


def test_a_model_yaml_with_a_non_string_backbone_is_one_line(tmp_path):
    import sptbench

    folder = tmp_path / "saved"
    sptbench.save(sptbench.build_model("lora", "tiny-bert", seed=0), folder)
    manifest = folder / "model.yaml"
    text = manifest.read_text()
    assert "id: tiny-bert" in text
    manifest.write_text(text.replace("id: tiny-bert", "id: 5", 1))
    with pytest.raises(SptbenchError, match="backbone must be an alias, a hub id or a folder"):
        sptbench.load(folder)


def test_an_empty_tasks_dir_is_not_the_current_folder(capsys):
    code, _, err = cli(["list", "tasks", "--tasks-dir", ""], capsys)
    assert_one_line_error(code, err, "--tasks-dir", "must not be empty")
