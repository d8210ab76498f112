"""Fault-suite fixtures: the Prefect harness and tiny world shared with the flow tests; no store from the
environment. (One torch thread comes from tests/conftest.py.)"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_store_from_env(monkeypatch):
    monkeypatch.delenv("DCT_STORE", raising=False)
