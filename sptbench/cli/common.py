"""Arguments shared by several commands."""

from __future__ import annotations

import argparse


def head_arguments(p: argparse.ArgumentParser) -> None:
    """--head, --prompt-loss, --template (docs/heads.md)."""
    p.add_argument("--head", choices=["linear", "prompt"],
                   help="linear: a fresh linear layer on the pooled tokens (default); prompt: the pretrained LM head, "
                   "frozen, read at the task template's mask over its label words (needs an LM checkpoint)")
    p.add_argument("--prompt-loss", dest="prompt_loss", choices=["label_words", "vocab"],
                   help="prompt head training loss: cross-entropy over the label words (default, LM-BFF) or over the "
                   "whole vocabulary with the label word as target (LPT)")
    p.add_argument("--template", help="prompt head: the task's template by name (default: its first)")
