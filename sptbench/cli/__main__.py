"""`python -m sptbench.cli`: the `sptbench` command."""

from sptbench.cli.main import main

raise SystemExit(main())
