"""DePT (Shi & Lipani, ICLR 2024, "DePT: Decomposed Prompt Tuning for Parameter-Efficient Fine-tuning"; code:
github.com/ZhengxiangShi/DePT, `peft/tuners/prompt_tuning_lora.py`).

A soft prompt of l vectors is decomposed into a shorter prompt of m vectors and a low-rank pair A ∈ R^{s×r},
B ∈ R^{r×H} whose product updates the input token embeddings position by position: E' = E + (α / sqrt(r)) A B, s the
maximum sequence length; m·H + (s + H)·r parameters (DePT's choice keeps l·H). The prompt and the pair train with
two learning rates: the run's (--lr) for the prompt and the head, `embedding_lr` for A and B (both in the record key:
the first in its training options, the second in the method's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from sptbench.core.errors import SptbenchError, unknown_choice
from sptbench.methods.prompt_tuning import INITS, initial_prompt
from sptbench.methods.registry import register_method

if TYPE_CHECKING:  # torch loads when a model is built, not when methods are listed (the injection: prompt_tuning/nn)
    from sptbench.models.classifier import Classifier


@dataclass
class DeptConfig:
    """Decomposed prompt tuning."""

    num_tokens: int = field(default=40, metadata={
        "help": "m, the shorter prompt's length (the DePT code's example: 40 with r = 45, the parameters of a "
                "100-token prompt on T5-base)"})
    rank: int = field(default=45, metadata={"help": "r, the rank of the embedding update A B"})
    max_length: int = field(default=256, metadata={
        "help": "s, the positions A covers (the DePT code's max_length, 256); longer inputs are refused"})
    alpha: float = field(default=8.0, metadata={
        "help": "the update is scaled by alpha / sqrt(r) (the DePT code's lora_alpha default, 8)"})
    embedding_lr: float = field(default=5e-4, metadata={
        "help": "the learning rate of A and B (the DePT code's LORA_LR grid: 5e-4, 5e-3, 3e-1); the prompt and the "
                "head train at the run's --lr"})
    init: Literal["vocab", "peft_vocab", "random"] = field(default="vocab", metadata={
        "help": "the prompt's init, as prompt_tuning's: vocab = embeddings of tokens drawn from the vocabulary; "
                "random = noise of the word embeddings' scale (the DePT code draws N(0, 1), T5's scale)"})

    def validate(self) -> None:
        for name in ("num_tokens", "rank", "max_length"):
            if getattr(self, name) < 1:
                raise SptbenchError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.embedding_lr < 1.0:
            raise SptbenchError(f"embedding_lr must be in (0, 1), got {self.embedding_lr}")
        if self.init not in INITS:
            raise unknown_choice("prompt init", self.init, INITS)


def apply(model: Classifier, cfg: DeptConfig) -> None:
    from sptbench.methods.prompt_tuning.nn import DecomposedPrompt

    words = model.family.word_embeddings(model.backbone)
    inj = DecomposedPrompt(initial_prompt(words, cfg.num_tokens, cfg.init), cfg.max_length, cfg.rank,
                           cfg.alpha / math.sqrt(cfg.rank))
    for p in (inj.lora_embedding_A, inj.lora_embedding_B):
        p.sptbench_lr = cfg.embedding_lr  # the optimizer's second learning rate (training/loop.py build_optimizer)
    model.add_injection(inj)


register_method(
    "dept",
    DeptConfig,
    apply,
    "DePT (Shi & Lipani 2024): a shorter input prompt plus a low-rank update of the token embeddings, two lrs",
    default_lr=3e-2,
)
