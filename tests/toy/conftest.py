from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def toy_world():
    """The shipped toy pipeline, guide and evaluator, loaded once per module."""
    from dct.models.datasets import get_dataset
    from dct.toy.evaluate import load_world

    spec = get_dataset("toy")
    pipe, guide, evaluator = load_world(spec)
    return spec, pipe, guide, evaluator
