"""Prompt tuning's injection: the trainable input prompt (config and registration: this package's __init__)."""

from __future__ import annotations

import torch
from torch import nn

from sptbench.models.inject import Injection


class InputPrompt(Injection):
    """m trainable (hidden,) vectors, the same for every example, prepended to the word embeddings."""

    def __init__(self, init: torch.Tensor):
        super().__init__()
        self.prompt = nn.Parameter(init.clone())

    def input_prompt(self, batch_size: int) -> torch.Tensor:
        return self.prompt.unsqueeze(0).expand(batch_size, -1, -1)
