"""Generated blocks of a README: the text between `<!-- NAME:start -->` and `<!-- NAME:end -->` markers, replaced
by `sptbench table|compare --readme R --block NAME` and checked to exist before any work is done."""

from __future__ import annotations

from pathlib import Path

from sptbench.core.errors import SptbenchError
from sptbench.records.io import write_text_atomic


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- sptbench:table {name} -->", f"<!-- /sptbench:table {name} -->"


def _readme_block(path: Path, name: str) -> tuple[str, int, int]:
    """The README's text and where its `sptbench:table NAME` block's inside starts and ends; one line if it cannot
    be read as UTF-8 text or its markers are not there exactly once, in order."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SptbenchError(f"{path}: cannot read: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise SptbenchError(f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start})") \
            from None
    start, end = _markers(name)
    if text.count(start) != 1 or text.count(end) != 1:
        raise SptbenchError(f"{path}: needs exactly one '{start}' and one '{end}' marker")
    i, j = text.index(start), text.index(end)
    if j < i:
        raise SptbenchError(f"{path}: '{end}' comes before '{start}'")
    return text, i + len(start), j


def check_readme_block(readme_path: str | Path, name: str) -> None:
    """Before any work: the README has the block `update_readme_block` will replace."""
    _readme_block(Path(readme_path), name)


def update_readme_block(readme_path: str | Path, name: str, content: str) -> None:
    """Replace the text between the `sptbench:table NAME` markers of a README, atomically; markers must exist once."""
    path = Path(readme_path)
    text, i, j = _readme_block(path, name)
    write_text_atomic(path, f"{text[:i]}\n{content.rstrip()}\n{text[j:]}")
