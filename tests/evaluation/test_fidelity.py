"""Per-class precision, recall, density, coverage and Vendi score from features (dct.evaluation.fidelity).

Checked against the authors' libraries on the same features (``prdc``, ``vendi-score``: test dependencies),
on hand-made sets whose values are known, and for the too-few-images rule. Synthetic features: seconds.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io

import pytest
import torch
from needs import need

from dct.evaluation.fidelity import class_feature_metrics, prdc, vendi_score


def _library(module: str):
    """A reference library of the test extras (skips locally without it, fails in CI)."""
    need(importlib.util.find_spec(module.split(".")[0]) is not None, f"{module} (pip install -e '.[test]')")
    return importlib.import_module(module)


def _sets(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(60, 16, generator=g)
    fake = torch.randn(40, 16, generator=g) * 1.3 + 0.4  # overlapping, wider and shifted: no value is 0 or 1
    return real, fake


@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_precision_recall_density_coverage_equal_the_prdc_package(k):
    """docs/evaluation.md: the same numbers as the authors' prdc package on the same features."""
    prdc_package = _library("prdc")

    for seed in (0, 1):
        real, fake = _sets(seed)
        with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
            want = prdc_package.compute_prdc(real.double().numpy(), fake.double().numpy(), nearest_k=k)
        got = prdc(real, fake, k)
        assert set(got) == set(want)
        for name, value in got.items():
            assert value == pytest.approx(float(want[name]), abs=1e-12), (k, seed, name)
        assert 0 < got["precision"] < 1 and 0 < got["coverage"] < 1  # a case where the formulas matter


def test_vendi_score_equals_the_vendi_score_package_with_the_cosine_kernel():
    """docs/evaluation.md: vendi-score's ``score_X`` (cosine similarity of L2-normalised features)."""
    vendi = _library("vendi_score.vendi")

    real, fake = _sets()
    for x in (real, fake, fake[:10], real[:3] * torch.tensor([[1.0], [2.0], [-1.0]])):
        assert vendi_score(x) == pytest.approx(float(vendi.score_X(x.double().numpy())), rel=1e-9)
    wide = torch.randn(8, 64, generator=torch.Generator().manual_seed(3))  # n < D: the n x n kernel is used
    assert vendi_score(wide) == pytest.approx(float(vendi.score_X(wide.double().numpy())), rel=1e-9)


def test_identical_sets_and_a_collapsed_set():
    """Hand-made cases: a set against itself has precision = recall = coverage = 1; n copies of one feature
    vector have Vendi score 1 (one effective image), recall 0 and cover only the real images next to it."""
    x = torch.randn(100, 16, generator=torch.Generator().manual_seed(5))
    same = prdc(x, x.clone(), 5)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    assert 10 < vendi_score(x) <= 16  # 100 random directions in 16-d: at most 16 effective images (the rank)

    collapsed = (x[:1] + 0.05).repeat(64, 1)  # one image near a real one, 64 times
    assert vendi_score(collapsed) == pytest.approx(1.0, abs=1e-9)
    c = prdc(x, collapsed, 5)
    assert c["recall"] == 0.0 and c["coverage"] <= 0.05
    # scaled copies are the same image to the cosine kernel; orthogonal ones are n distinct images
    assert vendi_score(x[:1] * torch.arange(1, 9.0)[:, None]) == pytest.approx(1.0, abs=1e-9)
    assert vendi_score(torch.eye(6)) == pytest.approx(6.0, rel=1e-12)


