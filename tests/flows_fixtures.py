"""Fixtures shared by the in-process flow tests (tests/flows, tests/faults): a Prefect harness and a tiny world."""

from __future__ import annotations

import os
import tempfile

import pytest

# Prefect reads PREFECT_HOME at import: keep every test's Prefect state out of the user's home.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="dct-prefect-home-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    from tiny import save_tiny_world

    return save_tiny_world(tmp_path_factory.mktemp("tiny-world"))
