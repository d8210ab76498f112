from __future__ import annotations

import pytest
import torch

from dct.datasets import get_dataset
from dct.toy.evaluate import fid, parse_classes, run_config_for


def test_fid_is_zero_for_identical_sets_and_grows_with_a_shift():
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(0))
    assert fid(x, x) == pytest.approx(0.0, abs=1e-6)
    assert fid(x, x + 1.0) == pytest.approx(8.0, rel=1e-3)


def test_runs_use_distinct_tokens_and_optimisation_seeds_disjoint_from_evaluation():
    config = get_dataset("toy").run_config()
    runs = [run_config_for(config, r) for r in range(3)]
    assert len({rc.token_string(0) for rc in runs}) == 3
    assert len({rc.training.seeds for rc in runs}) == 3
    for rc in runs:
        assert not set(rc.training.seeds) & set(rc.evaluation.seeds)


def test_parse_classes():
    assert parse_classes("0-2,5") == [0, 1, 2, 5]
    with pytest.raises(ValueError, match="outside"):
        parse_classes("0-10")
