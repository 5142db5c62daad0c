"""`Classifier`: a backbone run layer by layer through its Family, the injections, and a head: pooling and a linear
layer, or the prompt head (the frozen pretrained LM head read at the template's mask, restricted to the label words)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from sptbench.core.errors import InvalidValue, SptbenchError
from sptbench.core.limits import check_allocation
from sptbench.families.base import Family
from sptbench.models.inject import Injection, enable_prefixes

POOLINGS = ("cls", "mean", "last")


def pool(tokens: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Pool (batch, n, hidden) token states over real tokens: first, mean, or last real token. Prompts never enter."""
    if how == "cls":
        return tokens[:, 0]
    if how == "mean":
        m = mask.to(tokens.dtype).unsqueeze(-1)
        return (tokens * m).sum(1) / m.sum(1).clamp(min=1.0)
    if how == "last":  # the last real position, with either padding side
        last = mask.shape[1] - 1 - mask.long().flip(1).argmax(1)
        return tokens[torch.arange(tokens.shape[0], device=tokens.device), last]
    raise ValueError(f"unknown pooling {how!r}")


class PromptHead(nn.Module):
    """The backbone's pretrained LM head, frozen, read at one position per example, restricted to the label words.

    Encoders read the template's mask token (found by id in the token ids, so prompt positions in front of the tokens
    never move it); causal LMs read the last real position (their input is the template cut at the mask). In training
    with loss `vocab` one more column is returned, the log-sum-exp of every other word's logit, so that cross-entropy
    over the returned logits is cross-entropy over the whole vocabulary with the label word as target (Late Prompt
    Tuning); evaluation always compares the label words only (`label_words` loss: LM-BFF).
    """

    def __init__(self, lm_head: nn.Module, family: Family, label_word_ids: list[int], mask_token_id: int | None,
                 loss: str = "label_words"):
        super().__init__()
        if loss not in ("label_words", "vocab"):
            raise ValueError(f"unknown prompt loss {loss!r}")
        self.lm_head = lm_head.requires_grad_(False)
        self.family = family
        self.mask_token_id = mask_token_id
        self.loss = loss
        self.register_buffer("label_word_ids", torch.tensor(label_word_ids, dtype=torch.long), persistent=False)
        self.calibration: torch.Tensor | None = None  # log-probabilities subtracted from the label words' scores

    def read_positions(self, token_mask: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch,) token positions read: the mask token (encoders) or the last real token (causal), either padding."""
        if self.family.causal:
            return token_mask.shape[1] - 1 - token_mask.long().flip(1).argmax(1)
        hits = input_ids == self.mask_token_id
        if input_ids.device.type == "cpu" and not torch.compiler.is_compiling() and not bool((hits.sum(1) == 1).all()):
            raise ValueError("the prompt head needs exactly one mask token per example (encode with the template)")
        return hits.long().argmax(1)

    def forward(self, backbone: nn.Module, tokens: torch.Tensor, token_mask: torch.Tensor,
                input_ids: torch.Tensor) -> torch.Tensor:
        at = self.read_positions(token_mask, input_ids)
        read = tokens[torch.arange(tokens.shape[0], device=tokens.device), at]
        if self.training and self.loss == "vocab":  # the whole vocabulary, at the one position read
            vocab = self.family.lm_logits(backbone, self.lm_head, read.unsqueeze(1)).squeeze(1)  # (batch, vocab)
            words = vocab[:, self.label_word_ids]
            rest = vocab.float().index_fill(1, self.label_word_ids, float("-inf")).logsumexp(-1, keepdim=True)
            return torch.cat([words.float(), rest], 1)
        words = self.family.word_logits(backbone, self.lm_head, read, self.label_word_ids)  # (batch, words)
        if self.calibration is not None:  # contextual calibration (zero_shot): p(word) / p(word | content-free)
            words = words.float() - self.calibration.to(words.device)
        return words


class Classifier(nn.Module):
    """Sequence classifier on any supported backbone, with one place where prompts and prefixes enter."""

    def __init__(self, backbone: nn.Module, family: Family, num_labels: int, pooling: str, head_dropout: float = 0.1,
                 prompt_head: PromptHead | None = None):
        super().__init__()
        self.backbone = backbone
        self.family = family
        self.pooling = pooling
        self.dropout = nn.Dropout(head_dropout)
        # the linear head on the pooled tokens, or the prompt head (the frozen LM head at the template's mask)
        if prompt_head is None:
            check_allocation(f"a linear head for num_labels={num_labels:,}", family.hidden_size(backbone) * num_labels)
        self.head = prompt_head if prompt_head is not None else nn.Linear(family.hidden_size(backbone), num_labels)
        self.injections = nn.ModuleList()
        self.backbone_parameters = sum(p.numel() for p in backbone.parameters())  # before any method adds modules
        self.frozen_mode = "dropout"  # how layers below the first trainable one run in training: see _frozen_part
        self.frozen_cache: dict[tuple, torch.Tensor] = {}
        # recompute the trainable layers' activations in the backward pass (less memory); torch's checkpoint restores
        # the RNG state for the recomputation, so dropout draws, and the numbers, are the same
        self.gradient_checkpointing = False

    # -- set-up used by methods ---------------------------------------------------------------------------------
    def add_injection(self, injection: Injection) -> Injection:
        """Add a method's injection; one that gives key/value prefixes routes the attention through the
        prefix-aware path first (other methods keep the stock attention)."""
        if type(injection).kv_prefix is not Injection.kv_prefix:
            enable_prefixes(self.backbone, self.family)
        self.injections.append(injection)
        return injection

    @property
    def head_kind(self) -> str:
        """`linear` or `prompt` (methods ask this, e.g. zero_shot needs the prompt head)."""
        return "prompt" if isinstance(self.head, PromptHead) else "linear"

    @property
    def layers(self) -> nn.ModuleList:
        return self.family.layers(self.backbone)

    def gates(self) -> dict[int, float]:
        """α per layer of the gated injections (SPT's search-stage model: every candidate layer; a re-trained SPT
        model or LPT: its prompt layers at 1.0); {} for methods without gates."""
        out: dict[int, float] = {}
        for inj in self.injections:
            out.update(inj.gates() or {})
        return dict(sorted(out.items()))

    def freeze_backbone(self) -> None:
        for p in self.backbone.parameters():
            p.requires_grad_(False)

    def first_trainable_layer(self) -> int:
        """The lowest layer whose input needs a gradient: no backbone parameter or injection below it trains."""
        first = len(self.layers)
        for inj in self.injections:
            if any(p.requires_grad for p in inj.parameters()):
                first = min(first, inj.first_layer())
        for i, layer in enumerate(self.layers):
            if any(p.requires_grad for p in layer.parameters()):
                first = min(first, i)
                break
        in_layers = {id(p) for p in self.layers.parameters()}
        if any(p.requires_grad and id(p) not in in_layers for p in self.backbone.parameters()):
            first = 0  # embeddings (or anything outside the layers) train
        return first

    # -- lengths ------------------------------------------------------------------------------------------------
    def positions(self) -> int | None:
        """The most positions the backbone embeds (RoBERTa-style embeddings start after the padding index), None
        where its config sets no limit."""
        config = self.backbone.config
        limit = getattr(config, "max_position_embeddings", None)
        if not isinstance(limit, int) or getattr(config, "position_embedding_type", "absolute") != "absolute":
            return None
        padding_idx = getattr(self.family.embeddings(self.backbone), "padding_idx", None)
        return limit - (padding_idx + 1 if isinstance(padding_idx, int) else 0)

    def input_prompt_length(self) -> int:
        """Prompt positions the injections put in front of the tokens at the embeddings (they take positions)."""
        prompts = [inj.input_prompt(1) for inj in self.injections]
        return sum(p.shape[1] for p in prompts if p is not None)

    def check_length(self, tokens: int, what: str = "the input") -> None:
        """One line when `tokens` (+ the input prompts) would run past the backbone's position embeddings."""
        limit, prompts = self.positions(), self.input_prompt_length()
        if limit is not None and tokens + prompts > limit:
            with_prompts = f" + {prompts} prompt tokens" if prompts else ""
            raise InvalidValue(f"{what}: {tokens} tokens{with_prompts} = {tokens + prompts} positions, more than "
                                f"the backbone's {limit}; use a shorter max_length or fewer prompt tokens")

    # -- forward ------------------------------------------------------------------------------------------------
    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        """`logits` (batch, num_labels) and, with `labels`, `loss`: the cross-entropy of the float logits (the
        training loop's loss). A transformers `ModelOutput` (as peft's and transformers' classifiers return), so
        that `transformers.Trainer` reads `loss` and `logits` by name; `out.logits` is the tensor."""
        logits = self.logits(input_ids, attention_mask, token_type_ids)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels.to(logits.device))
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The (batch, num_labels) logits (the prompt head in training with loss `vocab`: one more column)."""
        if input_ids.dim() != 2 or 0 in input_ids.shape:
            raise ValueError(f"input_ids must be a non-empty (batch, length) batch, got shape {tuple(input_ids.shape)}")
        token_mask = attention_mask.bool()
        bsz = input_ids.shape[0]
        upto = self.first_trainable_layer() if self.training and torch.is_grad_enabled() else 0
        masks: dict = {}  # the layers' attention masks of this forward, by prompt length (see _layer_mask)
        if upto > 0:  # nothing below `upto` trains: no autograd there (no stored activations, no backward)
            hidden, m = self._frozen_part(input_ids, token_mask, token_type_ids, upto, masks)
        else:
            hidden, m = self._embed(input_ids, token_mask, token_type_ids, bsz)
        for i in range(upto, len(self.layers)):
            hidden, m = self._layer_step(i, hidden, m, token_mask, masks)
        hidden = self.family.final(self.backbone, hidden)
        if self.head_kind == "prompt":  # prompt positions are cut off: the read position is the template's
            return self.head(self.backbone, hidden[:, m:], token_mask, input_ids)
        pooled = pool(hidden[:, m:], token_mask, self.pooling)
        return self.head(self.dropout(pooled))

    def _layer_step(self, i, hidden, m, token_mask, masks: dict):
        hidden, m = self._enter_layer(i, hidden, m, token_mask)
        mask = self._layer_mask(token_mask, m, hidden.dtype, masks)
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(self._run_layer, i, self.layers[i], hidden, mask, token_mask.shape[0],
                              use_reentrant=False), m
        return self._run_layer(i, self.layers[i], hidden, mask, token_mask.shape[0]), m

    def _layer_mask(self, token_mask: torch.Tensor, m: int, dtype: torch.dtype, masks: dict) -> torch.Tensor | None:
        """The layers' attention mask for m prompt positions in front of `token_mask`, built once per forward, m and
        dtype (the stock model also builds it once, not per layer). `masks` belongs to one forward and token mask."""
        if (m, dtype) not in masks:
            key_mask = torch.cat([token_mask.new_ones(token_mask.shape[0], m), token_mask], 1) if m else token_mask
            masks[m, dtype] = self.family.layer_mask(key_mask, dtype)
        return masks[m, dtype]

    @torch.no_grad()
    def _frozen_part(self, input_ids, token_mask, token_type_ids, upto, masks: dict):
        """Embeddings and layers below `upto`. `frozen_mode`: "dropout" runs them as the stock model would in
        training; "eval" turns their dropout off; "cache" also memoises their per-sample output (deterministic once
        dropout is off), so few-shot training computes the frozen layers once per sample, not once per epoch."""
        if self.frozen_mode == "cache":
            return self._cached_frozen_part(input_ids, token_mask, token_type_ids, upto, masks)
        frozen = [self.family.embeddings(self.backbone), *list(self.layers)[:upto]]
        modes = [mod.training for mod in frozen]
        if self.frozen_mode == "eval":
            for mod in frozen:
                mod.eval()
        try:
            hidden, m = self._embed(input_ids, token_mask, token_type_ids, input_ids.shape[0])
            for i in range(upto):
                hidden, m = self._layer_step(i, hidden, m, token_mask, masks)
        finally:
            for mod, mode in zip(frozen, modes, strict=True):
                mod.train(mode)
        return hidden, m

    def _cached_frozen_part(self, input_ids, token_mask, token_type_ids, upto, masks: dict):
        lengths = token_mask.sum(1).tolist()
        types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
        keys = [
            (upto, tuple(input_ids[b, :n].tolist()), tuple(types[b, :n].tolist())) for b, n in enumerate(lengths)
        ]
        missing = [b for b, k in enumerate(keys) if k not in self.frozen_cache]
        if missing:
            self.frozen_mode = "eval"
            try:
                hidden, m = self._frozen_part(input_ids[missing], token_mask[missing],
                                              None if token_type_ids is None else token_type_ids[missing], upto, {})
            finally:
                self.frozen_mode = "cache"
            if m:  # prompts below the first trainable layer: not cacheable per sample, computed as they are
                return self._frozen_part_uncached(input_ids, token_mask, token_type_ids, upto, masks)
            for j, b in enumerate(missing):
                self.frozen_cache[keys[b]] = hidden[j, : lengths[b]].clone()
        first = self.frozen_cache[keys[0]]
        hidden = first.new_zeros(input_ids.shape[0], input_ids.shape[1], first.shape[-1])
        for b, k in enumerate(keys):
            hidden[b, : lengths[b]] = self.frozen_cache[k]
        return hidden, 0

    def _frozen_part_uncached(self, input_ids, token_mask, token_type_ids, upto, masks: dict):
        self.frozen_mode = "eval"
        try:
            return self._frozen_part(input_ids, token_mask, token_type_ids, upto, masks)
        finally:
            self.frozen_mode = "cache"

    def _embed(self, input_ids, token_mask, token_type_ids, bsz):
        prompts = [inj.input_prompt(bsz) for inj in self.injections]  # no walrus: torch.compile traces this
        prompts = [p for p in prompts if p is not None]
        offsets = [inj.input_offset(token_mask) for inj in self.injections]
        offsets = [o for o in offsets if o is not None]
        if not prompts and not offsets:
            return self.family.embed(self.backbone, input_ids, None, token_type_ids, token_mask), 0
        words = self.family.word_embeddings(self.backbone)(input_ids)
        for offset in offsets:
            words = words + offset.to(words.dtype)
        embeds = torch.cat([p.to(words.dtype) for p in prompts] + [words], 1)
        m = embeds.shape[1] - words.shape[1]
        if token_type_ids is not None:
            token_type_ids = torch.cat([token_type_ids.new_zeros(bsz, m), token_type_ids], 1)
        full_mask = torch.cat([token_mask.new_ones(bsz, m), token_mask], 1)
        return self.family.embed(self.backbone, None, embeds, token_type_ids, full_mask), m

    def _enter_layer(self, i, hidden, m, token_mask):
        for inj in self.injections:
            prompt = inj.layer_prompt(i, hidden[:, m:], token_mask, hidden[:, :m] if m else None)
            if prompt is not None:
                hidden = torch.cat([prompt.to(hidden.dtype), hidden[:, m:]], 1)
                m = prompt.shape[1]
        return hidden, m

    def _run_layer(self, i, layer, hidden, mask, bsz):
        prefixes = [inj.kv_prefix(i, bsz) for inj in self.injections]
        prefixes = [kv for kv in prefixes if kv is not None]
        if not prefixes:
            return self.family.run_layer(self.backbone, layer, hidden, mask)
        attn = self.family.self_attention(layer)
        attn._sptbench_prefix = tuple(torch.cat(parts, 2) for parts in zip(*prefixes, strict=True))
        try:
            return self.family.run_layer(self.backbone, layer, hidden, mask)
        finally:
            attn._sptbench_prefix = None

    # -- parameters and saving ----------------------------------------------------------------------------------
    def count_parameters(self) -> dict[str, int]:
        """Trainable without head, with head, stored (what save writes), stored bytes, and the backbone's size.
        The prompt head's decoder is the backbone's word embedding matrix (tied): counted with the backbone."""
        in_backbone = {id(p) for p in self.backbone.parameters()}
        head = sum(p.numel() for p in self.head.parameters() if p.requires_grad and id(p) not in in_backbone)
        trainable_all = sum(p.numel() for p in self.parameters() if p.requires_grad)
        stored = self.export_state()
        return {
            "trainable": trainable_all - head,
            "trainable_with_head": trainable_all,
            "stored": sum(t.numel() for t in stored.values()),
            "stored_bytes": sum(t.numel() * t.element_size() for t in stored.values()),
            "backbone": self.backbone_parameters,
        }

    def export_state(self) -> dict[str, torch.Tensor]:
        """What save writes: trained parameters plus the linear head (injections may export a compact form). The
        prompt head is the frozen pretrained LM head: rebuilt from the checkpoint, not saved."""
        out: dict[str, torch.Tensor] = {}
        skip: set[int] = set()
        for i, inj in enumerate(self.injections):
            state = inj.export_state()
            if state is not None:
                out.update({f"injections.{i}.{k}": v.detach().clone() for k, v in state.items()})
                skip.update(id(p) for p in inj.parameters())
        for name, p in self.named_parameters():
            linear_head = name.startswith("head.") and self.head_kind == "linear"
            if (p.requires_grad or linear_head) and id(p) not in skip:
                out[name] = p.detach().clone()
        return out

    def import_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load `export_state` output onto a model built the same way (a fresh backbone + the same method).

        Strict: the names, shapes and dtypes must be exactly those `export_state` gives for this model (nothing
        missing, nothing extra, no broadcasting); otherwise SptbenchError naming the first offending tensor."""
        check_state(self.export_state(), state)
        state = dict(state)
        for i, inj in enumerate(self.injections):
            prefix = f"injections.{i}."
            if inj.export_state() is not None:
                inj.import_state({k[len(prefix) :]: state.pop(k) for k in list(state) if k.startswith(prefix)})
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, tensor in state.items():
                params[name].copy_(tensor)


def check_state(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
    """Saved parameters against what the rebuilt model holds: same names, shapes and dtypes, or one-line error."""
    missing = sorted(set(expected) - set(state))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SptbenchError(f"tensor '{missing[0]}'{more} is missing: the rebuilt model needs it")
    extra = sorted(set(state) - set(expected))
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise SptbenchError(f"tensor '{extra[0]}'{more} is not a parameter of the rebuilt model")
    for name in sorted(expected):
        want, got = expected[name], state[name]
        if tuple(got.shape) != tuple(want.shape):
            raise SptbenchError(
                f"tensor '{name}' has shape {tuple(got.shape)}, the rebuilt model needs {tuple(want.shape)}"
            )
        if got.dtype != want.dtype:
            raise SptbenchError(f"tensor '{name}' is {got.dtype}, the rebuilt model needs {want.dtype}")
