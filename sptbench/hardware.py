"""What a run ran on: a short device label and the hardware identity its floating-point results depend on.

Two CPUs of different models (or instruction sets) give slightly different float results for the same run, which
flips a few predictions of a short training run; `sptbench check --hardware-tol` tells such pairs apart.
"""

from __future__ import annotations

import functools
import platform

import torch


def device_label(device: torch.device) -> str:
    """`cpu (2 threads)` or the GPU's name: the record's `throughput.device`."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def hardware_id(device: torch.device) -> str:
    """The processor that computed a run (model, the kernels torch picks for it, CPU threads): `throughput.hardware`."""
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
