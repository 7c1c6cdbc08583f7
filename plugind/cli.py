"""The `plugind` command line: argument parsing and dispatch; each command lives in plugind.commands.

Every error is one clear line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from plugind import __version__
from plugind.errors import PluginError

# Each module defines `register(subparsers)`; registration imports nothing heavy, the command
# functions import what they need when they run.
COMMAND_MODULES = (
    "plugind.commands.keys",
    "plugind.commands.bundle",
    "plugind.commands.trust",
    "plugind.commands.scaffold",
    "plugind.commands.serve",
    "plugind.commands.ctl",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (used by main and by the tests)."""
    parser = argparse.ArgumentParser(prog="plugind", description="Plugin host daemon and tools.")
    parser.add_argument("--version", action="version", version=f"plugind {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PluginError as exc:
        print(f"plugind: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"plugind: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
