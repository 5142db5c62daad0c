"""Tests for sptbench/data/tasks.py and tasks/*.yaml, on the real mirror in ../shared/data (skipped when absent)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path

import pytest
import yaml

from sptbench.core.errors import SptbenchError
from sptbench.data import specs, tasks

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("SPTBENCH_DATA_DIR") or REPO.parent / "shared" / "data")
# The task lists come from the packaged specs: a new tasks/<name>.yaml is tested without editing this file.
ALL_TASKS = sorted(p.stem for p in (REPO / "tasks").glob("*.yaml"))
LM_BFF_TASKS = [t for t in ALL_TASKS if yaml.safe_load((REPO / "tasks" / f"{t}.yaml").read_text()).get("lm_bff")]

needs_data = pytest.mark.skipif(
    not (DATA_DIR / "INDEX.json").is_file(),
    reason=f"benchmark data mirror not found at {DATA_DIR} (set SPTBENCH_DATA_DIR)",
)


@pytest.fixture(autouse=True)
def packaged_specs_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests see the packaged specs only, whatever $SPTBENCH_TASKS_PATH the caller has set."""
    monkeypatch.delenv(specs.TASKS_PATH_ENV, raising=False)


def user_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *files: tuple[str, str]) -> Path:
    """A user task folder holding `files` (name, text), named by $SPTBENCH_TASKS_PATH."""
    folder = tmp_path / "user-tasks"
    folder.mkdir(exist_ok=True)
    for name, text in files:
        (folder / name).write_text(text, encoding="utf-8")
    monkeypatch.setenv(specs.TASKS_PATH_ENV, str(folder))
    return folder


def mirrored(name: str, index: dict) -> None:
    """Skip a packaged task the local mirror does not hold."""
    if name not in index:
        pytest.skip(f"task '{name}' is not in the mirror's INDEX.json")


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


def text_key(spec: specs.TaskSpec, row: dict) -> tuple[str, ...]:
    return tuple(row[c] for c in spec.text_columns)


def loose_key(spec: specs.TaskSpec, row: dict) -> tuple[str, ...]:
    """Texts with case, spacing and punctuation dropped: LM-BFF's MRPC files are PTB-tokenized, the mirror is not."""
    return tuple(re.sub(r"[^a-z0-9]", "", row[c].lower()) for c in spec.text_columns)


# ---------------------------------------------------------------- specs


def test_list_tasks_lists_every_packaged_spec() -> None:
    assert len(ALL_TASKS) >= 12 and specs.list_tasks() == ALL_TASKS == specs.packaged_tasks()
    assert {"sst2", "rte", "trec", "mnli"} <= set(ALL_TASKS)


@needs_data
@pytest.mark.parametrize("name", ALL_TASKS)
def test_spec_matches_index(name: str, index: dict) -> None:
    mirrored(name, index)
    spec = specs.load_spec(name)
    assert spec.name == name and spec.version >= 1
    assert list(spec.labels) == index[name]["labels"]
    assert list(spec.text_columns) == index[name]["columns"]
    assert spec.num_labels == len(index[name]["labels"])
    assert spec.metrics[0] == "accuracy" and ("f1" in spec.metrics) == (spec.selection_metric == "acc_f1")
    if spec.lm_bff is not None:
        assert (DATA_DIR / tasks.LM_BFF_FOLDER / spec.lm_bff["dir"]).is_dir()
    assert spec.max_length == (128 if len(spec.text_columns) == 1 else 256)
    assert spec.path == str(REPO / "tasks" / f"{name}.yaml")
    assert spec.sha256 == hashlib.sha256((REPO / "tasks" / f"{name}.yaml").read_bytes()).hexdigest()


def test_paraphrase_tasks_report_f1_and_select_on_its_mean_with_accuracy() -> None:
    for name in ("mrpc", "qqp"):
        spec = specs.load_spec(name)
        assert spec.metrics == ("accuracy", "f1") and spec.selection_metric == "acc_f1"
    assert specs.load_spec("rte").metrics == ("accuracy",)