def test_too_few_images_for_k_give_null_with_the_reason():
    """docs/evaluation.md: fewer than k + 1 images in a set -> precision/recall/density/coverage are null and
    the note says why; the Vendi score (no neighbours) is still computed."""
    real, fake = _sets()
    with pytest.raises(ValueError, match="k=5 need at least 6 images per set, got 5 reference and 40 generated"):
        prdc(real[:5], fake, 5)

    values, note = class_feature_metrics(real[:5], {"baseline": fake, "dct": fake[:20]}, 5)
    for v in ("baseline", "dct"):
        for name in ("precision", "recall", "density", "coverage"):
            assert values[f"{name}_{v}"] is None
    assert values["vendi_baseline"] is not None and values["vendi_reference"] is not None
    assert "baseline precision/recall/density/coverage: k=5 needs at least 6 images per set, have 5 reference" in note

    values, note = class_feature_metrics(real, {"baseline": fake, "dct": fake[:5]}, 5)
    assert values["precision_baseline"] is not None and values["precision_dct"] is None
    assert note == (
        "dct precision/recall/density/coverage: k=5 needs at least 6 images per set, have 60 reference and 5 "
        "generated; dct FID: 16-dimensional features need at least 17 images per set, have 60 reference and 5 "
        "generated (raise evaluation.num_samples to 17; KID is defined from 2)"
    )
    values, note = class_feature_metrics(real, {"baseline": fake, "dct": fake}, 5)
    assert note is None and None not in values.values()
    # the reference set's Vendi score is taken on as many images as a generated set has
    assert values["vendi_reference"] == pytest.approx(vendi_score(real[:40]))

    values, note = class_feature_metrics(None, {"baseline": fake, "dct": fake}, 5, reference_missing="unlabelled")
    assert values["precision_dct"] is None and values["vendi_dct"] is not None
    assert note == "precision/recall/density/coverage: unlabelled; reference Vendi: unlabelled"


def test_class_fid_and_kid_equal_torchmetrics_on_the_same_features():
    """docs/evaluation.md: per-class FID is FID's formula (torchmetrics' FrechetInceptionDistance on the same
    features) and per-class KID is KID's unbiased MMD² (torchmetrics' KernelInceptionDistance with one subset of
    every image)."""
    from dct.evaluation.fidelity import frechet_distance, kernel_distance
    from dct.evaluation.metrics import fid_from_features, kid_from_features

    real, fake = _sets()
    assert frechet_distance(real, fake) == pytest.approx(fid_from_features(real, fake), rel=1e-5)
    assert frechet_distance(real, real.clone()) == pytest.approx(0.0, abs=1e-6)
    mean, _, _ = kid_from_features(real[:40], fake, subset_size=40, subsets=1)
    assert kernel_distance(real[:40], fake) == pytest.approx(mean, rel=1e-5)
    assert kernel_distance(real, fake) > 3 * abs(kernel_distance(real[:30], real[30:]))


def test_class_fid_is_null_below_d_plus_one_images_and_says_how_many_it_needs():
    """docs/evaluation.md: 64 images of 128-d features give no per-class FID (the toy's evaluator), with a note
    naming the 129 needed; KID and the real-vs-real floors are still there where defined."""
    g = torch.Generator().manual_seed(7)
    ref, fake = torch.randn(300, 128, generator=g), torch.randn(64, 128, generator=g) + 0.3
    values, note = class_feature_metrics(ref, {"baseline": fake, "dct": fake}, 5)
    assert values["class_fid_baseline"] is None and values["class_fid_dct"] is None
    assert "baseline FID: 128-dimensional features need at least 129 images per set, have 300 reference and 64" in note
    assert "raise evaluation.num_samples to 129" in note
    assert values["class_kid_dct"] > values["class_kid_reference"]
    big = torch.randn(200, 128, generator=g) + 1.0  # a mean shift of 128 in squared distance
    values, note = class_feature_metrics(ref[:250], {"baseline": big, "dct": big}, 5)
    assert values["class_fid_dct"] is not None and values["class_fid_reference"] is None  # halves of 125 < 129
    assert "reference FID floor: two halves of 129 images needed, the class has 250 reference images" in note
    values, _ = class_feature_metrics(torch.randn(600, 128, generator=g), {"baseline": big, "dct": big}, 5)
    assert 0 < values["class_fid_reference"] < values["class_fid_dct"]
