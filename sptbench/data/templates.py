"""Prompt templates and label words (a task spec's `prompt:` section): parse, check against a tokenizer, encode rows.

A template is text with placeholders: `<s1>`, `<s2>` (the task's text columns, in order) and `<mask>` (where the
label word goes), e.g. `<s1> It was <mask> .` (docs/heads.md). Whitespace in the template is kept: a piece that
follows whitespace is tokenized with a leading space (BPE tokenizers such as RoBERTa's and GPT-2's tell ` great` from
`great`); the label words take the leading-space form unless the template glues `<mask>` to the text before it.
Torch-free: the task loader, the sweep planner and the records use it without importing torch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sptbench.core.errors import SptbenchError, unknown_choice
from sptbench.records.keys import LINEAR_HEAD, head_of

HEADS = ("linear", "prompt")
PROMPT_LOSSES = ("label_words", "vocab")  # LM-BFF: cross-entropy over the label words; LPT: over the vocabulary
DEFAULT_PROMPT_LOSS = "label_words"
DEFAULT_TEMPLATE = "default"  # the name of a spec's single `template:`
_PLACEHOLDER = re.compile(r"<s(\d+)>|<mask>")


@dataclass(frozen=True)
class Part:
    """One piece of a template: literal text, a text column (its index) or the mask."""

    kind: str  # literal | text | mask
    value: str | int | None
    space: bool  # whitespace precedes it in the template


@dataclass(frozen=True)
class Template:
    name: str
    text: str
    parts: tuple[Part, ...]

    @property
    def mask_at(self) -> int:
        return next(i for i, p in enumerate(self.parts) if p.kind == "mask")

    @property
    def word_space(self) -> bool:
        """Label words take their leading-space form: the mask starts the template or follows whitespace."""
        return self.mask_at == 0 or self.parts[self.mask_at].space


def parse_template(text: Any, num_columns: int, where: str, name: str = DEFAULT_TEMPLATE) -> Template:
    """Check a template (each text column exactly once, one `<mask>`) and split it into parts."""
    if not isinstance(text, str) or not text.strip():
        raise SptbenchError(f"{where}: template '{name}' must be a non-empty string")
    parts: list[Part] = []
    space = False
    pos = 0

    def literal(chunk: str) -> None:
        nonlocal space
        if not chunk:
            return
        if chunk.strip():
            parts.append(Part("literal", chunk.strip(), space or chunk[0].isspace()))
        space = chunk[-1].isspace()

    for match in _PLACEHOLDER.finditer(text):
        literal(text[pos : match.start()])
        before = space or (match.start() > 0 and text[match.start() - 1].isspace())
        if match.group(1) is None:
            parts.append(Part("mask", None, before))
        else:
            column = int(match.group(1))
            if not 1 <= column <= num_columns:
                raise SptbenchError(
                    f"{where}: template '{name}' uses <s{column}>, but the task has {num_columns} text column(s)"
                )
            parts.append(Part("text", column - 1, before))
        space = False
        pos = match.end()
    literal(text[pos:])
    masks = sum(p.kind == "mask" for p in parts)
    columns = sorted(p.value for p in parts if p.kind == "text")
    if masks != 1 or columns != list(range(num_columns)):
        wanted = " ".join(f"<s{i + 1}>" for i in range(num_columns))
        raise SptbenchError(f"{where}: template '{name}' must hold {wanted} once each and <mask> once: {text!r}")
    return Template(name, text, tuple(parts))


@dataclass(frozen=True)
class PromptSetup:
    """What the prompt head needs from a task: a template, one label word per label (label order), the loss."""

    task: str
    template: Template
    columns: tuple[str, ...]  # the task's text columns: <s1>, <s2>, ...
    labels: tuple[str, ...]
    label_words: tuple[str, ...]
    loss: str = DEFAULT_PROMPT_LOSS

    def record(self) -> dict:
        """The record's `head` section."""
        return {
            "kind": "prompt",
            "loss": self.loss,
            "template_name": self.template.name,
            "template": self.template.text,
            "label_words": list(self.label_words),
        }


CAUSAL_TEMPLATE = "causal"  # the template a causal LM gets by default, where the task has one


def prompt_setup(
    spec, head: str = "linear", loss: str | None = None, template: str | None = None, *, causal: bool = False
) -> PromptSetup | None:
    """The prompt setup of a run on task `spec` (None for the linear head); bad choices are one-line errors.
    `causal`: the backbone is a causal LM, which reads the label after the last token: without a `template`, the
    task's `causal` template if it has one (one that ends at `<mask>`), else its first."""
    if head not in HEADS:
        raise unknown_choice("head", head, HEADS)
    if head == "linear":
        if loss is not None or template is not None:
            raise SptbenchError("prompt_loss and template apply to the prompt head only (--head prompt)")
        return None
    loss = loss or DEFAULT_PROMPT_LOSS
    if loss not in PROMPT_LOSSES:
        raise unknown_choice("prompt loss", loss, PROMPT_LOSSES)
    if spec.prompt is None:
        raise SptbenchError(f"task '{spec.name}' has no prompt section (template and label words) for --head prompt")
    templates = spec.prompt["templates"]
    name = template or (CAUSAL_TEMPLATE if causal and CAUSAL_TEMPLATE in templates else next(iter(templates)))
    if name not in templates:
        raise unknown_choice(f"template of task '{spec.name}'", name, templates)
    parsed = parse_template(templates[name], len(spec.text_columns), f"task {spec.name}", name)
    return PromptSetup(
        spec.name, parsed, tuple(spec.text_columns), tuple(spec.labels), tuple(spec.prompt["label_words"]), loss
    )


