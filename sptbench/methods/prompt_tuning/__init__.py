"""Prompt tuning (Lester et al., 2021): m trainable vectors prepended to the token embeddings.

The prompt enters before the embedding module, exactly as peft's PROMPT_TUNING does: position embeddings,
the embedding LayerNorm and dropout apply to the prompt positions as to the tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from sptbench.core.errors import SptbenchError, unknown_choice
from sptbench.methods.registry import register_method

if TYPE_CHECKING:  # torch loads when a model is built, not when methods are listed (the injection: nn/)
    import torch
    from torch import nn

    from sptbench.models.classifier import Classifier

INITS = ("vocab", "peft_vocab", "random")


@dataclass
class PromptTuningConfig:
    """Prompt tuning."""

    num_tokens: int = field(default=20, metadata={"size": True,
        "help": "prompt length m (Lester et al.: 20 is near the plateau for most model sizes)"})
    init: Literal["vocab", "peft_vocab", "random"] = field(default="vocab", metadata={
        "help": "vocab = each prompt vector is the embedding of a token drawn uniformly from the vocabulary (global "
                "RNG; Lester et al.'s best init, who drew from the 5,000 most frequent tokens; peft's SAMPLE_VOCAB "
                "draws from all); peft_vocab = the same, drawn exactly as peft's SAMPLE_VOCAB draws it (a normal draw "
                "of the prompt's shape first, then the token ids), so a peft loop with the same seed starts from the "
                "same prompt (docs/conformance.md); random = N(0, s^2), s the std of the word-embedding table"})

    def validate(self) -> None:
        if self.num_tokens < 1:
            raise SptbenchError(f"num_tokens must be >= 1, got {self.num_tokens}")
        if self.init not in INITS:
            raise unknown_choice("prompt init", self.init, INITS)


def initial_prompt(words: nn.Embedding, num_tokens: int, init: str) -> torch.Tensor:
    """The (num_tokens, hidden) starting prompt: sampled vocabulary embeddings or scale-matched Gaussian noise. `vocab`
    rows go through the embedding module and `random` noise takes its scale, so an embedding that scales its output
    (Gemma's sqrt(hidden)) gives prompts of its tokens' scale; `peft_vocab` is peft's draw, the stored rows as they
    are (peft's own scale on such a model)."""
    import torch

    table = words.weight.detach()
    if init == "peft_vocab":  # peft's PromptEmbedding: nn.Embedding(m, d) (a normal draw), then randint(vocab)
        torch.empty(num_tokens, table.shape[1]).normal_()
        ids = torch.randint(0, table.shape[0], (num_tokens,), dtype=torch.long).to(table.device)
        return table[ids].clone()
    if init == "vocab":
        ids = torch.randint(0, table.shape[0], (num_tokens,), device=table.device)
        with torch.no_grad():  # through the module: its output is a fresh tensor, as the model's input sees it
            return words(ids)
    if init == "random":
        scale = float(getattr(words, "scalar_embed_scale", 1.0))  # Gemma's embedding multiplies by it
        return torch.randn(num_tokens, table.shape[1], device=table.device, dtype=table.dtype) * table.std() * scale
    raise unknown_choice("prompt init", init, INITS)


def apply(model: Classifier, cfg: PromptTuningConfig) -> None:
    from sptbench.methods.prompt_tuning.nn import InputPrompt

    words = model.family.word_embeddings(model.backbone)
    model.add_injection(InputPrompt(initial_prompt(words, cfg.num_tokens, cfg.init)))


register_method(
    "prompt_tuning",
    PromptTuningConfig,
    apply,
    "prompt tuning (Lester et al. 2021): trainable input prompt vectors, frozen backbone",
    default_lr=3e-2,
)
