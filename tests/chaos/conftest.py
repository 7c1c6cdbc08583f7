"""tests/chaos: one test per hostile-world attack, each against a real daemon (`plugind serve` as a
subprocess) with a real hostile plugin, asserting the daemon's answer, that /health kept answering,
and that nothing leaked (processes, cgroups, mounts, files).

The daemon harness is the integration suite's (tests/integration/conftest.py and kit.py): its
fixtures `ws` and `daemon_factory`, and helpers such as `wait_for` and `HealthProbe`, are imported
here under `chaos_harness`. Every load in these tests is bounded in count and in time.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_INTEGRATION = Path(__file__).resolve().parent.parent / "integration"
if str(_INTEGRATION) not in sys.path:
    sys.path.insert(0, str(_INTEGRATION))  # kit.py, scenarios.py

_spec = importlib.util.spec_from_file_location("chaos_harness", _INTEGRATION / "conftest.py")
assert _spec is not None and _spec.loader is not None
chaos_harness = importlib.util.module_from_spec(_spec)
sys.modules["chaos_harness"] = chaos_harness
_spec.loader.exec_module(chaos_harness)

ws = chaos_harness.ws
daemon_factory = chaos_harness.daemon_factory
