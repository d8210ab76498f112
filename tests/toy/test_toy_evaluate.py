from __future__ import annotations

import pytest
import torch

from dct.models.datasets import get_dataset
from dct.toy import models
from dct.toy.evaluate import fid, load_world, parse_classes, run_config_for, world_spec


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


def test_world_spec_points_every_model_at_a_retrained_world(tmp_path):
    # The shipped weights directory has the layout `dct.toy.train --out` writes.
    spec = world_spec(models.WEIGHTS_DIR)
    assert spec.diffusion.model_id == str(models.PIPELINE_DIR)
    assert spec.classifier.model_id == str(models.WEIGHTS_DIR / "guide.safetensors")
    assert spec.evaluator.model_id == str(models.WEIGHTS_DIR / "evaluator.safetensors")
    _pipe, guide, evaluator = load_world(spec)
    assert guide.num_classes == evaluator.num_classes == 10
    assert world_spec(None) == get_dataset("toy")


def test_world_spec_rejects_a_directory_that_is_not_a_toy_world(tmp_path):
    (tmp_path / "pipeline").mkdir()
    with pytest.raises(FileNotFoundError, match=r"guide\.safetensors.*dct\.toy\.train --out"):
        world_spec(tmp_path)


def test_runs_0_gives_the_baseline_and_the_ceiling_without_optimising(tmp_path):
    """``--runs 0``: the baseline and descriptive-ceiling columns of a world, the DCT numbers left to `dct run`."""
    from dct.worlds.evaluate import evaluate, format_table

    summary = evaluate([0], 0, tmp_path, None)
    (cls,) = summary["classes"]
    assert cls["dct_runs"] == [] and cls["ceiling_prompt_noun"].startswith("red ")
    assert 0 <= cls["baseline"]["evaluator"] <= 1 and summary["fid_ratio_mean"] is None
    assert "| – | – |" in format_table(summary) and not (tmp_path / "tokens").exists()
