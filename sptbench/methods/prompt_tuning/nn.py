"""Prompt tuning's injection: the trainable input prompt (config and registration: this package's __init__), and
DePT's, the same prompt with a low-rank update of the token embeddings (config: sptbench/methods/dept.py)."""

from __future__ import annotations

import math

import torch
from torch import nn

from sptbench.core.errors import SptbenchError
from sptbench.models.inject import Injection


class InputPrompt(Injection):
    """m trainable (hidden,) vectors, the same for every example, prepended to the word embeddings."""

    def __init__(self, init: torch.Tensor):
        super().__init__()
        self.prompt = nn.Parameter(init.clone())

    def input_prompt(self, batch_size: int) -> torch.Tensor:
        return self.prompt.unsqueeze(0).expand(batch_size, -1, -1)


class DecomposedPrompt(InputPrompt):
    """DePT's injection (sptbench/methods/dept.py): a shorter input prompt, plus a low-rank update of the token
    embeddings, scaling * (A B)[j] added to the token at position j (counted from its first real token, so either
    padding side gives each token the same row; padding gets none). A: (max_length, r), B: (r, hidden)."""

    def __init__(self, prompt: torch.Tensor, max_length: int, rank: int, scaling: float):
        super().__init__(prompt)
        hidden = prompt.shape[1]
        self.scaling = scaling
        self.lora_embedding_A = nn.Parameter(prompt.new_empty(max_length, rank))
        self.lora_embedding_B = nn.Parameter(prompt.new_zeros(rank, hidden))  # zero: the update starts at nothing
        nn.init.kaiming_uniform_(self.lora_embedding_A, a=math.sqrt(5))  # as the DePT code

    def input_offset(self, token_mask: torch.Tensor) -> torch.Tensor:
        max_length = self.lora_embedding_A.shape[0]
        if token_mask.shape[1] > max_length:
            raise SptbenchError(f"dept: a batch of {token_mask.shape[1]} token positions is longer than its "
                                f"max_length {max_length} (--set max_length=N)")
        positions = (token_mask.long().cumsum(1) - 1).clamp(min=0)  # (batch, n): j for the j-th real token
        rows = self.lora_embedding_A[positions] @ self.lora_embedding_B  # (batch, n, hidden)
        return rows * (self.scaling * token_mask.unsqueeze(-1).to(rows.dtype))
