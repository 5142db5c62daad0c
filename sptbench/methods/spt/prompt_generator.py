"""LPT-style instance-aware prompt generator: down-project the tokens, pool them to m positions, activate, up-project.

    PG(H) = W_up · act( pool_m( W_down · H + b_down ) ) + b_up          H: (batch, n, d) -> (batch, m, d)

`pool_m` is adaptive pooling over the *real* tokens only (the padding mask decides), with the bins of
`torch.nn.functional.adaptive_{avg,max}_pool1d` applied to each example's unpadded sequence: bin j of a sequence of
n real tokens covers token ranks [floor(j n / m), ceil((j + 1) n / m)). A padded batch therefore gives the same
prompts as each example alone (batch invariance), whatever side the padding is on.
Reconstruction (Late Prompt Tuning's text gives the four parts, not these details): see docs/spt.md.

`NaivePromptGenerator` is Late Prompt Tuning's public code's "naive" generator: one summary vector (the first
token's hidden state; for a causal model the last real token's), down-projected, activated, up-projected to m x d
and reshaped to m prompt positions.
"""

from __future__ import annotations

import torch
from torch import nn

POOLINGS = ("avg", "max")
GENERATORS = ("pooled", "naive")
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def pooling_bins(token_mask: torch.Tensor, m: int) -> torch.Tensor:
    """(batch, m, n) bool: token i of example b is in pooling bin j (adaptive-pooling bins over the real tokens)."""
    mask = token_mask.bool()
    rank = mask.long().cumsum(1) - 1  # 0-based rank of each real token (padding anywhere is skipped)
    n = mask.long().sum(1)[:, None, None]  # (batch, 1, 1)
    j = torch.arange(m, device=mask.device)[None, :, None]  # (1, m, 1)
    start = torch.div(j * n, m, rounding_mode="floor")
    end = torch.div((j + 1) * n + m - 1, m, rounding_mode="floor")
    rank = rank[:, None, :]
    return (rank >= start) & (rank < end) & mask[:, None, :]


def masked_adaptive_pool(x: torch.Tensor, token_mask: torch.Tensor, m: int, how: str) -> torch.Tensor:
    """Adaptive `avg`/`max` pooling of (batch, n, r) over each example's real tokens to (batch, m, r).

    An example with no real token pools to zeros.
    """
    bins = pooling_bins(token_mask, m)  # (b, m, n)
    if how == "avg":
        weights = bins.to(x.dtype)
        weights = weights / weights.sum(-1, keepdim=True).clamp(min=1.0)
        return torch.bmm(weights, x)
    if how == "max":
        neg = torch.finfo(x.dtype).min
        pooled = x[:, None, :, :].masked_fill(~bins[..., None], neg).amax(2)  # (b, m, r)
        return pooled.masked_fill(~bins.any(-1, keepdim=True), 0.0)
    raise ValueError(f"unknown pooling {how!r}")


class PromptGenerator(nn.Module):
    """Instance-aware prompts for one layer from the token hidden states entering it (Late Prompt Tuning style)."""

    def __init__(self, hidden: int, num_tokens: int, bottleneck: int, pooling: str = "avg", activation: str = "relu"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choices: {POOLINGS}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choices: {tuple(ACTIVATIONS)}")
        self.num_tokens = num_tokens
        self.pooling = pooling
        self.down = nn.Linear(hidden, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, hidden)

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """(batch, n, d) token hidden states and their (batch, n) mask -> (batch, m, d) prompt hidden states."""
        z = self.down(tokens.to(self.down.weight.dtype))
        z = masked_adaptive_pool(z, token_mask, self.num_tokens, self.pooling)
        return self.up(self.act(z))


class NaivePromptGenerator(nn.Module):
    """LPT's naive generator: W_up · act(W_down · h + b_down) + b_up reshaped to (m, d), h the summary token's state.

    `summary`: "first" (encoders: the first token) or "last" (causal models: the last real token)."""

    def __init__(self, hidden: int, num_tokens: int, bottleneck: int, activation: str = "relu", summary: str = "first"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choices: {tuple(ACTIVATIONS)}")
        if summary not in ("first", "last"):
            raise ValueError(f"unknown summary token {summary!r}; choices: first, last")
        self.num_tokens, self.hidden, self.summary = num_tokens, hidden, summary
        self.down = nn.Linear(hidden, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, num_tokens * hidden)

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """(batch, n, d) token hidden states and their (batch, n) mask -> (batch, m, d) prompt hidden states."""
        mask = token_mask.bool()
        if self.summary == "first":
            index = mask.long().argmax(1)  # the first real token (right padding: position 0)
        else:
            index = (mask.long().cumsum(1) == mask.long().sum(1, keepdim=True)).long().argmax(1)  # the last real one
        h = tokens[torch.arange(tokens.shape[0], device=tokens.device), index]
        z = self.up(self.act(self.down(h.to(self.down.weight.dtype))))
        return z.view(tokens.shape[0], self.num_tokens, self.hidden)


def make_generator(kind: str, hidden: int, num_tokens: int, bottleneck: int, pooling: str, activation: str,
                   causal: bool) -> nn.Module:
    """A `pooled` (PromptGenerator) or `naive` (NaivePromptGenerator) generator."""
    if kind == "naive":
        return NaivePromptGenerator(hidden, num_tokens, bottleneck, activation, "last" if causal else "first")
    if kind == "pooled":
        return PromptGenerator(hidden, num_tokens, bottleneck, pooling, activation)
    raise ValueError(f"unknown generator {kind!r}; choices: {GENERATORS}")
