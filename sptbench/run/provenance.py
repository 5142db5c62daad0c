"""A run's provenance: the device it resolves to, a short device label, the hardware identity its floating-point
results depend on, the peak memory it used, the package versions and the git state of the code.

Two CPUs of different models (or instruction sets) give slightly different float results for the same run, which
flips a few predictions of a short training run; `sptbench check --hardware-tol` tells such pairs apart.
torch is imported by the functions that need it: checking names must not cost a torch import.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sptbench.core.errors import SptbenchError, unknown_choice
from sptbench.core.run_schema import DEVICES, DTYPES

if TYPE_CHECKING:
    import torch


def check_device_dtype(device: str | None, dtype: str | None, where: str | None = None) -> None:
    """A device and a dtype name (None: not given) among the choices, or a one-line error listing them."""
    suffix = f" in {where}" if where else ""
    if device is not None and device not in DEVICES:
        raise unknown_choice(f"device{suffix}", str(device), DEVICES)
    if dtype is not None and dtype not in DTYPES:
        raise unknown_choice(f"dtype{suffix}", str(dtype), DTYPES)


def resolve_device(name: str) -> torch.device:
    """The device a run uses for `--device name`: `auto` is CUDA when there is one; `cuda` without one is an error."""
    import torch

    check_device_dtype(name, None)
    if name == "cuda" and not torch.cuda.is_available():
        raise SptbenchError("--device cuda was asked for, but no CUDA device is available")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated since the last reset; CPU: the process's peak RSS so far."""
    if device.type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux: the process's peak RSS
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


def device_label(device: torch.device) -> str:
    """`cpu (2 threads)` or the GPU's name: the record's `throughput.device`."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def hardware_id(device: torch.device) -> str:
    """The processor that computed a run (model, the kernels torch picks for it, CPU threads): `throughput.hardware`."""
    import torch

    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (sm_{major}{minor})"
    return f"{_cpu_model()} ({torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads)"


@functools.cache
def _cpu_model() -> str:
    """`model name [vendor family/model/stepping]` from /proc/cpuinfo (VMs often mask the name), else platform."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough
                name, _, value = line.partition(":")
                fields[name.strip()] = value.strip()
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown cpu"
    ids = [fields[k] for k in ("vendor_id", "cpu family", "model", "stepping") if k in fields]
    return f"{name} [{ids[0]} {'/'.join(ids[1:])}]" if len(ids) == 4 else name


def _own_version() -> str | None:
    """sptbench's installed version (read from its metadata: no import of the package root)."""
    try:
        return importlib.metadata.version("sptbench")
    except importlib.metadata.PackageNotFoundError:
        return None


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "sptbench": _own_version()}
    for pkg in ("torch", "transformers", "peft", "datasets", "accelerate", "evaluate"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


# What `git.dirty` looks at: the code a run executes, not the results files the runs themselves write.
CODE_PATHS = ("sptbench", "tasks", "pyproject.toml")


@functools.cache
def git_state(root: Path | None = None) -> dict[str, Any]:
    """The checkout's commit, and whether the code differs from it. Read once per process, at its first run: a
    long sweep keeps executing the code it imported, so later commits must not be claimed by its records."""
    root = root or Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(["git", "status", "--porcelain", "--", *CODE_PATHS], cwd=root, capture_output=True,
                                text=True, timeout=10)
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