def test_specs_fall_back_to_the_repo_folder_when_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(package: str):
        raise ModuleNotFoundError(package)

    monkeypatch.setattr(specs.importlib.resources, "files", not_installed)
    assert specs._specs_root() == REPO / "tasks"
    assert specs.list_tasks() == ALL_TASKS


def test_unknown_task_lists_choices() -> None:
    with pytest.raises(SptbenchError, match="unknown task 'rtee'.*Did you mean 'rte'.*Choices: boolq, cb"):
        specs.load_spec("rtee")


def test_malformed_yaml_names_file_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = (REPO / "tasks" / "rte.yaml").read_text()
    bad = good.replace("labels: [entailment, not_entailment]", "labels: [entailment,")
    folder = user_folder(tmp_path, monkeypatch, ("rte.yaml", bad))
    with pytest.raises(SptbenchError, match=rf"^{re.escape(str(folder / 'rte.yaml'))}:\d+: malformed YAML") as err:
        specs.load_spec("rte")
    assert "\n" not in str(err.value)


def test_spec_with_bad_selection_metric_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = (REPO / "tasks" / "rte.yaml").read_text()
    bad = good.replace("selection_metric: accuracy", "selection_metric: acc_f1")
    user_folder(tmp_path, monkeypatch, ("rte.yaml", bad))
    with pytest.raises(SptbenchError, match="rte.yaml: selection_metric 'acc_f1'"):
        specs.load_spec("rte")


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
    user_folder(tmp_path, monkeypatch, ("sst2.yaml", good.replace(old, new)))
    with pytest.raises(SptbenchError, match=message) as err:
        specs.load_spec("sst2")
    assert "\n" not in str(err.value)


def test_every_task_has_a_prompt_with_one_word_per_label() -> None:
    from sptbench.data.templates import prompt_setup

    for name in specs.list_tasks():
        spec = specs.load_spec(name)
        setup = prompt_setup(spec, "prompt")
        assert len(setup.label_words) == spec.num_labels and spec.version >= 2
        assert setup.template.text == next(iter(spec.prompt["templates"].values()))


# ---------------------------------------------------------------- full data from the mirror


