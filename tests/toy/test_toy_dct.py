"""Regression: the shipped toy world responds to DCT (docs/toy.md, acceptance)."""

from __future__ import annotations

import pytest

from dct.config import baseline_prompts, epoch_prompts
from dct.method.optimize import optimize_token
from dct.method.sampling import generate
from dct.toy.evaluate import score

CLASS_ID = 0  # red circle, "ember finch"


@pytest.mark.slow
def test_dct_raises_evaluator_accuracy_over_the_baseline_on_held_out_seeds(toy_world):
    spec, pipe, guide, evaluator = toy_world
    config = spec.run_config()
    seeds = list(config.evaluation.seeds)
    assert len(seeds) >= 64 and not set(seeds) & set(config.training.seeds)
    name, templates = spec.class_names[CLASS_ID], config.prompts.templates

    baseline = generate(
        pipe,
        baseline_prompts(templates, config.prompts.baseline_word, name, len(seeds)),
        seeds,
        config.sampler,
        batch_size=64,
    )
    result = optimize_token(pipe, guide, class_id=CLASS_ID, class_name=name, config=config, progress=False)
    learned = generate(
        pipe, epoch_prompts(templates, result.token, name, len(seeds)), seeds, config.sampler, batch_size=64
    )

    before, after = score(baseline, CLASS_ID, guide, evaluator), score(learned, CLASS_ID, guide, evaluator)
    assert after["evaluator"] - before["evaluator"] >= 0.4, (before, after, result.stop_reason, result.losses)
    assert after["coarse"] >= 0.9
