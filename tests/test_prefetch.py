"""Pinning and prefetch (issue 40): `--revision` and the sweep key `revision` (in the run's key, passed to the hub,
refused for built-in backbones), pinned dataset revisions in the task specs, and `sptbench prefetch SWEEP.yaml`
(hub calls mocked; offline it fails with one line)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from sptbench.cli.main import main
from sptbench.core.errors import SptbenchError
from sptbench.core.run_schema import RunSpec, record_key
from sptbench.data.specs import load_spec
from sptbench.models.backbones import load_backbone
from sptbench.records.schema import validate_record
from sptbench.sweep.plan import spec_key
from sptbench.sweep.prefetch import Fetch, prefetch_plan
from sptbench.sweep.spec import load_sweep
from tests.helpers import make_record

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_mirror_by_default(monkeypatch):
    """`prefetch` reads $SPTBENCH_DATA_DIR like `sweep`: these tests give the mirror only where they mean it."""
    monkeypatch.delenv("SPTBENCH_DATA_DIR", raising=False)


def sweep_file(tmp_path: Path, **kw) -> Path:
    raw = {"name": "pinned", "model": "org/some-model", "revision": "v1.0", "tasks": ["sst2", "rte", "trec"],
           "methods": ["lora"], "seeds": [13], "results_dir": str(tmp_path / "results"), "train": {"max_steps": 2},
           **kw}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# -- revision ------------------------------------------------------------------------------------------------------
def test_a_revision_is_part_of_the_key_and_old_records_keep_theirs():
    spec = dict(method="lora", task="sst2", model="org/some-model")
    assert spec_key(RunSpec(**spec)) != spec_key(RunSpec(**spec, revision="0123abcd"))
    old = make_record()
    old["backbone"].pop("requested_revision", None)  # written before the field existed
    none, pinned = copy.deepcopy(old), copy.deepcopy(old)
    none["backbone"]["requested_revision"] = None
    pinned["backbone"]["requested_revision"] = "0123abcd"
    assert record_key(old) == record_key(none) != record_key(pinned)
    assert validate_record(none) == [] and validate_record(pinned) == []


def test_a_revision_goes_to_the_hub_and_is_refused_for_built_in_backbones(monkeypatch, tmp_path):
    import transformers

    asked = []

    def config_from_hub(name, **kw):
        asked.append((name, kw.get("revision")))
        raise OSError("no hub here")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", config_from_hub)
    monkeypatch.setattr("sptbench.models.backbones.hub_unavailable", lambda: None)  # as if the hub could be asked
    with pytest.raises(SptbenchError, match="could not load backbone from hub id 'org/some-model'"):
        load_backbone("org/some-model", 2, revision="0123abcd")
    assert asked == [("org/some-model", "0123abcd")]
    for name in ("tiny-bert", "minilm-l6", str(tmp_path)):
        with pytest.raises(SptbenchError, match="^--revision applies to hub ids only"):
            load_backbone(name, 2, revision="0123abcd")
    assert main(["run", "--method", "lora", "--task", "sst2", "--model", "tiny-bert", "--revision", "v2"]) == 2


def test_the_sweep_key_revision_reaches_every_run(tmp_path):
    sweep = load_sweep(sweep_file(tmp_path))
    assert sweep.revision == "v1.0" and {s.revision for s in sweep.specs()} == {"v1.0"}


def test_every_hub_dataset_names_its_revision():
    """Every packaged task's hub section has a `revision` (a pinned commit, or null with a TODO naming why); GLUE's is
    a commit of nyu-mll/glue."""
    for path in sorted((REPO / "tasks").glob("*.yaml")):
        hub = yaml.safe_load(path.read_text())["hub"]
        assert "revision" in hub, path.name
        line = next(x for x in path.read_text().splitlines() if x.strip().startswith("revision:"))
        if hub["path"] == "nyu-mll/glue":
            assert re.fullmatch(r"[0-9a-f]{40}", hub["revision"]), path.name
        elif not (isinstance(hub["revision"], str) and re.fullmatch(r"[0-9a-f]{40}", hub["revision"])):
            assert "TODO" in line, path.name


# -- prefetch ------------------------------------------------------------------------------------------------------
def test_prefetch_lists_the_model_and_each_dataset_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("huggingface_hub.HfApi.model_info", lambda *a, **k: pytest.fail("a dry run fetched"))
    path = sweep_file(tmp_path, methods=["lora", "adapter"])
    assert main(["prefetch", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "would fetch 4 from the hub:"
    assert out[1] == "  model org/some-model @ v1.0"
    for task, line in zip(("sst2", "rte", "trec"), out[2:], strict=True):
        hub = load_spec(task).hub
        assert line.startswith(f"  dataset {hub['path']}") and f"[{hub['splits']['train']}, " in line
        assert (hub.get("revision") or "main (not pinned)") in line


def test_prefetch_with_a_mirror_or_a_built_in_backbone_fetches_nothing_of_them(tmp_path, data_dir):
    sweep = load_sweep(sweep_file(tmp_path, model="tiny-bert", revision=None, data_dir=str(data_dir)))
    fetches, local = prefetch_plan(sweep)
    assert fetches == [] and local[0].startswith("model tiny-bert: built in") and len(local) == 4


def test_prefetch_downloads_each_item_once_at_its_revision(tmp_path, capsys, monkeypatch):
    import datasets
    import huggingface_hub

    calls = []
    files = {"org/some-model": ["config.json", "model.safetensors", "pytorch_model.bin", "vocab.json"]}

    def info(kind):
        def get(self, repo, revision=None, **_):
            calls.append((kind, repo, revision))
            return SimpleNamespace(sha="c" * 40, siblings=[SimpleNamespace(rfilename=f) for f in files.get(repo, [])])
        return get

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", info("model_info"))
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", info("dataset_info"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, revision=None, allow_patterns=(): calls.append(("snapshot", repo, revision,
                                                                                     tuple(allow_patterns))))
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda path, name, split, revision: calls.append(("load", path, name, split, revision)))
    assert main(["prefetch", str(sweep_file(tmp_path, tasks=["rte", "trec"]))]) == 0
    out = capsys.readouterr().out
    snapshot = [c for c in calls if c[0] == "snapshot"]
    assert len(snapshot) == 1 and snapshot[0][1:3] == ("org/some-model", "v1.0")
    assert "*.safetensors" in snapshot[0][3] and "*.bin" not in snapshot[0][3] and "*.json" in snapshot[0][3]
    rte, trec = load_spec("rte").hub, load_spec("trec").hub
    loads = [c[1:] for c in calls if c[0] == "load"]
    r, t = rte.get("revision"), trec.get("revision")
    assert loads == [(rte["path"], "rte", "train", r), (rte["path"], "rte", "validation", r),
                     (trec["path"], None, "train", t), (trec["path"], None, "test", t)]
    assert f"fetched model org/some-model @ v1.0 -> commit {'c' * 40} (pin it: revision {'c' * 40})" in out
    files["org/some-model"] = ["config.json", "pytorch_model.bin"]  # no safetensors: the .bin weights
    from sptbench.sweep.prefetch import fetch

    calls.clear()
    fetch(Fetch("model", "org/some-model", None))
    assert "*.bin" in calls[1][3] and "*.safetensors" not in calls[1][3]


def test_prefetch_offline_fails_with_one_line(tmp_path, capsys):
    """The tests run with HF_HUB_OFFLINE=1 (tests/conftest.py): the real hub client refuses, in one line."""
    assert main(["prefetch", str(sweep_file(tmp_path))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sptbench: error: prefetch of model org/some-model @ v1.0 failed: ")
    assert "offline?" in err[0]


def test_a_saved_run_is_rebuilt_at_its_revision(monkeypatch, tmp_path):
    """The test-once protocol and `sptbench.load` rebuild a saved model at the revision its run asked for."""
    from sptbench.run import persist

    seen = []
    built = lambda *a, **kw: seen.append(kw.get("revision")) or (None, None, None)  # noqa: E731
    monkeypatch.setattr(persist, "build_classifier", built)
    rec = make_record(method__name="lora", method__config={})
    for asked in ("0123abcd", None):
        rec["backbone"]["requested_revision"] = asked
        manifest = persist.manifest_from_record(rec)
        assert manifest["backbone"].get("revision") == asked
        persist.rebuild(manifest, tmp_path / "model.yaml")
    from sptbench.methods.registry import build_config, get_method

    cfg = build_config(get_method("lora"), {})
    made = persist.make_manifest("lora", cfg, "org/some-model", "cls", 2, None, None, revision="v2")
    assert made["backbone"] == {"id": "org/some-model", "pooling": "cls", "weights_sha256": None, "revision": "v2"}
    assert seen == ["0123abcd", None]
