"""Shared fixtures: the real data mirror (../shared/data or $SPTBENCH_DATA_DIR), offline hub, tiny backbones."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from sptbench.testing import tiny_families

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: fail fast instead of retrying for 25 s
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("SPTBENCH_DATA_DIR") or REPO.parent / "shared" / "data")
# Under pytest-xdist (pyproject's addopts) each worker takes its share of the cores for torch's intra-op threads: N
# workers each using every core would oversubscribe them (slower than one process).
torch.set_num_threads(max(1, torch.get_num_threads() // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
# every tiny backbone the discovered families declare (sptbench/families/<arch>.py), in listing order
TINY_FAMILIES = tiny_families()
# the causal ones (decoder-specific tests run on each; test_backbones checks this list against the families)
TINY_DECODERS = ("tiny-gpt2", "tiny-llama", "tiny-qwen2", "tiny-gemma3")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real benchmark mirror; tests that need it skip (with the reason) when it is absent."""
    if not (DATA_DIR / "INDEX.json").is_file():
        pytest.skip(f"benchmark data mirror not found at {DATA_DIR} (set SPTBENCH_DATA_DIR)")
    return DATA_DIR


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and lose a lot to them on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def mirror(tmp_path_factory, data_dir) -> Path:
    """A small copy of the RTE mirror (80 train, 24 test rows; the LM-BFF split for seed 13) tests may damage."""
    root = tmp_path_factory.mktemp("mirror")
    (root / "rte").mkdir()
    for name, n in (("train.jsonl", 80), ("test.jsonl", 24)):
        lines = (data_dir / "rte" / name).read_text(encoding="utf-8").splitlines()[:n]
        (root / "rte" / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    shutil.copytree(data_dir / "lm-bff-16-shot" / "RTE" / "16-13", root / "lm-bff-16-shot" / "RTE" / "16-13")
    (root / "INDEX.json").write_text("{}")
    return root


@pytest.fixture(scope="session")
def saved_runs(tmp_path_factory, mirror) -> dict:
    """`--save-dir` folders of short tiny-bert runs whose state holds a head, a prompt, LoRA matrices, SPT generators:
    method -> (folder, the trained model). Tests copy a folder before damaging it."""
    from sptbench.run.runner import RunSpec, run

    root = tmp_path_factory.mktemp("saves")
    out = {}
    for method, over in (("prompt_tuning", {}), ("lora", {}), ("spt", {"top_k": 1})):
        spec = RunSpec(method=method, task="rte", shots=4, seed=21, model="tiny-bert", data_dir=str(mirror),
                       results_dir=str(root / "results"), method_overrides=over, progress=False,
                       save_dir=str(root / method), train_overrides={"max_steps": 2, "eval_every": 2, "batch_size": 4})
        out[method] = (root / method, run(spec).model.eval())
    return out
