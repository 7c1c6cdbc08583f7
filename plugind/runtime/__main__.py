"""Run one plugin in a fresh interpreter: `python -m plugind.runtime --fd N --tree DIR ...`.

The fork-server normally calls `run_child` directly; this entry point serves debugging and tests.
"""

from __future__ import annotations

import argparse

from plugind.runtime.child import run_child
from plugind.wire.frames import DEFAULT_MAX_FRAME


def main() -> None:
    """Parse arguments and serve the plugin; never returns."""
    parser = argparse.ArgumentParser(prog="python -m plugind.runtime")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--tree", required=True)
    parser.add_argument("--entrypoint", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--max-frame", type=int, default=DEFAULT_MAX_FRAME)
    args = parser.parse_args()
    run_child(args.fd, args.tree, args.entrypoint, name=args.name, max_frame=args.max_frame)


if __name__ == "__main__":
    main()
