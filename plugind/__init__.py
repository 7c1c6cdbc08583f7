"""plugind: a Linux plugin-host daemon. Imports nothing heavy; see the subpackages."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
