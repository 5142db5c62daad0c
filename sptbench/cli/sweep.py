"""`sptbench sweep` (the command lives with the sweep package until its split lands)."""

from sptbench.sweep.plan import register  # noqa: F401

ORDER = 80  # place in `sptbench --help`
