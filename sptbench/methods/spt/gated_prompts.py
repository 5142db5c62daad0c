"""The SPT injection: a prompt generator per candidate layer, each behind a learnable probabilistic gate.

The prompt hidden states entering candidate layer l are

    P_l = α_l · PG_l(H_{l-1}) + (1 - α_l) · P̃_{l-1},        α_l = sigmoid(a_l / τ)

where H_{l-1} are the token hidden states entering layer l (the embedding output at l = 0), PG_l is layer l's
`PromptGenerator` and P̃_{l-1} the prompt hidden states output by layer l-1 (zeros where there are none yet: at
the first candidate layer). Non-candidate layers keep the propagated prompt. With `gated=False` every candidate
layer is a hard gate (α = 1): a fresh prompt there, propagation elsewhere, nothing below the first one (LPT, and
SPT's re-training stage).

Gate variants (`gate`): "deterministic" mixes with α itself (the relaxation above). "stochastic" is a relaxed
Bernoulli gate (binary concrete / Gumbel-sigmoid): in training each example draws z = sigmoid((a + L) / λ) with L
logistic noise and uses the hard decision 1[z > 0.5] in the forward with z's gradient (straight-through), λ annealed
by the search (`set_gate_temperature`); in evaluation it is deterministic, α = sigmoid(a / τ) as above.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sptbench.methods.spt.prompt_generator import make_generator
from sptbench.models.inject import Injection

GATES = ("deterministic", "stochastic")


class GatedPrompts(Injection):
    """Prompt generators at `layers`; learnable gates (search) or hard gates at every one of them (re-training, LPT)."""

    def __init__(
        self,
        hidden: int,
        layers: Sequence[int],
        *,
        num_tokens: int,
        bottleneck: int,
        pooling: str = "avg",
        activation: str = "relu",
        gated: bool = True,
        temperature: float = 1.0,
        gate_init: float = 0.0,
        generator: str = "pooled",
        causal: bool = False,
        gate: str = "deterministic",
    ):
        super().__init__()
        if not layers:
            raise ValueError("GatedPrompts needs at least one layer")
        self.prompt_layers: tuple[int, ...] = tuple(sorted(set(int(x) for x in layers)))
        self._index = {layer: i for i, layer in enumerate(self.prompt_layers)}
        if gate not in GATES:
            raise ValueError(f"unknown gate {gate!r}; choices: {GATES}")
        self.num_tokens = num_tokens
        self.gated = gated
        self.gate = gate
        self.temperature = float(temperature)
        self.gate_temperature = 1.0  # λ of the stochastic gate's relaxation, annealed by the search
        self.generators = nn.ModuleDict({
            str(x): make_generator(generator, hidden, num_tokens, bottleneck, pooling, activation, causal)
            for x in self.prompt_layers
        })
        if gated:
            self.gate_logits = nn.Parameter(torch.full((len(self.prompt_layers),), float(gate_init)))
        else:
            self.register_parameter("gate_logits", None)
        self.active: int | None = None  # single-path search: only this layer's prompt, hard (LPT there), gates unused

    def alphas(self) -> torch.Tensor:
        """α per prompt layer, in the order of `prompt_layers` (all ones for hard gates)."""
        if self.gate_logits is None:
            return torch.ones(len(self.prompt_layers))
        return torch.sigmoid(self.gate_logits / self.temperature)

    def set_gate_temperature(self, value: float) -> None:
        """λ of the stochastic gate's relaxed sample (the search anneals it)."""
        self.gate_temperature = float(value)

    def _gate(self, i: int, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """The mixing weight of prompt layer i: α (deterministic, and every gate in evaluation), or per example a
        straight-through hard sample of the relaxed Bernoulli (stochastic, training), shaped (batch, 1, 1)."""
        logit = self.gate_logits[i]
        if self.gate == "stochastic" and self.training:
            u = torch.rand(batch, device=logit.device).clamp(1e-6, 1 - 1e-6)
            soft = torch.sigmoid((logit + torch.log(u) - torch.log1p(-u)) / self.gate_temperature)
            hard = (soft > 0.5).to(soft.dtype)
            return (hard + soft - soft.detach()).to(dtype).view(batch, 1, 1)
        return torch.sigmoid(logit / self.temperature).to(dtype)

    def layer_prompt(self, layer, tokens, token_mask, prompt):
        if self.active is not None:  # LPT at the active layer: no prompt positions below it, its prompt above
            return self.generators[str(layer)](tokens, token_mask) if layer == self.active else None
        i = self._index.get(layer)
        if i is None:
            return None  # not a prompt layer: the prompt from below propagates as it is
        new = self.generators[str(layer)](tokens, token_mask)
        if self.gate_logits is None:
            return new
        if prompt is None:
            prompt = torch.zeros_like(new)
        elif prompt.shape[1] != new.shape[1]:
            raise ValueError(
                f"layer {layer}: {prompt.shape[1]} prompt positions arrive from below but the gate mixes {new.shape[1]}"
            )
        alpha = self._gate(i, new.shape[0], new.dtype)
        return alpha * new + (1 - alpha) * prompt.to(new.dtype)

    def first_layer(self) -> int:
        return self.prompt_layers[0]

    def gates(self) -> dict[int, float]:
        """α per prompt layer (the deterministic gate, sigmoid(logit / temperature)); hard prompts: 1.0 each."""
        return {layer: round(float(a), 6) for layer, a in zip(self.prompt_layers, self.alphas().detach().cpu(),
                                                                strict=True)}

    def extra_repr(self) -> str:
        return f"layers={list(self.prompt_layers)}, num_tokens={self.num_tokens}, gated={self.gated}, gate={self.gate}"
