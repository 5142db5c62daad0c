"""Shared fixtures: the real data mirror (../shared/data or $SPTBENCH_DATA_DIR), offline hub, tiny backbones."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: fail fast instead of retrying for 25 s
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("SPTBENCH_DATA_DIR") or REPO.parent / "shared" / "data")
TINY_FAMILIES = ["tiny-bert", "tiny-roberta", "tiny-deberta", "tiny-gpt2", "tiny-mpnet"]


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
