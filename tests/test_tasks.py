"""Tests for sptbench/tasks.py and tasks/*.yaml, on the real mirror in ../shared/data (skipped when absent)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path

import pytest

from sptbench import tasks
from sptbench.errors import SptbenchError

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("SPTBENCH_DATA_DIR") or REPO.parent / "shared" / "data")
ALL_TASKS = ["sst2", "mpqa", "mr", "subj", "trec", "mnli", "mrpc", "qnli", "qqp", "rte", "boolq", "cb"]
LM_BFF_TASKS = [t for t in ALL_TASKS if t not in ("boolq", "cb")]

needs_data = pytest.mark.skipif(
    not (DATA_DIR / "INDEX.json").is_file(),
    reason=f"benchmark data mirror not found at {DATA_DIR} (set SPTBENCH_DATA_DIR)",
)


@pytest.fixture(scope="module")
def index() -> dict:
    """The mirror's INDEX.json: sizes, columns and label order per task."""
    if not (DATA_DIR / "INDEX.json").is_file():
        pytest.skip(f"benchmark data mirror not found at {DATA_DIR} (set SPTBENCH_DATA_DIR)")
    return json.loads((DATA_DIR / "INDEX.json").read_text())


def raw_rows(task: str, split: str) -> list[dict]:
    """The mirror's jsonl rows as stored (label names, idx)."""
    with open(DATA_DIR / task / f"{split}.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def text_key(spec: tasks.TaskSpec, row: dict) -> tuple[str, ...]:
    return tuple(row[c] for c in spec.text_columns)


def loose_key(spec: tasks.TaskSpec, row: dict) -> tuple[str, ...]:
    """Texts with case, spacing and punctuation dropped: LM-BFF's MRPC files are PTB-tokenized, the mirror is not."""
    return tuple(re.sub(r"[^a-z0-9]", "", row[c].lower()) for c in spec.text_columns)


# ---------------------------------------------------------------- specs


def test_list_tasks_has_all_twelve() -> None:
    assert tasks.list_tasks() == sorted(ALL_TASKS)


@needs_data
@pytest.mark.parametrize("name", ALL_TASKS)
def test_spec_matches_index(name: str, index: dict) -> None:
    spec = tasks.load_spec(name)
    assert spec.name == name and spec.version >= 1
    assert list(spec.labels) == index[name]["labels"]
    assert list(spec.text_columns) == index[name]["columns"]
    assert spec.num_labels == len(index[name]["labels"])
    paired = name in ("mrpc", "qqp")
    assert spec.metrics == (("accuracy", "f1") if paired else ("accuracy",))
    assert spec.selection_metric == ("acc_f1" if paired else "accuracy")
    assert (spec.lm_bff is None) == (name in ("boolq", "cb"))
    assert spec.max_length == (128 if len(spec.text_columns) == 1 else 256)


def test_specs_fall_back_to_the_repo_folder_when_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(package: str):
        raise ModuleNotFoundError(package)

    monkeypatch.setattr(tasks.importlib.resources, "files", not_installed)
    assert tasks._specs_root() == REPO / "tasks"
    assert tasks.list_tasks() == sorted(ALL_TASKS)


def test_unknown_task_lists_choices() -> None:
    with pytest.raises(SptbenchError, match="unknown task 'rtee'.*Did you mean 'rte'.*Choices: boolq, cb"):
        tasks.load_spec("rtee")


def test_malformed_yaml_names_file_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = (REPO / "tasks" / "rte.yaml").read_text()
    (tmp_path / "rte.yaml").write_text(good.replace("labels: [entailment, not_entailment]", "labels: [entailment,"))
    monkeypatch.setattr(tasks, "_specs_root", lambda: tmp_path)
    with pytest.raises(SptbenchError, match=r"rte\.yaml:\d+: malformed YAML"):
        tasks.load_spec("rte")


def test_spec_with_bad_selection_metric_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = (REPO / "tasks" / "rte.yaml").read_text()
    (tmp_path / "rte.yaml").write_text(good.replace("selection_metric: accuracy", "selection_metric: acc_f1"))
    monkeypatch.setattr(tasks, "_specs_root", lambda: tmp_path)
    with pytest.raises(SptbenchError, match="rte.yaml: selection_metric 'acc_f1'"):
        tasks.load_spec("rte")


@pytest.mark.parametrize(
    "old, new, message",
    [
        ('template: "<s1> It was <mask> ."', 'template: "<s1> It was ."', "must hold <s1> once each and <mask> once"),
        ('template: "<s1> It was <mask> ."', 'template: "<s1> <s2> <mask>"', "uses <s2>, but the task has 1"),
        ("label_words: [terrible, great]", "label_words: [terrible]", "must list 2 distinct single words"),
        ("label_words: [terrible, great]", "label_words: [No, Yes]", "quote Yes/No"),
        ("label_words: [terrible, great]", "label_words: [great, great]", "distinct"),
        ('  template: "<s1> It was <mask> ."', '  template: "<s1> It was <mask> ."\n  templates: {a: "<mask> <s1>"}',
         "exactly one of 'template'"),
    ],
)
def test_bad_prompt_sections_are_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old, new, message):
    good = (REPO / "tasks" / "sst2.yaml").read_text()
    assert old in good
    (tmp_path / "sst2.yaml").write_text(good.replace(old, new))
    monkeypatch.setattr(tasks, "_specs_root", lambda: tmp_path)
    with pytest.raises(SptbenchError, match=message) as err:
        tasks.load_spec("sst2")
    assert "\n" not in str(err.value)


