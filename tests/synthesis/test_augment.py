"""The augmentation experiment's pieces: paired arms, the label-preserving recipe, the table and the plot."""

from __future__ import annotations

import io

import pytest
import timm
import torch

from dct.synthesis.augment import (
    AUGMENT_SCHEMA_VERSION,
    ArmData,
    DownstreamConfig,
    augment_batch,
    build_downstream,
    first_k,
    plot_png,
    results_table,
    run_experiment,
)

TINY = DownstreamConfig(steps=2, batch_size=8)


def _data(n_per_class: int, seed: int) -> ArmData:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(n_per_class)
    return ArmData(torch.rand(len(labels), 3, 32, 32, generator=g), labels)


def test_arms_of_a_seed_share_initial_weights_and_seeds_differ():
    a, b, c = (build_downstream(TINY, 3, s).state_dict() for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_recipe_keeps_colour_and_range():
    x = torch.zeros(4, 3, 8, 8)
    x[:, 0] = 0.9  # red
    y = augment_batch(x, DownstreamConfig(), torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert (y[:, 0] > y[:, 2]).all()  # no hue jitter: a red image stays red


def test_first_k_takes_the_first_k_of_every_class_and_refuses_too_few():
    pool = _data(5, 0)
    picked = first_k(pool, 2, 3)
    assert picked.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(picked.images[:2], pool.images[:2])
    with pytest.raises(ValueError, match="fewer than k=6"):
        first_k(pool, 6, 3)


def test_experiment_rows_table_and_plot():
    from PIL import Image

    rows = run_experiment(
        TINY, real_pools=[_data(4, 0), _data(4, 1)], test=_data(2, 9), synthetic={"dct": _data(3, 5)},
        shots=[1, 2], num_classes=3, sanity_k=4,
    )
    overall = [(r["seed"], r["k"], r["arm"]) for r in rows if r["class_id"] is None]
    assert sorted(overall) == sorted(
        (s, k, a) for s in (0, 1) for k, a in ((1, "real"), (1, "dct"), (2, "real"), (2, "dct"), (4, "real"))
    )
    assert len(rows) == len(overall) * 4  # + one row per class
    table = results_table(rows, {"downstream_model": TINY.model, "dataset": "t", "synth_key": "a",
                                 "filtered_synth_key": "b"})
    assert table.num_rows == len(rows)
    assert table.schema.metadata[b"dct.schema_version"] == str(AUGMENT_SCHEMA_VERSION).encode()
    with Image.open(io.BytesIO(plot_png(rows, "t"))) as im:
        assert im.format == "PNG" and im.size[0] > 300



@timm.models.register_model
def dct_test_linear(pretrained: bool = False, num_classes: int = 3, **kwargs) -> torch.nn.Module:
    """A downstream model whose every prediction moves with its initial weights and with each training image
    (the default EfficientNet predicts one class for everything after a few steps: too coarse to compare arms)."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, num_classes))


def test_arms_of_a_seed_are_paired_and_each_trains_on_its_own_images():
    """Within a seed every arm starts from the same weights on the same real images and differs only in its
    synthetic images: two arms given the same images give the same per-class results; another arm's images
    give other results (docs/synthesis.md, "The augmentation experiment")."""
    own, other = _data(6, 5), _data(6, 6)
    rows = run_experiment(
        DownstreamConfig(model="dct_test_linear", steps=3, batch_size=8), real_pools=[_data(2, 0)],
        test=_data(40, 9), synthetic={"baseline": own, "dct_filtered": own, "dct": other}, shots=[2],
        num_classes=3, sanity_k=None,
    )

    def results(arm: str) -> list[float]:
        return [r["accuracy"] for r in sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["class_id"] or -1)]

    assert results("baseline") == results("dct_filtered")  # same start, same real images, same synthetic images
    assert results("baseline") != results("dct")  # the synthetic images decide the difference