def setup_from_record(rec: dict, spec) -> PromptSetup | None:
    """The prompt setup a record ran with (its own template text and label words), None for the linear head."""
    head = head_of(rec)
    if head.get("kind", "linear") == "linear":
        return None
    where = f"record {rec.get('run_id', '?')}"
    template = parse_template(head["template"], len(spec.text_columns), where, head.get("template_name", "?"))
    return PromptSetup(
        spec.name, template, tuple(spec.text_columns), tuple(spec.labels), tuple(head["label_words"]), head["loss"]
    )


def head_section(setup: PromptSetup | None) -> dict:
    """The record's `head` section: `{kind: linear}` or the prompt setup."""
    return dict(LINEAR_HEAD) if setup is None else setup.record()


# ---------------------------------------------------------------------------------------------------- tokenizer


def _ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids without special tokens; text that spells a special token (`[MASK]`, `<mask>`) stays text."""
    return tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"] if texts else []


def label_word_ids(tokenizer, setup: PromptSetup) -> list[int]:
    """The token id of each label word in the form the template puts it; a word that is not one token of this
    tokenizer's vocabulary (or two labels sharing one) is a one-line error naming the word and its pieces."""
    forms = [(" " + w) if setup.template.word_space else w for w in setup.label_words]
    out = []
    for label, form, ids in zip(setup.labels, forms, _ids(tokenizer, forms), strict=True):
        if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
            pieces = tokenizer.convert_ids_to_tokens(ids)
            raise SptbenchError(
                f"label word {form!r} (task {setup.task}, label '{label}') is not one token of this tokenizer's "
                f"vocabulary: it is {pieces}; the prompt head needs one token per label word"
            )
        out.append(ids[0])
    if len(set(out)) != len(out):
        raise SptbenchError(f"label words {list(setup.label_words)} of task {setup.task} share a token")
    return out


def _special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after one sequence ([CLS] ... [SEP], <s> ... </s>)."""
    plain = _ids(tokenizer, ["x"])[0]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[:i], full[i + len(plain) :]
    return [], []


def encode_prompt_rows(
    rows: Sequence[dict], tokenizer, setup: PromptSetup, max_length: int, *, causal: bool
) -> list[dict]:
    """Rows as templated token ids (one sequence, no token type ids), truncated to `max_length`.

    Only the texts are truncated (the longest first, from its end); the template's words and the mask always stay.
    Encoders get the tokenizer's mask token at `<mask>`; causal LMs get the template up to `<mask>` (what follows
    cannot change the next-token prediction read at the last position) and no trailing special token.
    """
    parts = setup.template.parts
    prefix, suffix = _special_tokens(tokenizer)
    if causal:
        after = parts[setup.template.mask_at + 1 :]
        parts = parts[: setup.template.mask_at]
        if any(p.kind == "text" for p in after) or not (prefix or parts):
            raise SptbenchError(
                f"template '{setup.template.name}' of task {setup.task} ({setup.template.text!r}) puts text after "
                "<mask>: a causal LM reads the label word after the last token, so the texts must come before it"
            )
        suffix = []
    elif tokenizer.mask_token_id is None:
        raise SptbenchError("this tokenizer has no mask token: the prompt head of an encoder needs one")
    literal = {i: ids for i, ids in zip(
        [i for i, p in enumerate(parts) if p.kind == "literal"],
        _ids(tokenizer, [(" " if p.space else "") + p.value for p in parts if p.kind == "literal"]),
        strict=True,
    )}
    fixed = len(prefix) + len(suffix) + sum(map(len, literal.values())) + sum(p.kind == "mask" for p in parts)
    budget = max_length - fixed
    if budget < 1:
        raise SptbenchError(
            f"template '{setup.template.name}' of task {setup.task} takes {fixed} tokens, leaving none of "
            f"max_length {max_length} for the text"
        )
    text_parts = [(i, p) for i, p in enumerate(parts) if p.kind == "text"]
    texts = {
        i: _ids(tokenizer, [(" " if p.space else "") + row[setup.columns[p.value]] for row in rows])
        for i, p in text_parts
    }
    slot = {i: k for k, (i, _) in enumerate(text_parts)}
    out = []
    for r, row in enumerate(rows):
        keep = _truncated_lengths([len(texts[i][r]) for i, _ in text_parts], budget)
        ids = list(prefix)
        for i, p in enumerate(parts):
            if p.kind == "literal":
                ids += literal[i]
            elif p.kind == "mask":
                ids.append(tokenizer.mask_token_id)
            else:
                ids += texts[i][r][: keep[slot[i]]]
        out.append({"input_ids": ids + list(suffix), "label": int(row["label"])})
    return out


def _truncated_lengths(lengths: list[int], budget: int) -> list[int]:
    """Lengths after cutting the longest text by one token at a time until they fit `budget` (longest first)."""
    lengths = list(lengths)
    while sum(lengths) > budget:
        longest = max(range(len(lengths)), key=lambda i: (lengths[i], -i))
        lengths[longest] -= 1
    return lengths
