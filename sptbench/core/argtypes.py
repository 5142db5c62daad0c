"""The command line's parser conventions, shared by every subcommand: no abbreviated options, defaults and choices
in `--help`, one-line errors (exit 2), and argument types that refuse nonsense (empty paths, negative counts)."""

from __future__ import annotations

import argparse
import math
import sys
from typing import NoReturn

from sptbench.core.errors import SptbenchError, one_line


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows `(default: X)` for options that have a real default (not None/False, not already said in the help);
    descriptions and epilogs keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser with the conventions above (its subparsers inherit them)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)  # `--shot 3` must not silently mean `--shots 3`
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201 (argparse's signature)
        """As argparse, but an option given twice is an error (`--seed 13 --seed 21` would silently mean 21), but for
        the repeatable ones (`append`, `count`). Each subparser checks its own options the same way."""
        argv = sys.argv[1:] if args is None else list(args)
        self._refuse_repeats(argv)
        return super().parse_known_args(argv, namespace)

    def _refuse_repeats(self, argv: list[str]) -> None:
        seen: dict[int, str] = {}
        for token in argv:
            if token == "--":
                break
            action = self._option_string_actions.get(token.split("=", 1)[0]) if token.startswith("-") else None
            if action is None or isinstance(action, (argparse._AppendAction, argparse._CountAction)):
                continue
            if id(action) in seen:
                first = seen[id(action)]
                again = token.split("=", 1)[0]
                same = f"{again} was given twice" if first == again else f"{first} and {again} were both given"
                self.error(f"{same}; give it once")
            seen[id(action)] = token.split("=", 1)[0]

    def error(self, message: str) -> NoReturn:
        """One line (no usage block): `sptbench run: error: ... (see --help)`, exit 2."""
        print(f"{self.prog}: error: {one_line(' '.join(message.split()))} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def nonempty(value: str) -> str:
    """A path or name that is not empty (`--results-dir ""` must not mean the current folder)."""
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def positive_int(value: str) -> int:
    """An integer >= 1."""
    number = _int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def nonneg_int(value: str) -> int:
    """An integer >= 0."""
    number = _int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return number


def positive_float(value: str) -> float:
    """A finite number > 0."""
    number = nonneg_float(value)
    if number == 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return number


def nonneg_float(value: str) -> float:
    """A finite number >= 0."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{value}'") from None
    if not math.isfinite(number) or number < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {value}")
    return number


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got '{value}'") from None


def parse_sets(pairs: list[str]) -> dict[str, str]:
    """`--set key=value` pairs as a mapping (values stay strings: the method config types them)."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SptbenchError(f"--set expects key=value, got '{pair}'")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out
