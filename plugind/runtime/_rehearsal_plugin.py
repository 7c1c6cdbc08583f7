"""The plugin a spare child imports while it waits (plugind.runtime.child.rehearse): it is imported
the way a plugin's entrypoint module is, from a directory put first on sys.path, and then forgotten.
It must stay a plain SDK plugin with no side effect at import."""

import asyncio  # noqa: F401 - as plugins do: modules the runtime has imported already
import logging  # noqa: F401
import os  # noqa: F401
import signal  # noqa: F401
import socket  # noqa: F401
import sys  # noqa: F401
import time  # noqa: F401

from plugind.sdk import Plugin

plugin = Plugin()


@plugin.hook("rehearsal", priority=0)
def _echo(data, ctx):  # type: ignore[no-untyped-def]
    return data