def test_every_task_has_a_prompt_with_one_word_per_label() -> None:
    from sptbench.templates import prompt_setup

    for name in tasks.list_tasks():
        spec = tasks.load_spec(name)
        setup = prompt_setup(spec, "prompt")
        assert len(setup.label_words) == spec.num_labels and spec.version >= 2
        assert setup.template.text == next(iter(spec.prompt["templates"].values()))


# ---------------------------------------------------------------- full data from the mirror


@needs_data
@pytest.mark.parametrize("name", ALL_TASKS)
def test_full_data_loads_with_index_sizes(name: str, index: dict) -> None:
    data = tasks.load_task(name, data_dir=DATA_DIR)
    pool = index[name]["train"]
    expected_dev = min(1000, round(pool * 0.1))
    assert (len(data.train), len(data.dev), len(data.test)) == (pool - expected_dev, expected_dev, index[name]["test"])
    assert data.source == "mirror" and data.location == str(DATA_DIR.resolve() / name)
    assert data.protocol == {
        "shots": None, "train_size": None, "split_source": "sample", "seed": 13,
        "n_train": len(data.train), "n_dev": len(data.dev), "n_test": len(data.test),
    }  # fmt: skip
    assert re.fullmatch(r"[0-9a-f]{64}", data.fingerprint)
    assert data.notes == ([data.spec.mirror["note"]] if "note" in data.spec.mirror else [])
    spec = data.spec
    for row in data.train[:50] + data.dev[:50] + data.test[:50]:
        assert set(row) == {*spec.text_columns, "label"}
        assert isinstance(row["label"], int) and 0 <= row["label"] < spec.num_labels


@needs_data
@pytest.mark.parametrize("name", ALL_TASKS)
def test_test_set_is_the_test_file_with_labels_mapped(name: str) -> None:
    data = tasks.load_task(name, data_dir=DATA_DIR, shots=2, seed=21)
    raw = raw_rows(name, "test")
    assert [text_key(data.spec, r) for r in data.test] == [text_key(data.spec, r) for r in raw]
    assert [data.spec.labels[r["label"]] for r in data.test] == [r["label"] for r in raw]


@needs_data
@pytest.mark.parametrize(
    ("name", "split", "row", "label_id", "label"),
    [
        ("rte", "train", 0, 1, "not_entailment"),
        ("sst2", "train", 0, 1, "positive"),
        ("sst2", "train", 1, 0, "negative"),
        ("subj", "train", 0, 1, "objective"),
        ("trec", "train", 0, 3, "human"),
        ("trec", "test", 3, 0, "description"),
        ("mnli", "train", 0, 0, "entailment"),
        ("mrpc", "train", 0, 1, "equivalent"),
        ("cb", "test", 0, 1, "contradiction"),
    ],
)
def test_known_rows_keep_their_labels(name: str, split: str, row: int, label_id: int, label: str) -> None:
    spec = tasks.load_spec(name)
    rows = tasks.read_jsonl(DATA_DIR / name / f"{split}.jsonl", spec)
    raw = raw_rows(name, split)[row]
    assert raw["label"] == label
    assert rows[row] == {**{c: raw[c] for c in spec.text_columns}, "label": label_id}


