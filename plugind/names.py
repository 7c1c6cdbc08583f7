"""Names shared by the daemon and its fork-servers, in a module that imports nothing heavy.

The fork-server pre-imports the sandbox plan (which checks plugin names); taking the pattern from
plugind.config would put pydantic and its settings machinery into the fork-server's heap, and every
page of that heap is copied into the page tables of every plugin it forks.
"""

from __future__ import annotations

import re

PLUGIN_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

__all__ = ["PLUGIN_NAME_RE"]
