"""What a run runs on: the device it resolves to, a short device label, the hardware identity
its floating-point results depend on, and the peak memory it used.

Two CPUs of different models (or instruction sets) give slightly different float results for the same run, which
flips a few predictions of a short training run; `sptbench check --hardware-tol` tells such pairs apart.
torch is imported by the functions that need it: checking names must not cost a torch import.
"""

from __future__ import annotations

import functools
import platform
import resource
import sys
from typing import TYPE_CHECKING

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
