"""The augmentation experiment's pieces: paired arms, the label-preserving recipe, the table and the plot."""

from __future__ import annotations

import io

import pytest
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