@needs_data
def test_full_data_dev_is_independent_of_the_run_seed() -> None:
    one = tasks.load_task("rte", data_dir=DATA_DIR, seed=1)
    two = tasks.load_task("rte", data_dir=DATA_DIR, seed=2)
    assert one.dev == two.dev and one.train == two.train and one.fingerprint == two.fingerprint
    pool = tasks.read_jsonl(DATA_DIR / "rte" / "train.jsonl", one.spec)
    dev = tasks.carve_dev(len(pool))
    assert one.dev == [pool[i] for i in dev]
    assert one.train == [pool[i] for i in range(len(pool)) if i not in set(dev)]


@needs_data
def test_train_size_regime_samples_train_and_keeps_the_full_data_dev() -> None:
    full = tasks.load_task("sst2", data_dir=DATA_DIR)
    a = tasks.load_task("sst2", data_dir=DATA_DIR, train_size=1000, seed=13)
    again = tasks.load_task("sst2", data_dir=DATA_DIR, train_size=1000, seed=13)
    b = tasks.load_task("sst2", data_dir=DATA_DIR, train_size=1000, seed=21)
    assert len(a.train) == 1000 and a.dev == full.dev and a.test == full.test
    assert a.train == again.train and a.train != b.train
    train_texts = {r["sentence"] for r in a.train}
    assert train_texts <= {r["sentence"] for r in full.train}
    assert not train_texts & {r["sentence"] for r in a.dev}
    with pytest.raises(SptbenchError, match="at most train_size=6228"):
        tasks.load_task("sst2", data_dir=DATA_DIR, train_size=7000)


# ---------------------------------------------------------------- few-shot sampling


@needs_data
@pytest.mark.parametrize(("name", "shots"), [("sst2", 16), ("trec", 16), ("mnli", 8), ("boolq", 4)])
def test_few_shot_is_per_class_seeded_and_disjoint(name: str, shots: int) -> None:
    data = tasks.load_task(name, data_dir=DATA_DIR, shots=shots, seed=13)
    spec = data.spec
    expected = dict.fromkeys(range(spec.num_labels), shots)
    assert Counter(r["label"] for r in data.train) == expected
    assert Counter(r["label"] for r in data.dev) == expected
    assert data.protocol["shots"] == shots and data.protocol["n_train"] == shots * spec.num_labels
    pool = tasks.read_jsonl(DATA_DIR / name / "train.jsonl", spec)
    train_idx, dev_idx = tasks.few_shot_indices(spec, pool, shots, 13)
    assert not set(train_idx) & set(dev_idx)
    assert data.train == [pool[i] for i in train_idx] and data.dev == [pool[i] for i in dev_idx]
    same = tasks.load_task(name, data_dir=DATA_DIR, shots=shots, seed=13)
    other = tasks.load_task(name, data_dir=DATA_DIR, shots=shots, seed=42)
    assert same.train == data.train and same.dev == data.dev and same.fingerprint == data.fingerprint
    assert other.train != data.train and other.fingerprint != data.fingerprint
    assert other.test == data.test == tasks.load_task(name, data_dir=DATA_DIR).test


@needs_data
def test_fingerprint_is_stable_across_processes() -> None:
    code = (
        "from sptbench.tasks import load_task;"
        f"print(load_task('mrpc', data_dir={str(DATA_DIR)!r}, shots=16, seed=87).fingerprint)"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, cwd=REPO)
    assert out.stdout.strip() == tasks.load_task("mrpc", data_dir=DATA_DIR, shots=16, seed=87).fingerprint


