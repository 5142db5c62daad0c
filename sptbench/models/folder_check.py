"""A model folder from someone else, checked before transformers builds it: its weight files are readable (a
truncated safetensors file, or a pickle that holds code instead of tensors, is one line) and its config's sizes
match its weights (a config that says 100,000 layers would otherwise be built, for minutes, before the mismatch).
Only the files' headers are read (safetensors) or their tensors mapped, not loaded (PyTorch `.bin`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sptbench.core.errors import SptbenchError, describe
from sptbench.core.limits import check_allocation

# the index in a layer's parameter names: encoder.layer.3., layers.3., h.3. (GPT-2), block.3.
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")
_EMBEDDINGS = ("word_embeddings.weight", "embed_tokens.weight", "wte.weight")
# how many times more parameters the config may imply than the weights hold (tied or absent heads, buffers,
# the estimate's simplicity); a config far beyond it describes another model
SLACK = 4


def weight_shapes(folder: Path) -> dict[str, tuple[int, ...]] | None:
    """Tensor name -> shape over the folder's safetensors files (else its PyTorch .bin files); None without any."""
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return {k: v for f in files for k, v in _safetensors_shapes(f).items()}
    bins = sorted(folder.glob("*.bin"))
    return {k: v for f in bins for k, v in _bin_shapes(f).items()} if bins else None


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118 (not a dict)
    except Exception as e:  # SafetensorError (truncated, bad header), OSError
        raise SptbenchError(f"{path}: not a readable safetensors file ({describe(e)})") from None


def _bin_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    import pickle

    import torch

    try:
        try:  # mapped, not read (zip format); tensors only: a pickle that would run code is refused here
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise SptbenchError(f"{path}: refused: it holds pickled objects that would run code, not only tensors "
                            "(convert it to model.safetensors where it came from)") from None
    except Exception as e:
        raise SptbenchError(f"{path}: not a readable PyTorch weights file ({describe(e)})") from None
    if not isinstance(state, dict):
        raise SptbenchError(f"{path}: expected a mapping of tensor names to tensors, got {type(state).__name__}")
    return {str(k): tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def _int(config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def check_config_matches_weights(folder: Path, config: Any) -> None:
    """The config's layers, hidden size and vocabulary match the weights, and the parameters it implies are
    within SLACK x of what the weights hold (and fit this machine's memory)."""
    shapes = weight_shapes(folder)
    if not shapes:
        return  # transformers reports a folder without weights
    where = folder / "config.json"
    layers = _int(config, "num_hidden_layers", "n_layer")
    found = {int(m.group(1)) for k in shapes for m in [_LAYER_INDEX.search(k)] if m}
    if layers is not None and found and layers != max(found) + 1:
        raise SptbenchError(f"{where} says {layers:,} layers; the weights hold {max(found) + 1}")
    hidden = _int(config, "hidden_size", "n_embd", "d_model")
    vocab = _int(config, "vocab_size")
    embedding = next((shape for k, shape in shapes.items() if k.endswith(_EMBEDDINGS) and len(shape) == 2), None)
    if embedding is not None and hidden is not None and embedding[1] != hidden:
        raise SptbenchError(f"{where} says hidden size {hidden:,}; the weights' embeddings have {embedding[1]}")
    if embedding is not None and vocab is not None and embedding[0] != vocab:
        raise SptbenchError(f"{where} says a vocabulary of {vocab:,}; the weights' embeddings have {embedding[0]:,}")
    if hidden is None or layers is None:
        return
    inner = _int(config, "intermediate_size", "n_inner") or 4 * hidden
    positions = _int(config, "max_position_embeddings", "n_positions") or 0
    implied = layers * (4 * hidden * hidden + 2 * hidden * inner) + ((vocab or 0) + positions) * hidden
    held = sum(_numel(shape) for shape in shapes.values())
    if implied > SLACK * held:
        raise SptbenchError(f"{where}'s sizes imply ~{implied:,} parameters; the weights hold {held:,}")
    check_allocation(f"the model in {folder}", implied)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
