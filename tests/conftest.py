from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny.py helpers


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # Results differ slightly with the thread count; pin it so comparisons inside one test are exact.
    torch.set_num_threads(2)


@pytest.fixture
def tiny_pipe(tmp_path):
    from tiny import tiny_pipeline

    return tiny_pipeline(tmp_path)


@pytest.fixture
def tiny_clf():
    from tiny import tiny_classifier

    return tiny_classifier()
