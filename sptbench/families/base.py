"""Per-architecture descriptions: where the embeddings, layers, attention and FFN output live, and how to run one layer.

Methods ask the Family, never `isinstance` a model class. `Classifier` runs the backbone layer by layer through
these descriptions, which is what lets prompts enter (or change length) between layers and lets frozen layers
below the first trainable one run without autograd.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.deberta_v2.modeling_deberta_v2 import scaled_size_sqrt

from sptbench.core.errors import SptbenchError


@dataclass(frozen=True)
class Family:
    name: str
    causal: bool
    default_pooling: str  # cls | mean | last
    lora_targets: tuple[str, ...]  # peft target module names for the query and value projections
    lm_head_name: str = "cls"  # the LM head's attribute on the *ForMaskedLM / *LMHeadModel (the prompt head)
    attn_implementation: str = "sdpa"  # what transformers loads the backbone with (eager: its own attention only)

    # -- where things are ---------------------------------------------------------------------------------------
    def embeddings(self, backbone: nn.Module) -> nn.Module:
        return backbone.embeddings

    def word_embeddings(self, backbone: nn.Module) -> nn.Embedding:
        return backbone.get_input_embeddings()

    def layers(self, backbone: nn.Module) -> nn.ModuleList:
        return backbone.encoder.layer

    def self_attention(self, layer: nn.Module) -> nn.Module:
        """The module that computes attention from queries, keys and values (prefixes are attached here)."""
        return layer.attention.self

    def attention_out_proj(self, layer: nn.Module) -> nn.Module:
        """The attention output projection (Houlsby adapters go right after it, before the residual)."""
        return layer.attention.output.dense

    def ffn_out_proj(self, layer: nn.Module) -> nn.Module:
        """The FFN output projection (adapters go right after it, before the residual)."""
        return layer.output.dense

    def num_heads(self, backbone: nn.Module) -> int:
        return backbone.config.num_attention_heads

    def hidden_size(self, backbone: nn.Module) -> int:
        return backbone.config.hidden_size

    # -- how to run ---------------------------------------------------------------------------------------------
    def embed(
        self,
        backbone: nn.Module,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """The embedding module's output, exactly as the stock model computes it."""
        return self.embeddings(backbone)(
            input_ids=input_ids, inputs_embeds=inputs_embeds, token_type_ids=token_type_ids
        )

    def layer_mask(self, key_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        """The attention mask a layer takes, from a (batch, keys) bool mask: additive, (batch, 1, queries|1, keys);
        None where every key is real (encoders)."""
        bsz, k = key_mask.shape
        if (not self.causal and key_mask.device.type == "cpu" and not torch.compiler.is_compiling()
                and bool(key_mask.all())):
            return None  # nothing to mask: sdpa's unmasked kernel (checked eagerly on the CPU only: no GPU host sync)
        allowed = key_mask[:, None, None, :]
        if self.causal:
            allowed = allowed & torch.ones(k, k, dtype=torch.bool, device=key_mask.device).tril()[None, None]
        return torch.zeros(allowed.shape, dtype=dtype, device=key_mask.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )

    def run_layer(
        self, backbone: nn.Module, layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        return layer(hidden, attention_mask=mask)

    def final(self, backbone: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Anything the stock model applies after the last layer (GPT-2's final LayerNorm)."""
        return hidden

    # -- the pretrained LM head (the prompt head reads through it) ----------------------------------------------
    def lm_head(self, lm_model: nn.Module) -> nn.Module:
        """The LM head module of a masked LM (encoders) or causal LM (GPT-2) built by transformers."""
        return getattr(lm_model, self.lm_head_name)

    def lm_logits(self, backbone: nn.Module, head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of final hidden states (after `final`), as the stock LM model computes them."""
        return head(hidden)

    def install_prefix_path(self, backbone: nn.Module) -> bool:
        """Give the attention a family-specific key/value prefix path (idempotent) and return True; False: the
        attention goes through transformers' `AttentionInterface`, where sptbench/models/inject.py adds prefixes."""
        return False


def _patch_attention(family: Family, backbone: nn.Module, forward) -> None:
    """Replace every layer's attention forward by `forward` (a prefix-aware version of it), once; the stock forward
    stays reachable as `_sptbench_original_forward` (what `forward` calls when there is no prefix)."""
    for layer in family.layers(backbone):
        attn = family.self_attention(layer)
        if not hasattr(attn, "_sptbench_original_forward"):
            attn._sptbench_original_forward = attn.forward
            attn.forward = types.MethodType(forward, attn)


@dataclass(frozen=True)
class GPT2Family(Family):
    def embeddings(self, backbone: nn.Module) -> nn.Module:
        return backbone.wte

    def layers(self, backbone: nn.Module) -> nn.ModuleList:
        return backbone.h

    def self_attention(self, layer: nn.Module) -> nn.Module:
        return layer.attn

    def attention_out_proj(self, layer: nn.Module) -> nn.Module:
        return layer.attn.c_proj

    def ffn_out_proj(self, layer: nn.Module) -> nn.Module:
        return layer.mlp.c_proj

    def num_heads(self, backbone: nn.Module) -> int:
        return backbone.config.n_head

    def hidden_size(self, backbone: nn.Module) -> int:
        return backbone.config.n_embd

    def embed(self, backbone, input_ids, inputs_embeds, token_type_ids, mask):
        # GPT2Model embeds token_type_ids through wte, which a classifier must not do: they are ignored here.
        if inputs_embeds is None:
            inputs_embeds = backbone.wte(input_ids)
        # positions count real tokens (and prompts) only: left padding gives the same positions as none, right padding
        # the stock ones (arange) on every real token
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)
        return backbone.drop(inputs_embeds + backbone.wpe(positions))

    def final(self, backbone, hidden):
        return backbone.ln_f(hidden)


def _deberta_attention_forward(
    self,
    hidden_states,
    attention_mask,
    output_attentions=False,
    query_states=None,
    relative_pos=None,
    rel_embeddings=None,
):
    """DisentangledSelfAttention.forward with a key/value prefix.

    DeBERTa's attention does not go through `AttentionInterface`. Prefix keys have no position, so they get the
    content-to-content score only: their content-to-position and position-to-content terms are zero.
    """
    prefix = getattr(self, "_sptbench_prefix", None)
    if prefix is None:
        return self._sptbench_original_forward(
            hidden_states, attention_mask, output_attentions, query_states, relative_pos, rel_embeddings
        )
    if query_states is None:
        query_states = hidden_states
    heads = self.num_attention_heads
    q = self.transpose_for_scores(self.query_proj(query_states), heads)  # (batch*heads, n, d)
    k = self.transpose_for_scores(self.key_proj(hidden_states), heads)
    v = self.transpose_for_scores(self.value_proj(hidden_states), heads)
    pk, pv = (t.reshape(-1, t.shape[2], t.shape[3]).to(q.dtype) for t in prefix)  # (batch*heads, p, d)
    p = pk.shape[1]
    scale_factor = 1 + ("c2p" in self.pos_att_type) + ("p2c" in self.pos_att_type)
    scale = scaled_size_sqrt(q, scale_factor).to(q.dtype)
    scores = torch.bmm(q, torch.cat([pk, k], 1).transpose(-1, -2) / scale)
    if self.relative_attention:
        rel = self.disentangled_attention_bias(q, k, relative_pos, self.pos_dropout(rel_embeddings), scale_factor)
        scores = scores + F.pad(rel, (p, 0))
    scores = scores.view(-1, heads, scores.size(-2), scores.size(-1))
    mask = F.pad(attention_mask.bool(), (p, 0), value=True)
    scores = scores.masked_fill(~mask, torch.finfo(q.dtype).min)
    probs = self.dropout(F.softmax(scores, dim=-1))
    context = torch.bmm(probs.view(-1, probs.size(-2), probs.size(-1)), torch.cat([pv, v], 1))
    context = context.view(-1, heads, context.size(-2), context.size(-1)).permute(0, 2, 1, 3).contiguous()
    context = context.view(*context.shape[:-2], -1)
    return (context, probs if output_attentions else None)


@dataclass(frozen=True)
class DebertaV2Family(Family):
    def embed(self, backbone, input_ids, inputs_embeds, token_type_ids, mask):
        if token_type_ids is None:
            shape = (input_ids if input_ids is not None else inputs_embeds[..., 0]).shape
            token_type_ids = torch.zeros(shape, dtype=torch.long, device=mask.device)
        return backbone.embeddings(
            input_ids=input_ids, inputs_embeds=inputs_embeds, token_type_ids=token_type_ids, mask=mask.long()
        )

    def layer_mask(self, key_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # DisentangledSelfAttention takes a boolean mask, True = may attend (broadcast over heads and queries).
        return key_mask[:, None, None, :]

    def lm_head(self, lm_model):
        return lm_model.cls if lm_model.config.legacy else lm_model.lm_predictions

    def lm_logits(self, backbone, head, hidden):
        # the non-legacy head takes the word embeddings as its decoder (DebertaV2ForMaskedLM.forward)
        return head(hidden) if backbone.config.legacy else head(hidden, backbone.embeddings.word_embeddings)

    def run_layer(self, backbone, layer, hidden, mask):
        encoder = backbone.encoder
        relative_pos = encoder.get_rel_pos(hidden)
        out, _ = layer(hidden, mask, relative_pos=relative_pos, rel_embeddings=encoder.get_rel_embedding())
        return out

    def install_prefix_path(self, backbone):
        _patch_attention(self, backbone, _deberta_attention_forward)
        return True


def _mpnet_attention_forward(self, hidden_states, attention_mask=None, position_bias=None, output_attentions=False,
                             **kwargs):
    """MPNetSelfAttention.forward with a key/value prefix (`_sptbench_prefix`, each (batch, heads, p, head_dim)).

    Prefix keys have no position: they get the content score q.k / sqrt(d) only, no relative position bias (zero
    bias columns), and are visible to every query. Without a prefix this is the stock forward.
    """
    prefix = getattr(self, "_sptbench_prefix", None)
    if prefix is None:
        return self._sptbench_original_forward(hidden_states, attention_mask, position_bias, output_attentions)
    shape = (*hidden_states.shape[:-1], -1, self.attention_head_size)
    q, k, v = (proj(hidden_states).view(shape).transpose(1, 2) for proj in (self.q, self.k, self.v))
    pk, pv = (t.to(k.dtype) for t in prefix)
    p = pk.shape[2]
    scores = q @ torch.cat([pk, k], 2).transpose(-1, -2) / math.sqrt(self.attention_head_size)
    if position_bias is not None:
        scores = scores + F.pad(position_bias, (p, 0))
    if attention_mask is not None:  # additive, (batch, 1, 1|queries, keys): 0 = attend, as for every prefix key
        scores = scores + F.pad(attention_mask, (p, 0))
    probs = self.dropout(F.softmax(scores, dim=-1))
    context = (probs @ torch.cat([pv, v], 2)).transpose(1, 2).reshape(*hidden_states.shape[:-1], self.all_head_size)
    out = self.o(context)
    return (out, probs) if output_attentions else (out,)


@dataclass(frozen=True)
class MPNetFamily(Family):
    """MPNet: BERT-like post-LN layers whose attention adds a relative position bias (one scalar per head and
    bucketed distance), which `MPNetEncoder` computes once per forward and hands to every layer.

    Here each layer gets the bias for the sequence it runs on, prompt positions included: prompts sit at the
    front and are biased by their distance like tokens there (as they are when peft's prompt tuning feeds them
    to the stock model as input embeddings); between tokens the bias is the stock one, since it depends on
    distance only. Key/value prefixes have no position and get no bias (`_mpnet_attention_forward`).
    """

    def self_attention(self, layer: nn.Module) -> nn.Module:
        return layer.attention.attn

    def attention_out_proj(self, layer: nn.Module) -> nn.Module:
        return layer.attention.attn.o

    def position_bias(self, backbone: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """The stock relative position bias for `hidden`'s length: (1, heads, n, n), broadcast over the batch."""
        return backbone.encoder.compute_position_bias(hidden[:1])

    def run_layer(self, backbone, layer, hidden, mask):
        return layer(hidden, mask, self.position_bias(backbone, hidden))[0]

    def install_prefix_path(self, backbone):
        _patch_attention(self, backbone, _mpnet_attention_forward)
        return True


FAMILIES: dict[str, Family] = {
    "bert": Family("bert", causal=False, default_pooling="cls", lora_targets=("query", "value")),
    "roberta": Family(
        "roberta", causal=False, default_pooling="cls", lora_targets=("query", "value"), lm_head_name="lm_head"
    ),
    "deberta-v2": DebertaV2Family(
        "deberta-v2", causal=False, default_pooling="cls", lora_targets=("query_proj", "value_proj"),
        attn_implementation="eager",
    ),
    "mpnet": MPNetFamily("mpnet", causal=False, default_pooling="cls", lora_targets=("q", "v"),
                         attn_implementation="eager", lm_head_name="lm_head"),
    "gpt2": GPT2Family("gpt2", causal=True, default_pooling="last", lora_targets=("c_attn",), lm_head_name="lm_head"),
}

def family_for(config) -> Family:
    """The Family of a transformers config, by `model_type`."""
    model_type = getattr(config, "model_type", "?")
    if model_type not in FAMILIES:
        # the checkpoint's architecture, not a typo: list what is supported, suggest nothing
        raise SptbenchError(f"unsupported backbone family '{model_type}' (config.model_type); supported model types: "
                            f"{', '.join(sorted(FAMILIES))}")
    if model_type == "deberta-v2" and getattr(config, "conv_kernel_size", 0) > 0:
        raise SptbenchError("DeBERTa-v2 configs with a convolution layer (conv_kernel_size > 0) are not supported")
    return FAMILIES[model_type]