@needs_data
@pytest.mark.parametrize("name", ALL_TASKS)
def test_full_data_loads_with_index_sizes(name: str, index: dict) -> None:
    mirrored(name, index)
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
def test_test_set_is_the_test_file_with_labels_mapped(name: str, index: dict) -> None:
    mirrored(name, index)
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
    spec = specs.load_spec(name)
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
        "from sptbench.data.tasks import load_task;"
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

    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split, kwargs))
        return hub[split]

    monkeypatch.delenv("SPTBENCH_DATA_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(load_dataset))
    data = tasks.load_task("trec", shots=2, seed=13)
    # CogComp/trec's main branch is a loading script (datasets >= 4 refuses it): the spec reads the parquet export,
    # pinned to a commit of its refs/convert/parquet branch (issue 40)
    pin = data.spec.hub["revision"]
    assert re.fullmatch(r"[0-9a-f]{40}", pin)
    parquet = {"revision": pin}
    assert calls == [("CogComp/trec", None, "train", parquet), ("CogComp/trec", None, "test", parquet)]
    assert data.source == "hub" and data.location == f"hf:CogComp/trec@{pin}"
    assert data.test == [{"sentence": "What is AIDS ?", "label": data.spec.labels.index("abbreviation")}]
    for row in data.train:
        hub_id = int(row["sentence"][1:-1]) % 6
        assert data.spec.labels[row["label"]] == ["abbreviation", "entity", "description", "human", "location",
                                                  "number"][hub_id]  # fmt: skip
    hub["test"] = FakeSplit([{"text": "x", "coarse_label": 9, "fine_label": 0}])
    with pytest.raises(SptbenchError, match=r"CogComp/trec\[test\] row 0: hub label 9"):
        tasks.load_task("trec", shots=2)


def test_hub_revision_is_passed_only_when_the_spec_names_one(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def load_dataset(path, name=None, split=None, revision=None):
        calls.append((path, name, split, revision))
        return FakeSplit({"sentence": f"s{i}", "label": i % 2} for i in range(40))

    monkeypatch.delenv("SPTBENCH_DATA_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(load_dataset))
    pin = specs.load_spec("sst2").hub["revision"]  # GLUE is pinned (issue 40): the pin reaches `datasets`
    assert pin and len(pin) == 40
    assert tasks.load_task("sst2", shots=2).location == f"hf:nyu-mll/glue/sst2@{pin}"
    assert calls == [("nyu-mll/glue", "sst2", "train", pin), ("nyu-mll/glue", "sst2", "validation", pin)]
    calls.clear()
    unpinned = specs.load_spec("sst2")
    unpinned = dataclasses.replace(unpinned, hub={**unpinned.hub, "revision": None})
    monkeypatch.setattr(tasks, "load_spec", lambda name: unpinned)  # a spec without a pin passes none
    assert tasks.load_task("sst2", shots=2).location == "hf:nyu-mll/glue/sst2"
    assert calls == [("nyu-mll/glue", "sst2", "train", None), ("nyu-mll/glue", "sst2", "validation", None)]


@pytest.mark.slow
def test_the_parquet_export_layout_loads_with_the_pinned_datasets(tmp_path: Path, monkeypatch) -> None:
    """The hub's parquet export (`<config>/<split>/0000.parquet`, no script) resolves to trec's train and test splits
    under the installed `datasets`: the hub call is redirected to a local copy of that layout."""
    datasets = pytest.importorskip("datasets")
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    export = tmp_path / "export"
    for split, n in (("train", 60), ("test", 6)):
        (export / "default" / split).mkdir(parents=True)
        table = pa.table({"text": [f"{split} {i}?" for i in range(n)], "coarse_label": [i % 6 for i in range(n)],
                          "fine_label": [0] * n})
        pq.write_table(table, export / "default" / split / "0000.parquet")
    real, seen = datasets.load_dataset, []

    def redirect(path, name=None, split=None, revision=None):
        seen.append((path, revision))
        return real(str(export), name, split=split, cache_dir=str(tmp_path / "cache"))

    monkeypatch.delenv("SPTBENCH_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", redirect)
    data = tasks.load_task("trec", shots=2, seed=13)
    assert seen == [("CogComp/trec", data.spec.hub["revision"])] * 2
    assert len(data.test) == 6
    assert data.test[0] == {"sentence": "test 0?", "label": data.spec.labels.index("abbreviation")}


def test_hub_section_rejects_unknown_keys_and_an_empty_revision(tmp_path: Path, monkeypatch) -> None:
    good = re.sub(r"(?m)^  revision: .*\n", "", (REPO / "tasks" / "sst2.yaml").read_text())  # the pinned one
    user_folder(tmp_path, monkeypatch, ("sst2.yaml", good.replace("  name: sst2\n", "  name: sst2\n  revison: x\n")))
    with pytest.raises(SptbenchError, match=r"sst2\.yaml: unknown key 'hub.revison'; known: path, name, revision"):
        specs.load_spec("sst2")
    user_folder(tmp_path, monkeypatch, ("sst2.yaml", good.replace("  name: sst2\n", "  name: sst2\n  revision: ''\n")))
    with pytest.raises(SptbenchError, match="hub.revision"):
        specs.load_spec("sst2")


def test_more_than_two_text_columns_is_one_line_naming_the_file(tmp_path: Path, monkeypatch) -> None:
    good = (REPO / "tasks" / "rte.yaml").read_text()
    assert "text_columns: [sentence1, sentence2]" in good
    bad = good.replace("text_columns: [sentence1, sentence2]", "text_columns: [sentence1, sentence2, extra]")
    folder = user_folder(tmp_path, monkeypatch, ("rte.yaml", bad))
    with pytest.raises(SptbenchError, match=rf"^{re.escape(str(folder / 'rte.yaml'))}: field 'text_columns' lists 3 "
                       r"columns \['sentence1', 'sentence2', 'extra'\]; a task has one text or a pair") as err:
        specs.load_spec("rte")
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- user task folders

NEW_TASK = """\
# A task the package does not ship: binary topic of a sentence
name: topics
version: 1
text_columns: [sentence]
labels: [sports, science]
metrics: [accuracy]
selection_metric: accuracy
max_length: 64
hub:
  path: someone/topics
  name: null
  splits: {train: train, test: test}
  columns: {sentence: text}
  label_column: label
  labels: {0: sports, 1: science}
mirror: {train: train.jsonl, test: test.jsonl}
prompt:
  template: "<s1> Topic: <mask> ."
  label_words: [sports, science]
"""


def topic_mirror(root: Path, n: int = 12) -> Path:
    rows = [json.dumps({"sentence": f"{'goal' if i % 2 == 0 else 'atom'} number {i}",
                        "label": "sports" if i % 2 == 0 else "science"}) for i in range(n)]  # fmt: skip
    return write_mirror(root, "topics", rows, rows[:4])


def test_a_yaml_dropped_into_a_user_folder_is_a_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from sptbench.cli.main import main

    folder = user_folder(tmp_path, monkeypatch, ("topics.yaml", NEW_TASK))
    assert specs.list_tasks() == sorted([*ALL_TASKS, "topics"])
    spec = specs.load_spec("topics")
    assert spec.labels == ("sports", "science") and spec.path == str(folder / "topics.yaml")
    assert spec.sha256 == hashlib.sha256(NEW_TASK.encode()).hexdigest()
    data = tasks.load_task("topics", data_dir=topic_mirror(tmp_path / "data"), shots=2, seed=13)
    assert len(data.train) == len(data.dev) == 4 and len(data.test) == 4
    assert main(["list", "tasks"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert set(lines) == {*ALL_TASKS, "topics"}
    assert " user " in lines["topics"] and str(folder / "topics.yaml") in lines["topics"]
    assert " packaged " in lines["sst2"] and str(folder) not in lines["sst2"]


def test_a_user_spec_overrides_the_packaged_one_and_the_first_folder_wins(tmp_path: Path, monkeypatch) -> None:
    packaged = (REPO / "tasks" / "rte.yaml").read_text()
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, version in ((first, 7), (second, 8)):
        folder.mkdir()
        (folder / "rte.yaml").write_text(packaged.replace("version: 2", f"version: {version}"))
    monkeypatch.setenv(specs.TASKS_PATH_ENV, os.pathsep.join([str(first), "", str(second)]))
    assert specs.load_spec("rte").version == 7 and specs.load_spec("rte").path == str(first / "rte.yaml")
    assert specs.spec_files()["rte"] == (first / "rte.yaml", True)
    assert specs.spec_files()["sst2"][1] is False and specs.list_tasks() == ALL_TASKS
    specs.apply_tasks_dirs([str(second)])  # --tasks-dir goes in front of the variable, once
    assert os.environ[specs.TASKS_PATH_ENV].split(os.pathsep) == [str(second.resolve()), str(first)]
    assert specs.load_spec("rte").version == 8
    with pytest.raises(SptbenchError, match="--tasks-dir 'nowhere' is not a folder"):
        specs.apply_tasks_dirs(["nowhere"])
    monkeypatch.setenv(specs.TASKS_PATH_ENV, str(tmp_path / "missing"))
    with pytest.raises(SptbenchError, match=rf"task folder '.*missing' \(from \${specs.TASKS_PATH_ENV}"):
        specs.list_tasks()


def test_a_run_on_a_user_task_records_the_spec_file_and_its_sha256(tmp_path: Path, monkeypatch, capsys) -> None:
    from sptbench.cli.main import main
    from sptbench.records.io import read_records
    from sptbench.records.keys import record_key
    from sptbench.records.schema import validate_record

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "topics.yaml").write_text(NEW_TASK)
    data = topic_mirror(tmp_path / "data")
    args = ["run", "--method", "head", "--task", "topics", "--shots", "2", "--model", "tiny-bert", "--data-dir",
            str(data), "--results-dir", str(tmp_path / "r"), "--max-steps", "2", "--eval-every", "1", "--quiet"]
    assert main(args) == 2 and "unknown task 'topics'" in capsys.readouterr().err  # not findable without the folder
    assert main([*args, "--tasks-dir", str(folder)]) == 0, capsys.readouterr().err
    (rec,) = read_records([tmp_path / "r"])
    assert rec["task"]["spec_path"] == str(folder / "topics.yaml")
    assert rec["task"]["spec_sha256"] == hashlib.sha256((folder / "topics.yaml").read_bytes()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", rec["backbone"]["tokenizer_sha256"])
    assert rec["params"]["backbone"] == rec["backbone"]["num_parameters"] == 1_027_392  # tiny-bert, no pooler
    assert validate_record(rec) == []
    assert "spec" not in json.dumps(record_key(rec))  # provenance, not part of what makes two runs the same
    old = {**rec, "task": {"name": "topics", "version": 1}}  # records from before these fields still validate
    assert validate_record(old) == [] and record_key(old) == record_key(rec)
    assert validate_record({**rec, "task": {**rec["task"], "spec_sha256": 5}}) == [
        "field 'task.spec_sha256' must be str, got int 5"
    ]
    assert validate_record({**rec, "throughput": {**rec["throughput"], "hardware": 5}}) == [
        "field 'throughput.hardware' must be str, got int 5"
    ]


def test_a_sweep_file_names_a_tasks_dir(tmp_path: Path, monkeypatch) -> None:
    from sptbench.sweep.spec import parse_sweep

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "topics.yaml").write_text(NEW_TASK)
    raw = {"tasks": "topics", "methods": "head", "seeds": [13], "shots": 2, "model": "tiny-bert"}
    with pytest.raises(SptbenchError, match="unknown task in sweep 'topics'"):
        parse_sweep(dict(raw))
    sweep = parse_sweep({**raw, "tasks_dir": str(folder)})
    assert [s.task for s in sweep.specs()] == ["topics"]
    assert os.environ[specs.TASKS_PATH_ENV].split(os.pathsep)[0] == str(folder)  # worker processes search it too


def test_docs_describe_every_key_the_loader_accepts() -> None:
    text = (REPO / "docs" / "tasks.md").read_text()
    sections = {"": specs.SPEC_KEYS, "hub": specs.HUB_KEYS, "mirror": specs.MIRROR_KEYS, "lm_bff": specs.LM_BFF_KEYS}
    for section, keys in sections.items():
        table = text if not section else text.split(f"`{section}` (", 1)[1].split("\n\n", 2)[1]
        for key in keys:
            assert f"| `{key}` |" in table, f"docs/tasks.md does not describe {section or 'top-level'} key '{key}'"
    for key in ("template", "templates", "label_words", "note"):
        assert f"| `{key}` |" in text.split("`prompt` (", 1)[1]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("prompt:\n", "promt:\n", "unknown key 'promt'; known: name, version"),
        ("  test: test.jsonl\n", "  test: test.jsonl\n  dev: d.jsonl\n", "unknown key 'mirror.dev'; known: train"),
        ("  dir: SST-2\n", "  dir: SST-2\n  shot: 16\n", "unknown key 'lm_bff.shot'; known: dir, format"),
        ("  label_words:", "  1: x\n  label_words:", "unknown key 'prompt.1'; known: template"),
    ],
)
def test_a_misspelt_key_is_an_error_not_ignored(tmp_path: Path, monkeypatch, old: str, new: str, message: str) -> None:
    good = (REPO / "tasks" / "sst2.yaml").read_text()
    assert old in good
    user_folder(tmp_path, monkeypatch, ("sst2.yaml", good.replace(old, new, 1)))
    with pytest.raises(SptbenchError, match=re.escape(message)):
        specs.load_spec("sst2")
