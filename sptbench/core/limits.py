"""Bounds on what an input may ask for: memory for parameters (an option of 10^9 must be refused with the number,
not fail inside an allocator or swap the machine to a halt) and the size of a plan (a grid is counted, not built,
before it is refused)."""

from __future__ import annotations

import os

from sptbench.core.errors import InvalidValue

BYTES_PER_PARAMETER = 4  # fp32: parameters are built in fp32 (bf16 runs autocast, they do not store bf16)


def memory_bytes() -> int:
    """This machine's physical memory (the most any allocation here can get); 0 where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:,.1f} GiB"


def check_allocation(what: str, n_parameters: int, *, bound: bool = False) -> None:
    """Refuse `n_parameters` fp32 parameters that cannot fit in this machine's memory, naming what asks for them and
    the numbers (parameters only: training needs about 4x that with gradients and optimizer states). `bound`: the
    count is an upper bound ("up to")."""
    need = n_parameters * BYTES_PER_PARAMETER
    have = memory_bytes()
    if have and need > have:
        up_to = "up to " if bound else ""
        raise InvalidValue(f"{what} needs {up_to}{n_parameters:,} parameters ({gib(need)}), more than this "
                           f"machine's {gib(have)} of memory")
