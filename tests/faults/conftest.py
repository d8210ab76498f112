from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # proxy.py

# The Prefect harness and the tiny world are shared with the flow tests.
from flows_fixtures import prefect_harness, tiny_world  # noqa: F401
