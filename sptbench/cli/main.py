"""The `sptbench` command line. User errors print one line (no traceback) and exit 2.

Each command is one module of this package with a `register(subparsers)` function (and an `ORDER` for its place in
`--help`); this module only discovers them and dispatches."""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys

import sptbench.cli
from sptbench.core.argtypes import Parser
from sptbench.core.errors import SptbenchError
from sptbench.data.specs import apply_tasks_dirs


def command_modules() -> list:
    """Every module of `sptbench.cli` that registers a command, in `--help` order. A module that fails to import
    is a bug and raises."""
    names = [info.name for info in pkgutil.iter_modules(sptbench.cli.__path__)]
    modules = [importlib.import_module(f"sptbench.cli.{name}") for name in names
               if not name.startswith("_") and name not in ("main", "common")]
    commands = [m for m in modules if hasattr(m, "register")]
    return sorted(commands, key=lambda m: (getattr(m, "ORDER", 100), m.__name__))


def build_parser() -> Parser:
    parser = Parser(prog="sptbench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in command_modules():
        module.register(sub)
    return parser


# Control characters (C0 but tab and newline, DEL, C1) as their escapes: text from files (a task's label, a
# record's method name) must not move the cursor, recolour or retitle the user's terminal when printed.
_CONTROLS = {c: repr(chr(c))[1:-1] for c in (*range(32), *range(127, 160)) if chr(c) not in "\t\n"}


class EscapingWriter:
    """A text stream that writes control characters escaped; everything else is the wrapped stream's."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(text.translate(_CONTROLS))
        return len(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error, already printed as one line (2)
        return e.code if isinstance(e.code, int) else 2
    stdout, sys.stdout = sys.stdout, EscapingWriter(sys.stdout)
    try:
        return _dispatch(args)
    finally:
        sys.stdout = stdout


def _dispatch(args) -> int:
    try:
        apply_tasks_dirs(getattr(args, "tasks_dir", None))
        return args.func(args)
    except SptbenchError as e:
        print(f"sptbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sptbench: interrupted (no record written)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `sptbench list tasks | head`: the reader left; no traceback, and none at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0



if __name__ == "__main__":
    sys.exit(main())