@needs_data
def test_too_many_shots_says_the_maximum() -> None:
    with pytest.raises(SptbenchError, match="class 'neutral' has 5 .* at most shots=2"):
        tasks.load_task("cb", data_dir=DATA_DIR, shots=3)
    with pytest.raises(SptbenchError, match="at most shots=13"):
        tasks.load_task("boolq", data_dir=DATA_DIR, shots=16)
    assert len(tasks.load_task("cb", data_dir=DATA_DIR, shots=2).train) == 6


def test_bad_protocol_arguments() -> None:
    with pytest.raises(SptbenchError, match="not both"):
        tasks.load_task("rte", data_dir=DATA_DIR, shots=16, train_size=1000)
    with pytest.raises(SptbenchError, match="Did you mean 'lm-bff'"):
        tasks.load_task("rte", data_dir=DATA_DIR, split_source="lmbff")
    with pytest.raises(SptbenchError, match="positive"):
        tasks.load_task("rte", data_dir=DATA_DIR, shots=0)


# ---------------------------------------------------------------- LM-BFF published splits


@needs_data
@pytest.mark.parametrize("name", LM_BFF_TASKS)
def test_lm_bff_splits_have_16_per_class_and_labels_consistent_with_the_pool(name: str) -> None:
    data = tasks.load_task(name, data_dir=DATA_DIR, shots=16, seed=13, split_source="lm-bff")
    spec = data.spec
    expected = dict.fromkeys(range(spec.num_labels), 16)
    assert Counter(r["label"] for r in data.train) == expected
    assert Counter(r["label"] for r in data.dev) == expected
    assert data.protocol["split_source"] == "lm-bff" and "16-13" in data.location
    assert data.test == tasks.load_task(name, data_dir=DATA_DIR).test
    pool_labels: dict[tuple[str, ...], set[int]] = {}
    for row in tasks.read_jsonl(DATA_DIR / name / "train.jsonl", spec):
        pool_labels.setdefault(loose_key(spec, row), set()).add(row["label"])
    matched = 0
    cfg = spec.lm_bff
    for seed in tasks.LM_BFF_SEEDS:
        splits = ("train", "dev") if cfg["dev"] else ("train",)
        for split in splits:
            path = DATA_DIR / "lm-bff-16-shot" / cfg["dir"] / f"16-{seed}" / f"{split}.{cfg['format']}"
            for row in tasks.read_lm_bff(path, spec):
                known = pool_labels.get(loose_key(spec, row))
                if known is not None and len(known) == 1:
                    matched += 1
                    assert row["label"] in known, f"{path}: {row} disagrees with the pool"
    assert matched > 0, "no LM-BFF row found in the pool: the label mapping is unchecked"


@needs_data
def test_lm_bff_mnli_samples_dev_from_the_pool_and_says_so() -> None:
    data = tasks.load_task("mnli", data_dir=DATA_DIR, shots=16, seed=42, split_source="lm-bff")
    assert len(data.train) == len(data.dev) == 48
    assert any("no published dev split" in note for note in data.notes)
    train_texts = {text_key(data.spec, r) for r in data.train}
    assert not train_texts & {text_key(data.spec, r) for r in data.dev}
    pool_texts = {text_key(data.spec, r) for r in tasks.read_jsonl(DATA_DIR / "mnli" / "train.jsonl", data.spec)}
    assert {text_key(data.spec, r) for r in data.dev} <= pool_texts
    again = tasks.load_task("mnli", data_dir=DATA_DIR, shots=16, seed=42, split_source="lm-bff")
    assert again.fingerprint == data.fingerprint


@needs_data
def test_lm_bff_rejects_what_was_not_published() -> None:
    with pytest.raises(SptbenchError, match="seeds 13, 21, 42, 87, 100 only"):
        tasks.load_task("rte", data_dir=DATA_DIR, shots=16, seed=5, split_source="lm-bff")
    with pytest.raises(SptbenchError, match="needs shots=16"):
        tasks.load_task("rte", data_dir=DATA_DIR, shots=8, seed=13, split_source="lm-bff")
    with pytest.raises(SptbenchError, match="task 'cb' has no LM-BFF splits"):
        tasks.load_task("cb", data_dir=DATA_DIR, shots=16, seed=13, split_source="lm-bff")


# ---------------------------------------------------------------- broken sources


