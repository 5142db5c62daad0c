"""The one exception users see: a one-line, actionable message (the CLI prints it without a traceback)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SptbenchError(Exception):
    """A user-facing error: bad input, a missing source, a malformed file. Bugs raise anything else.

    Always one line: control characters that came from the input (a key with a newline) are shown escaped."""

    def __init__(self, message: object = "") -> None:
        super().__init__(one_line(str(message)))


class InvalidValue(SptbenchError, ValueError):
    """A user error that is also a `ValueError` (what Python API callers catch): a value out of range or of the
    wrong kind, named in the message."""


def one_line(text: str) -> str:
    """`text` with line breaks and other control characters escaped (`\\n`), so that it prints as one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def describe(e: BaseException) -> str:
    """An exception as `Type: the first line of its message` (a traceback's worth of text would not be one line)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def unknown_choice(kind: str, name: str, choices: Iterable[str]) -> SptbenchError:
    """An error for an unknown name that lists the valid choices and suggests the closest one."""
    choices = sorted(choices)
    if not choices:
        return SptbenchError(f"unknown {kind} '{name}': there are none to choose from")
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return SptbenchError(f"unknown {kind} '{name}'.{hint} Choices: {', '.join(choices)}")
