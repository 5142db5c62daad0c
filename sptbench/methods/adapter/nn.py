"""The adapter's modules: the bottleneck and the wrapper that puts it after a projection (config and registration:
sptbench/methods/adapter/__init__.py)."""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh, "swish": nn.SiLU}


class Adapter(nn.Module):
    """h -> h + up(f(down(h))), with `up` zero-initialised so that the adapter starts as the identity."""

    def __init__(self, hidden: int, bottleneck: int, activation: str):
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck)  # torch's default (Kaiming-uniform) init, as LoRA's A
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))


class WithAdapter(nn.Module):
    """A frozen projection followed by an adapter; the projection itself is left untouched."""

    def __init__(self, base: nn.Module, adapter: Adapter):
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, *args, **kwargs):
        return self.adapter(self.base(*args, **kwargs))


def wrap_module(root: nn.Module, target: nn.Module, adapter: Adapter) -> None:
    """Replace `target` (a submodule of `root`, found by identity) with `WithAdapter(target, adapter)`."""
    for name, module in root.named_modules():
        if module is target and name:
            parent_name, _, attr = name.rpartition(".")
            parent = root.get_submodule(parent_name) if parent_name else root
            setattr(parent, attr, WithAdapter(target, adapter))
            return
    raise RuntimeError(f"module {type(target).__name__} not found inside the layer")
