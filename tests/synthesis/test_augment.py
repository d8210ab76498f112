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


def _linear(steps: int = 3) -> DownstreamConfig:
    return DownstreamConfig(model="dct_test_linear", steps=steps, batch_size=8)


def _overall(rows: list[dict], arm: str, k: int) -> list[dict]:
    return [r for r in rows if r["arm"] == arm and r["k"] == k]


def test_k0_trains_each_synthetic_arm_without_a_single_real_image():
    """The Classification Accuracy Score (k = 0): the synthetic arms' results do not depend on the real images at
    all — two different real pools give the same per-class results — and their rows say no real image was used."""
    synthetic = {"baseline": _data(4, 5), "dct": _data(4, 6)}

    def experiment(pool_seed: int) -> list[dict]:
        return run_experiment(
            _linear(), real_pools=[_data(6, pool_seed)], test=_data(40, 9), synthetic=synthetic, shots=[0],
            num_classes=3, sanity_k=None,
        )

    a, b = experiment(0), experiment(1)
    assert sorted({r["arm"] for r in a}) == ["baseline", "dct", "real_matched"] and {r["k"] for r in a} == {0}
    for arm in ("baseline", "dct"):
        assert [r["accuracy"] for r in _overall(a, arm, 0)] == [r["accuracy"] for r in _overall(b, arm, 0)], arm
        assert {(r["real_images"], r["synthetic_images"]) for r in _overall(a, arm, 0)} == {(0, 12)}
    # The real reference does see the real images: another pool, other results.
    assert [r["accuracy"] for r in _overall(a, "real_matched", 0)] != [
        r["accuracy"] for r in _overall(b, "real_matched", 0)
    ]


def test_k0s_real_reference_trains_on_exactly_as_many_real_images_as_the_dct_arm_has():
    """real_matched takes the first n real images per class, n = the DCT arm's synthetic images per class: changing
    a pool's image n + 1 of every class changes nothing, changing image n changes the result."""
    n = 3
    pool = _data(6, 0)

    def replaced(position: int) -> ArmData:
        images = pool.images.clone()
        for c in range(3):
            images[(pool.labels == c).nonzero().flatten()[position]] = torch.rand(3, 32, 32)
        return ArmData(images, pool.labels)

    def matched(p: ArmData) -> list[float]:
        rows = run_experiment(
            _linear(steps=6), real_pools=[p], test=_data(40, 9), synthetic={"dct": _data(n, 5)}, shots=[0],
            num_classes=3, sanity_k=None,
        )
        assert {r["real_images"] for r in _overall(rows, "real_matched", 0)} == {3 * n}
        return [r["accuracy"] for r in _overall(rows, "real_matched", 0)]

    assert matched(replaced(n)) == matched(pool)  # image n + 1 (index n) is not used
    assert matched(replaced(n - 1)) != matched(pool)  # image n (index n - 1) is


def test_k0_without_a_synthetic_arm_is_refused_before_any_training():
    with pytest.raises(ValueError, match=r"shots include k=0 .*drop 0 from shots"):
        run_experiment(TINY, real_pools=[_data(4, 0)], test=_data(2, 9), synthetic={}, shots=[0, 1], num_classes=3)
    with pytest.raises(ValueError, match=r"must be non-negative"):
        run_experiment(TINY, real_pools=[_data(4, 0)], test=_data(2, 9), synthetic={}, shots=[-1], num_classes=3)
    with pytest.raises(ValueError, match=r"class 0 has 4 real training images .* fewer than the 5 .*real_matched"):
        run_experiment(
            TINY, real_pools=[_data(4, 0)], test=_data(2, 9), synthetic={"dct": _data(5, 1)}, shots=[0],
            num_classes=3, sanity_k=None, class_ids=[0, 1, 2],
        )


def test_the_plot_draws_k0():
    from PIL import Image

    rows = run_experiment(
        TINY, real_pools=[_data(4, 0)], test=_data(2, 9), synthetic={"dct": _data(2, 5)}, shots=[0, 1],
        num_classes=3, sanity_k=4,
    )
    with Image.open(io.BytesIO(plot_png(rows, "t"))) as im:
        assert im.format == "PNG"
    table = results_table(rows, {"downstream_model": TINY.model, "dataset": "t", "synth_key": "a",
                                 "filtered_synth_key": "b"})
    df = table.to_pandas()
    assert set(df[df.k == 0].arm) == {"dct", "real_matched"}
    assert (df[(df.k == 0) & (df.arm == "dct")].real_images == 0).all()
