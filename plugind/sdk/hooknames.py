"""The well-known hook names, and who fires each.

Fired by the host itself:
- `ON_STARTUP` once start-up loaded the wanted plugins, `{"host": "plugind"}`;
- `ON_SHUTDOWN` before the plugins are stopped, `{"host": "plugind"}`;
- `ON_ERROR` after a hook handler failed, timed out or crashed, or a plugin crashed:
  `{"hook", "plugin", "outcome", "error"}` (`hook` is None for a crash outside a call).

Fired by integrators (the host never fires them on its own): `ON_REQUEST`, `ON_RESPONSE`.
"""

from __future__ import annotations

ON_REQUEST = "on_request"
ON_RESPONSE = "on_response"
ON_ERROR = "on_error"
ON_STARTUP = "on_startup"
ON_SHUTDOWN = "on_shutdown"

HOST_FIRED: frozenset[str] = frozenset({ON_STARTUP, ON_SHUTDOWN, ON_ERROR})
INTEGRATOR_FIRED: frozenset[str] = frozenset({ON_REQUEST, ON_RESPONSE})

__all__ = [
    "HOST_FIRED",
    "INTEGRATOR_FIRED",
    "ON_ERROR",
    "ON_REQUEST",
    "ON_RESPONSE",
    "ON_SHUTDOWN",
    "ON_STARTUP",
]
