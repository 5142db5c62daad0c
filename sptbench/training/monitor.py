"""Watching a long run: a progress line at every dev evaluation (step, training loss, dev score, best so far, ETA)
and, on request, the same numbers to TensorBoard or Weights & Biases (extras `tensorboard`, `wandb`; off by
default, and nothing leaves the machine unless `--logger wandb` is asked for)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sptbench.core.errors import SptbenchError


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


class Monitor:
    """Called by the training loop after each dev evaluation. `label`: the run, as the sweep names it; `lines`:
    print the progress line (to stderr); `backend`: a TensorBoard or W&B writer (`make_backend`)."""

    def __init__(self, label: str, *, lines: bool = True, backend: Any = None,
                 write: Callable[[str], None] | None = None):
        self.label, self.lines, self.backend = label, lines, backend
        self.write = write or (lambda text: tqdm.write(text, file=sys.stderr))  # below any progress bar
        self.t0: float | None = None
        self.first_step = 0
        self.call = 0

    def start(self, step: int) -> None:
        """A training call starts (or resumes) at `step`: the ETA counts from here."""
        self.t0, self.first_step = time.perf_counter(), step
        self.call += 1

    def eval(self, step: int, max_steps: int, train_loss: float, dev: dict, best: float) -> None:
        done = step - self.first_step
        elapsed = time.perf_counter() - (self.t0 if self.t0 is not None else time.perf_counter())
        eta = elapsed / done * (max_steps - step) if done > 0 else 0.0
        if self.lines:
            stage = f" [stage {self.call}]" if self.call > 1 else ""
            self.write(f"{self.label}{stage}: step {step}/{max_steps} loss {train_loss:.4f} dev {dev['score']:.4f} "
                       f"(best {best:.4f}) ETA {format_eta(eta)}")
        if self.backend is not None:
            prefix = f"stage{self.call}/" if self.call > 1 else ""
            metrics = {f"{prefix}train/loss": train_loss, **{f"{prefix}dev/{k}": v for k, v in dev.items()}}
            self.backend.log(metrics, step)

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()


class _TensorBoard:
    def __init__(self, folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise SptbenchError("--logger tensorboard needs the package 'tensorboard': pip install "
                                "'sptbench[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(folder))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, folder: Path, name: str, config: dict):
        try:
            import wandb
        except ImportError:
            raise SptbenchError("--logger wandb needs the package 'wandb': pip install 'sptbench[wandb]'") from None
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project="sptbench", name=name, dir=str(folder), config=config, reinit=True)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


def make_backend(kind: str, folder: str | Path, name: str, config: dict) -> Any:
    """The writer of `--logger KIND` (none: None), logging under `folder/name`."""
    if kind == "none":
        return None
    if kind == "tensorboard":
        return _TensorBoard(Path(folder) / name)
    if kind == "wandb":
        return _WandB(Path(folder), name, config)
    raise SptbenchError(f"unknown logger '{kind}'")
