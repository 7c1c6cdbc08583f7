"""`plugind serve [--config FILE]`: run the daemon in the foreground until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    """Add `serve`."""
    p = subparsers.add_parser("serve", help="run the plugin host daemon (foreground)")
    p.add_argument(
        "--config", metavar="FILE", help="configuration file (default config/plugins.toml or $PLUGIND_CONFIG)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the configuration and serve. Raises ConfigError, PluginError."""
    from plugind.config import load_config
    from plugind.daemon import serve

    return serve(load_config(args.config))
