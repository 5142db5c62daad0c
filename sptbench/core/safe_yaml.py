"""Reading YAML someone else handed over (run configs, sweep files, task specs, saved records, results tables).

Data only (the safe loader: no tags that build objects), and at a bounded cost: the file is read up to a size limit,
only from a regular file (a FIFO or a device would block or never end), aliases (`*name`, which can expand a few KB
into billions of nodes) and very deep nesting are refused, a key given twice in one mapping is refused (YAML's "last
wins" would silently drop the first), non-UTF-8 bytes are named by line.
Every problem is one `SptbenchError` naming the file (and line where there is one).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from sptbench.core.errors import SptbenchError

# The libyaml loader is the same safe loader, only faster (appends re-read the whole table under the lock).
_SafeLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MAX_FILE_BYTES = 1 << 20  # a run config, sweep file, task spec or saved record: 1 MiB is ~100x the largest real one
MAX_TABLE_BYTES = 64 << 20  # a results table: ~80x the largest here (270 runs, 0.8 MB); split larger ones
MAX_DEPTH = 64  # nesting levels; records go 4 deep


def read_text(path: Any, what: str, max_bytes: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of `path` (a Path or importlib Traversable), refusing files over `max_bytes` without reading
    more than that; anything but a regular file is refused before it is opened (a FIFO would block opening it).
    `/dev/stdin`, a character device, is refused too."""
    if isinstance(path, Path) and path.exists() and not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise SptbenchError(f"{path}: cannot read {what}: {kind}")
    try:
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise SptbenchError(f"{path}: no such file") from None
    except OSError as err:
        raise SptbenchError(f"{path}: cannot read {what}: {err.strerror or err}") from None
    if len(data) > max_bytes:
        raise SptbenchError(f"{path}: {what} larger than the limit of {max_bytes:,} bytes")
    return decode_utf8(data, str(path))


def decode_utf8(data: bytes, where: str, encoding: str = "utf-8") -> str:
    """`data` as text; invalid bytes are an error naming the line they are on."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise SptbenchError(f"{where}:{line}: not UTF-8 text (byte {data[err.start]:#04x})") from None


def yaml_error(where: str, err: yaml.YAMLError) -> SptbenchError:
    """A one-line `file:line: malformed YAML: problem` error for a parse failure."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    line = f":{mark.line + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or (str(err).splitlines() or [type(err).__name__])[0]
    context = getattr(err, "context", None)
    detail = f"{problem} ({context})" if context else problem
    return SptbenchError(f"{where}{line}: malformed YAML: {' '.join(str(detail).split())}")


def _check_node(root: yaml.Node, where: str, max_depth: int) -> None:
    """Refuse aliases (a node reached twice), nesting deeper than `max_depth` and a key given twice in one mapping;
    linear in the nodes, no recursion."""
    seen: set[int] = set()
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if id(node) in seen:
            raise SptbenchError(
                f"{where}:{node.start_mark.line + 1}: YAML aliases (&anchor, *alias) are not allowed; write values out"
            )
        seen.add(id(node))
        if depth > max_depth:
            raise SptbenchError(f"{where}:{node.start_mark.line + 1}: nested deeper than {max_depth} levels")
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            _check_keys(node, where)
            stack.extend((item, depth + 1) for pair in node.value for item in pair)


def _check_keys(node: yaml.MappingNode, where: str) -> None:
    """A mapping's scalar keys are distinct (as written: `1` and `"1"` are different keys, as YAML reads them)."""
    first: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode):
            continue
        line = key.start_mark.line + 1
        if (key.tag, key.value) in first:
            seen = first[(key.tag, key.value)]
            raise SptbenchError(f"{where}:{line}: duplicate key '{key.value}' (first given on line {seen})")
        first[(key.tag, key.value)] = line


def iter_documents(text: str, where: str, max_depth: int = MAX_DEPTH) -> Iterator[tuple[int, Any]]:
    """(first line, data) of every non-empty document of a YAML stream, checked before it is constructed."""
    loader = _SafeLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            _check_node(node, where, max_depth)
            data = loader.construct_document(node)
            if data is not None:
                yield node.start_mark.line + 1, data
    except yaml.YAMLError as err:
        raise yaml_error(where, err) from None
    except RecursionError:
        raise SptbenchError(f"{where}: nested too deeply") from None
    finally:
        loader.dispose()


def load_one(text: str, where: str, max_depth: int = MAX_DEPTH) -> Any:
    """The data of a single-document YAML text (None when empty); a second document is an error."""
    docs = list(iter_documents(text, where, max_depth))
    if len(docs) > 1:
        raise SptbenchError(f"{where}:{docs[1][0]}: expected one YAML document, found a second one")
    return docs[0][1] if docs else None


def load_file(path: str | Path, what: str, max_bytes: int = MAX_FILE_BYTES) -> Any:
    """`read_text` + `load_one`: a user's YAML file, bounded and data-only."""
    path = Path(path) if isinstance(path, str) else path
    return load_one(read_text(path, what, max_bytes), str(path))
