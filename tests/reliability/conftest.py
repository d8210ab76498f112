"""Fault-suite fixtures: the tiny world (a dataset file), its models loaded once, a Prefect test harness."""

from __future__ import annotations

import os
import tempfile

import pytest

# Prefect reads PREFECT_HOME at import: keep every test's Prefect state out of the user's home.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="dct-prefect-home-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Overrides tests/conftest.py's 2 threads: on a shared, oversubscribed CPU one thread is ~30x faster
    for the tiny models (measured: one tiny class 0.6 s vs 37 s), and results stay deterministic."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """The tiny world's dataset file (tiny pipeline + tiny timm guide, 4 classes), written once."""
    import torch
    from tiny import save_tiny_world

    torch.set_num_threads(1)
    return save_tiny_world(tmp_path_factory.mktemp("tiny-world"))


@pytest.fixture(autouse=True)
def _no_store_from_env(monkeypatch):
    monkeypatch.delenv("DCT_STORE", raising=False)
