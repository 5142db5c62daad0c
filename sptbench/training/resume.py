"""Resumable training (docs/long-runs.md): the state of a training loop at a step (trainable parameters, the step's
optimizer, schedule and loss scaler, every RNG stream, the data position, the loop's own bookkeeping) saved
atomically every N steps, and loaded by a rerun of the same run, which then goes on bit for bit as if never stopped.

One run may call the training loop several times (a method's stages); each call has its own file, numbered in call
order (`RunCheckpoints`). The files are plain tensors and numbers: loaded with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sptbench.core.errors import SptbenchError

STATE_VERSION = 1


@dataclass
class Checkpointing:
    """Where one training call keeps its state, and how often (steps) it saves it."""

    path: Path
    every: int


class RunCheckpoints:
    """The checkpoint files of one run, in `<root>/<identity hash>/`: `train-<n>.pt` for its n-th training call.
    `identity`: text that names the run's configuration and data (a rerun of the same run gives the same)."""

    def __init__(self, root: str | Path, identity: str, every: int):
        self.folder = Path(root) / hashlib.sha256(identity.encode()).hexdigest()[:20]
        self.every = every
        self.calls = 0

    def next(self) -> Checkpointing:
        """The checkpoint of the next training call."""
        self.calls += 1
        return Checkpointing(self.folder / f"train-{self.calls}.pt", self.every)

    def resumable(self) -> bool:
        """Whether an earlier attempt of this run left state to resume from."""
        return self.folder.is_dir() and any(self.folder.glob("train-*.pt"))

    def remove(self) -> None:
        """Once the run's record is written, its state is no longer needed."""
        shutil.rmtree(self.folder, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    """Every RNG stream a run draws from: Python's, numpy's global one, torch's CPU and CUDA generators."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write `state` atomically (temp file in the same folder, fsync, rename): a kill mid-write leaves the previous
    checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"version": STATE_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_state(path: Path) -> dict[str, Any] | None:
    """The state saved at `path`, or None when there is none; one that cannot be read is a one-line error."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file is the same problem for the user
        raise SptbenchError(f"cannot resume from {path} ({type(e).__name__}); delete it to start the run "
                            "afresh") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise SptbenchError(f"{path} is not a training state this sptbench writes; delete it to start afresh")
    return state


def load_trainable(model, saved: dict[str, torch.Tensor], path: Path) -> None:
    """Copy saved trainable parameters into `model`; names and shapes must be the model's own."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(saved) or any(params[n].shape != t.shape for n, t in saved.items()):
        raise SptbenchError(f"{path} holds the state of another model (its trainable parameters differ); delete it to "
                            "start the run afresh")
    with torch.no_grad():
        for n, t in saved.items():
            params[n].copy_(t)
