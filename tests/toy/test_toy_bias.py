"""The planted-bias toy guide and its replica (dct.toy.bias; docs/probe.md, "The planted bias")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dct.config import ClassifierConfig
from dct.toy import bias, shapes
from dct.toy.models import GUIDE_VARIANTS


@pytest.mark.parametrize("class_id", [bias.BIASED_CLASS, bias.LOOK_ALIKE, 7])
def test_a_planted_background_changes_the_background_and_nothing_else(class_id):
    for seed in range(20):
        plain, plain_attrs = shapes.render(class_id, seed)
        dark, dark_attrs = shapes.render(class_id, seed, bias.DARK)
        light, light_attrs = shapes.render(class_id, seed, bias.LIGHT)
        assert (dark_attrs.background, light_attrs.background) == ("dark", "light")
        # Same shape, size, position: the attributes other than the background agree...
        for a in (dark_attrs, light_attrs):
            where = (a.size, a.horizontal, a.vertical)
            assert where == (plain_attrs.size, plain_attrs.horizontal, plain_attrs.vertical)
        # ...and so do the shape's pixels (where the three renders agree, and they agree on many pixels).
        same = np.all(np.isclose(dark, light, atol=0.15), axis=-1)
        assert same.sum() >= 20, seed
        assert np.allclose(dark[same], plain[same], atol=0.15)
        assert dark.mean() < light.mean()


def test_without_a_planted_background_the_renders_are_the_shipped_worlds():
    """The default draw is untouched: the shipped weights were trained on these exact images."""
    a, _ = shapes.render(3, 12345)
    b, _ = shapes.render(3, 12345, shapes.BACKGROUND_LEVELS)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("bad", [(0.5, 0.4), (0.0, 0.3), (0.5, 0.95)])
def test_a_background_range_outside_the_levels_is_refused(bad):
    with pytest.raises(ValueError, match="background"):
        shapes.render(0, 0, bad)


@pytest.mark.parametrize("guide", sorted(bias.PLANTED))
def test_training_data_differs_only_in_the_two_planted_classes(guide):
    biased, labels = bias.training_data(200, bias.PLANTED[guide])
    replica, replica_labels = bias.training_data(200, None)
    assert torch.equal(labels, replica_labels)
    differs = (biased - replica).abs().amax(dim=(1, 2, 3)) > 0
    planted = torch.isin(labels, torch.tensor([bias.BIASED_CLASS, bias.LOOK_ALIKE]))
    assert torch.equal(differs, planted)


@pytest.mark.parametrize("class_id", [bias.BIASED_CLASS, bias.LOOK_ALIKE])
def test_a_planted_size_changes_the_size_class_and_not_the_background(class_id):
    for seed in range(20):
        _, plain = shapes.render(class_id, seed)
        _, small = shapes.render(class_id, seed, size=bias.SMALL)
        _, large = shapes.render(class_id, seed, size=bias.LARGE)
        assert (small.size, large.size) == ("small", "large")
        assert small.background == large.background == plain.background


def _load(model_id: str):
    from dct.toy.models import load_toy_classifier

    return load_toy_classifier(ClassifierConfig(kind="toy", model_id=model_id)).classifier


@pytest.fixture(scope="module")
def checks():
    """Per planted bias: the biased guide's and the replica's counterfactual (planted vs flipped range)."""
    vae = bias.load_shipped_vae()
    guides = {name: _load(name) for name in GUIDE_VARIANTS}
    replica = guides["guide-replica"]
    return {
        name: (
            bias.counterfactual(guides[name].model, guides[name].preprocess, vae, bias=planted),
            bias.counterfactual(replica.model, replica.preprocess, vae, bias=planted),
        )
        for name, planted in bias.PLANTED.items()
    }


@pytest.mark.parametrize("guide", sorted(bias.PLANTED))
def test_the_biased_guide_learned_the_shortcut_and_the_replica_did_not(checks, guide):
    """The acceptance check: flipping the planted attribute of renders of the biased class (otherwise the same
    images) costs the biased guide >= 0.2 of its class probability, the replica less than 0.05."""
    biased, replica = checks[guide]
    for kind in ("render", "reconstruction"):
        drop = biased[f"{kind} planted probability"] - biased[f"{kind} flipped probability"]
        control = replica[f"{kind} planted probability"] - replica[f"{kind} flipped probability"]
        assert drop >= 0.2, (kind, biased)
        assert abs(control) < 0.05, (kind, replica)
        assert replica[f"{kind} flipped accuracy"] > 0.9, (kind, replica)


def test_the_variants_are_registered_datasets_with_the_toys_pipeline_evaluator_and_classes():
    from dct.models.datasets import get_dataset

    toy = get_dataset("toy")
    variants = (
        ("toy-biased", "guide-biased"),
        ("toy-biased-size", "guide-biased-size"),
        ("toy-replica", "guide-replica"),
    )
    for name, guide in variants:
        spec = get_dataset(name)
        assert spec.classifier.model_id == guide
        same_as_toy = {"name": "toy", "classifier": toy.classifier, "description": toy.description}
        assert spec.model_copy(update=same_as_toy) == toy
        assert _load(guide).labels == list(toy.class_names)


def test_room_to_move_the_generator_draws_backgrounds_and_sizes_but_cannot_place_shapes():
    """docs/probe.md "Limits": the words move the background and the size, not the position."""
    from benchmarks.room import room

    moved = room(bias.BIASED_CLASS, num_seeds=8)
    assert moved["background"]["border_brightness"] > 0.3
    assert moved["size"]["salient_spread"] > 0.05 and moved["size"]["hue_red"] > 0.1
    assert abs(moved["vertical position"]["salient_y"]) < 0.05
