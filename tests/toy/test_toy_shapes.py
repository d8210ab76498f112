from __future__ import annotations

import numpy as np
import pytest
import torch

from dct.toy import shapes


def test_sample_is_deterministic_by_seed_and_varies_between_seeds():
    a, la, attrs_a = shapes.sample(20, seed=5)
    b, lb, _ = shapes.sample(20, seed=5)
    c, _, _ = shapes.sample(20, seed=6)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(a, c)
    assert a.shape == (20, 3, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE) and a.dtype == torch.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert la.tolist() == [i % shapes.NUM_CLASSES for i in range(20)]
    assert [x.class_id for x in attrs_a] == la.tolist()


def test_at_least_ten_fine_classes_in_at_least_two_coarse_groups():
    assert shapes.NUM_CLASSES >= 10 and len(shapes.COARSE_GROUPS) >= 2
    groups = {shapes.coarse_of(c) for c in range(shapes.NUM_CLASSES)}
    assert groups == set(range(len(shapes.COARSE_GROUPS)))


def test_variety_within_a_class():
    images, _, attrs = shapes.sample(60, seed=3, class_ids=[2])
    assert len({a.size for a in attrs}) == 3
    assert len({(a.horizontal, a.vertical) for a in attrs}) >= 5
    assert len({a.background for a in attrs}) == 3
    # No two images of the same class are alike (position, rotation, background and noise all vary).
    flat = images.flatten(1)
    dists = torch.cdist(flat, flat) + torch.eye(len(flat)) * 1e9
    assert dists.min() > 1.0


def test_colour_group_is_visible_in_the_pixels():
    images, labels, _ = shapes.sample(100, seed=9)
    # The shape's pixels are the most saturated ones: red dominates in red classes, blue in blue ones.
    r_minus_b = (images[:, 0] - images[:, 2]).flatten(1)
    red = shapes.coarse_of(labels) == 0
    assert (r_minus_b.max(dim=1).values[red] > 0.4).all()
    assert (r_minus_b.min(dim=1).values[~red] < -0.4).all()


def test_reference_set_is_fixed_and_balanced():
    ref = shapes.reference_images(3)
    assert ref.shape[0] == 3 * shapes.NUM_CLASSES
    assert torch.equal(ref, shapes.reference_images(3))


def test_render_rejects_unknown_class():
    with pytest.raises(ValueError, match="class_id"):
        shapes.render(shapes.NUM_CLASSES, 0)
    assert np.isfinite(shapes.render(0, 0)[0]).all()
