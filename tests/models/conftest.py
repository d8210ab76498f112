"""Fixtures of tests/models; the model builders live in hub_models.py (importable by name)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # hub_models


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty HF cache with the hub 'down' (HF_HUB_OFFLINE); huggingface_hub reads both at call time."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache
