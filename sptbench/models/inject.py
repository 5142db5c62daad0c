"""The one injection layer every prompt-like method goes through.

Three ways in, written once for all families:
- input prompts: vectors prepended to the token embeddings before the embedding module (positions, LayerNorm
  and dropout applied to them as to tokens, exactly as peft's prompt tuning does), and input offsets: vectors added
  to the tokens' own embeddings there (DePT's low-rank update);
- hidden-state prompts at layer l: the prompt hidden states that enter layer l (inserted, or replacing the prompt
  positions propagated from layer l-1), as in deep prompt tuning, LPT and SPT;
- key/value prefixes at layer l: extra keys and values seen by every query, no query rows of their own and no
  output positions (P-tuning v2).
Module wrappers (adapters) need no runtime hook; LoRA comes from peft.

Prompt positions always sit at the front of the sequence; pooling reads the token positions only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask

ATTN_IMPLEMENTATION = "sptbench_prefix"


class Injection(nn.Module):
    """Base class of a method's prompt-like pieces. Override what the method uses; the defaults inject nothing."""

    def input_prompt(self, batch_size: int) -> torch.Tensor | None:
        """(batch, m, hidden) vectors prepended to the token embeddings, or None."""
        return None

    def input_offset(self, token_mask: torch.Tensor) -> torch.Tensor | None:
        """(batch, n, hidden) added to the token embeddings (word embeddings, before positions, LayerNorm and dropout),
        or None. `token_mask` is the (batch, n) padding mask, either padding side (DePT: a row per token position)."""
        return None

    def layer_prompt(
        self, layer: int, tokens: torch.Tensor, token_mask: torch.Tensor, prompt: torch.Tensor | None
    ) -> torch.Tensor | None:
        """The (batch, m, hidden) prompt hidden states entering `layer`, or None to keep `prompt` as it is.

        `tokens` are the token hidden states entering the layer, `token_mask` their (batch, n) padding mask and
        `prompt` the prompt hidden states propagated from the layer below (None where there are none yet).
        """
        return None

    def kv_prefix(self, layer: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(keys, values), each (batch, heads, p, head_dim), prepended to the attention keys of `layer`, or None."""
        return None

    def first_layer(self) -> int:
        """The lowest layer whose input this injection changes (0 = the input, the default: always correct, only
        slower). Layers below it run without autograd (with `frozen_layers: cache`, once per example), so an
        override must never return a layer above one the injection touches (docs/methods.md)."""
        return 0

    def export_state(self) -> dict[str, torch.Tensor] | None:
        """What save writes for this injection (None: its trainable parameters as they are)."""
        return None

    def import_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load what `export_state` wrote."""
        self.load_state_dict(state, strict=True)


def prefix_attention(module: nn.Module, query, key, value, attention_mask, **kwargs):
    """An `AttentionInterface` function: sdpa, with the module's current key/value prefix (if any) prepended."""
    prefix = getattr(module, "_sptbench_prefix", None)
    if prefix is not None:
        pk, pv = prefix
        key = torch.cat([pk.to(key.dtype), key], dim=2)
        value = torch.cat([pv.to(value.dtype), value], dim=2)
        if attention_mask is not None:  # the prefix is visible to every query (bool: True, additive: 0 = attend)
            visible = True if attention_mask.dtype == torch.bool else 0.0
            attention_mask = F.pad(attention_mask, (pk.shape[2], 0), value=visible)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(ATTN_IMPLEMENTATION, prefix_attention)
# The stock forward (e.g. peft's wrappers, comparisons in tests) builds its masks as for eager: additive floats.
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, eager_mask)


def enable_prefixes(backbone: nn.Module, family) -> None:
    """Route every layer's attention through the prefix-aware path (idempotent). Without prefixes it is stock.

    A family whose attention bypasses transformers' `AttentionInterface` installs its own path
    (`Family.install_prefix_path`); the others get the registered `prefix_attention`."""
    if family.install_prefix_path(backbone):
        return
    backbone.config._attn_implementation = ATTN_IMPLEMENTATION
    for module in backbone.modules():
        if getattr(module, "config", None) is not None and module.config is not backbone.config:
            module.config._attn_implementation = ATTN_IMPLEMENTATION
