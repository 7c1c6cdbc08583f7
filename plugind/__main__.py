"""`python -m plugind` runs the CLI."""

from plugind.cli import main

raise SystemExit(main())
