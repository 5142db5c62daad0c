"""Tests for sptbench/run/provenance.py: the processor identity that `sptbench check --hardware-tol` compares."""

from __future__ import annotations

import torch

from sptbench.run.provenance import device_label, hardware_id


def test_cpu_hardware_id_names_the_kernels_and_the_threads():
    cpu = torch.device("cpu")
    threads = torch.get_num_threads()
    hw = hardware_id(cpu)
    assert torch.backends.cpu.get_cpu_capability() in hw and f"{threads} threads" in hw
    assert device_label(cpu) == f"cpu ({threads} threads)"
    try:
        torch.set_num_threads(1 if threads > 1 else 2)  # another thread count can reorder float reductions
        assert hardware_id(cpu) != hw
    finally:
        torch.set_num_threads(threads)
    assert hardware_id(cpu) == hw