def write_mirror(root: Path, task: str, train_lines: list[str], test_lines: list[str]) -> Path:
    """A temporary mirror holding one task."""
    (root / task).mkdir(parents=True)
    (root / task / "train.jsonl").write_text("\n".join(train_lines) + "\n")
    (root / task / "test.jsonl").write_text("\n".join(test_lines) + "\n")
    return root


RTE_ROW = json.dumps({"idx": 0, "sentence1": "A man sleeps.", "sentence2": "A man rests.", "label": "entailment"})


def test_malformed_jsonl_names_file_and_line(tmp_path: Path) -> None:
    root = write_mirror(tmp_path, "rte", [RTE_ROW, RTE_ROW, '{"idx": 2, "sentence1": "oops"'], [RTE_ROW])
    with pytest.raises(SptbenchError, match=r"rte/train\.jsonl:3: malformed JSON"):
        tasks.load_task("rte", data_dir=root)


def test_unknown_label_names_file_and_line(tmp_path: Path) -> None:
    bad = RTE_ROW.replace('"entailment"', '"maybe"')
    root = write_mirror(tmp_path, "rte", [RTE_ROW], [RTE_ROW, bad])
    with pytest.raises(SptbenchError, match=r"rte/test\.jsonl:2: unknown label 'maybe'"):
        tasks.load_task("rte", data_dir=root)


def test_missing_mirror_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SptbenchError, match=r"missing file .*rte/train\.jsonl"):
        tasks.load_task("rte", data_dir=tmp_path)
    with pytest.raises(SptbenchError, match="does not exist"):
        tasks.load_task("rte", data_dir=tmp_path / "nowhere")


def test_env_var_selects_the_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_mirror(tmp_path, "rte", [RTE_ROW] * 20, [RTE_ROW])
    monkeypatch.setenv("SPTBENCH_DATA_DIR", str(root))
    data = tasks.load_task("rte")
    assert data.source == "mirror" and (len(data.train), len(data.dev), len(data.test)) == (18, 2, 1)


def fake_datasets(load_dataset) -> types.ModuleType:
    """A stand-in `datasets` module, so hub tests neither touch the network nor import the real library."""
    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset
    return module


def test_unreachable_hub_is_one_error_pointing_to_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.delenv("SPTBENCH_DATA_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(offline))
    with pytest.raises(SptbenchError, match="hub source failed.*nyu-mll/glue.*--data-dir.*SPTBENCH_DATA_DIR") as err:
        tasks.load_task("rte", shots=16)
    assert "\n" not in str(err.value)


class FakeSplit(list):
    """A hub split: a list of dicts with `column_names`, as `datasets.Dataset` iterates."""

    @property
    def column_names(self) -> list[str]:
        return list(self[0])


def test_hub_columns_and_label_ids_are_mapped_to_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = {  # CogComp/trec: coarse_label 0=ABBR 1=ENTY 2=DESC 3=HUM 4=LOC 5=NUM
        "train": FakeSplit({"text": f"q{i}?", "coarse_label": i % 6, "fine_label": 0} for i in range(60)),
        "test": FakeSplit([{"text": "What is AIDS ?", "coarse_label": 0, "fine_label": 1}]),
    }
    calls = []

    def load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return hub[split]

    monkeypatch.delenv("SPTBENCH_DATA_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(load_dataset))
    data = tasks.load_task("trec", shots=2, seed=13)
    assert calls == [("CogComp/trec", None, "train"), ("CogComp/trec", None, "test")]
    assert data.source == "hub" and data.location == "hf:CogComp/trec"
    assert data.test == [{"sentence": "What is AIDS ?", "label": data.spec.labels.index("abbreviation")}]
    for row in data.train:
        hub_id = int(row["sentence"][1:-1]) % 6
        assert data.spec.labels[row["label"]] == ["abbreviation", "entity", "description", "human", "location",
                                                  "number"][hub_id]  # fmt: skip
    hub["test"] = FakeSplit([{"text": "x", "coarse_label": 9, "fine_label": 0}])
    with pytest.raises(SptbenchError, match=r"CogComp/trec\[test\] row 0: hub label 9"):
        tasks.load_task("trec", shots=2)
