from __future__ import annotations

from flows_fixtures import prefect_harness, tiny_world  # noqa: F401
