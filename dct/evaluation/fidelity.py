"""Per-class fidelity and diversity from features: precision, recall, density, coverage and the Vendi score.

Computed by the parent from the features the shards already wrote for FID/KID (no image is read again,
no network runs), per class and per variant, against the class's reference features in the same feature
space (docs/evaluation.md, "Per-class fidelity and diversity"). Pure compute: tensors in, numbers out.

- **Precision, recall, density, coverage** (Kynkäänniemi et al. 2019; Naeem et al. 2020): k-nearest-neighbour
  balls around each real (and, for recall, each generated) feature vector; the formulas of the authors'
  ``prdc`` package (strict ``<``; the k-th neighbour not counting the point itself), on float64 Euclidean
  distances.
- **Vendi score** (Friedman & Dieng 2023): ``exp(-Σ λ log λ)`` over the eigenvalues λ of ``K / n``, with
  ``K`` the cosine-similarity kernel of the set (the L2-normalised features' Gram matrix) — vendi-score's
  ``score_X``. 1 for n copies of one image, n for n orthogonal ones.

Why not call the libraries: ``prdc`` prints on every call and starts 8 joblib workers per distance
matrix, and both pull in scikit-learn for two small formulas. ``tests/evaluation/test_fidelity.py`` checks
these functions against both libraries on the same features (they are test dependencies).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from dct.class_metrics import GENERATED, REFERENCE, metric_columns

DEFAULT_NEAREST_K = 5  # prdc's and the density/coverage paper's recommended k
MIN_VENDI_SAMPLES = 2  # the diversity of one image is 1 by definition, whatever it shows


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # float64 through the Gram matrix (|a|² + |b|² − 2ab, as scikit-learn's, which prdc calls): one matrix product,
    # 33 ms per class for 2048-d features where exact differences take 165 ms (10k classes: 27 min on the parent).
    return torch.cdist(a.double(), b.double(), compute_mode="use_mm_for_euclid_dist")


def _kth_neighbour(features: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each row to its k-th nearest OTHER row ``(N,)`` (the row itself is the 0-th)."""
    return torch.kthvalue(_distances(features, features), k + 1, dim=1).values


def min_prdc_samples(k: int) -> int:
    """Images each set needs for precision/recall/density/coverage with ``k`` neighbours: ``k + 1``."""
    return k + 1


def prdc(real: torch.Tensor, fake: torch.Tensor, k: int = DEFAULT_NEAREST_K) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake (M, D)`` against ``real (N, D)``.

    Returns:
        ``{"precision", "recall", "density", "coverage"}``: fractions in [0, 1], density ≥ 0.

    Raises:
        ValueError: shapes are not ``(N, D)``/``(M, D)``, ``k < 1``, or either set has fewer than ``k + 1`` rows.
    """
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if k < 1:
        raise ValueError(f"nearest_k={k!r} must be at least 1")
    need = min_prdc_samples(k)
    if real.shape[0] < need or fake.shape[0] < need:
        raise ValueError(
            f"precision/recall/density/coverage with k={k} need at least {need} images per set, got "
            f"{real.shape[0]} reference and {fake.shape[0]} generated"
        )
    real_radius = _kth_neighbour(real, k)  # (N,)
    fake_radius = _kth_neighbour(fake, k)  # (M,)
    d = _distances(real, fake)  # (N, M)
    inside_real = d < real_radius[:, None]  # fake j inside real i's ball
    return {
        "precision": float(inside_real.any(dim=0).double().mean()),
        "recall": float((d < fake_radius[None, :]).any(dim=1).double().mean()),
        "density": float(inside_real.sum(dim=0).double().mean() / k),
        "coverage": float((d.min(dim=1).values < real_radius).double().mean()),
    }


def vendi_score(features: torch.Tensor) -> float:
    """Vendi score of a set ``(N, D)`` with the cosine-similarity kernel: in [1, N].

    The eigenvalues of ``X Xᵀ / N`` (X = rows scaled to unit length; a zero row stays zero, as in
    scikit-learn's ``normalize``) are those of ``Xᵀ X / N`` plus zeros, so the smaller matrix is used.

    Raises:
        ValueError: not ``(N, D)`` with ``N ≥ 1``.
    """
    if features.ndim != 2 or features.shape[0] < 1:
        raise ValueError(f"features must be (N, D) with N >= 1, got {tuple(features.shape)}")
    x = torch.nn.functional.normalize(features.double(), dim=1)
    n = x.shape[0]
    gram = x @ x.T if n <= x.shape[1] else x.T @ x
    eig = torch.linalg.eigvalsh(gram / n)
    p = eig[eig > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def min_fid_samples(dim: int) -> int:
    """Images each set needs for a Fréchet distance in ``dim`` feature dimensions: ``dim + 1`` (below that the
    covariance is singular and the number meaningless)."""
    return dim + 1


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """FID's formula on two feature sets ``(N, D)``, ``(M, D)``: ``|μa − μb|² + tr(Σa + Σb − 2 (Σa Σb)^½)``.

    Raises:
        ValueError: shapes disagree, or a set has fewer than ``D + 1`` rows.
    """
    import numpy as np
    from scipy import linalg

    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {tuple(a.shape)} and {tuple(b.shape)}")
    need = min_fid_samples(a.shape[1])
    if a.shape[0] < need or b.shape[0] < need:
        raise ValueError(
            f"FID in {a.shape[1]} dimensions needs {need} images per set, got {a.shape[0]} and {b.shape[0]}"
        )
    x, y = a.double().numpy(), b.double().numpy()
    cov_x, cov_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = linalg.sqrtm(cov_x @ cov_y)
    return float(((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(cov_x + cov_y - 2 * np.real(covmean)))


def kernel_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """KID's statistic on whole sets: the unbiased MMD² with the polynomial kernel ``(x·y / D + 1)³`` (Bińkowski et
    al. 2018; torchmetrics' per-subset formula, here on all rows at once: deterministic, no subsets).

    Raises:
        ValueError: shapes disagree, or a set has fewer than 2 rows.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {a.shape[0]} and {b.shape[0]}")
    x, y = a.double(), b.double()
    d = x.shape[1]

    def k(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (u @ v.T / d + 1) ** 3

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    n, m = x.shape[0], y.shape[0]
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(within_x + within_y - 2 * kxy.mean())


def class_feature_metrics(
    reference: torch.Tensor | None,
    generated: Mapping[str, torch.Tensor],
    k: int = DEFAULT_NEAREST_K,
    *,
    reference_missing: str | None = None,
) -> tuple[dict[str, float | None], str | None]:
    """The ``source="features"`` columns of one class (:mod:`dct.class_metrics`), and why any is null.

    Args:
        reference: the class's reference features ``(N, D)``, or None (then ``reference_missing`` says why).
        generated: ``{"baseline": (M, D), "dct": (M, D)}``.
        k: neighbours of the precision/recall/density/coverage balls (``evaluation.nearest_k``).

    Returns:
        ``({column: value or None}, note)``; the note (None when every value exists) names each missing
        value's reason, e.g. too few images for k (fewer than ``k + 1`` in a set).
        The reference set's Vendi score is computed on its first ``M`` images (as many as a generated
        set), since the score grows with the number of images.
    """
    values: dict[str, float | None] = dict.fromkeys((c for _, _, c in metric_columns("features")), None)
    notes: list[str] = []
    need = min_prdc_samples(k)
    n_ref = None if reference is None else int(reference.shape[0])
    if reference is None:
        notes.append(f"precision/recall/density/coverage: {reference_missing or 'no reference images'}")
    for v in GENERATED:
        fake = generated[v]
        if reference is not None:
            if n_ref >= need and fake.shape[0] >= need:
                for name, value in prdc(reference, fake, k).items():
                    values[f"{name}_{v}"] = value
            else:
                notes.append(
                    f"{v} precision/recall/density/coverage: k={k} needs at least {need} images per set, have "
                    f"{n_ref} reference and {fake.shape[0]} generated"
                )
        if fake.shape[0] >= MIN_VENDI_SAMPLES:
            values[f"vendi_{v}"] = vendi_score(fake)
        else:
            notes.append(f"{v} Vendi: needs at least {MIN_VENDI_SAMPLES} images, have {fake.shape[0]}")
    size = max((generated[v].shape[0] for v in GENERATED), default=0)
    if reference is not None:
        subset = reference[: max(size, MIN_VENDI_SAMPLES)]
        if subset.shape[0] >= MIN_VENDI_SAMPLES:
            values[f"vendi_{REFERENCE}"] = vendi_score(subset)
        else:
            notes.append(f"reference Vendi: needs at least {MIN_VENDI_SAMPLES} images, have {subset.shape[0]}")
    else:
        notes.append(f"reference Vendi: {reference_missing or 'no reference images'}")
    _distribution_distances(reference, generated, size, values, notes)
    return values, "; ".join(notes) or None


def _distribution_distances(
    reference: torch.Tensor | None,
    generated: Mapping[str, torch.Tensor],
    size: int,
    values: dict[str, float | None],
    notes: list[str],
) -> None:
    """Per-class FID and KID of each variant against the class's reference features, and the real-vs-real floor
    (``*_reference``: two disjoint halves of the reference images, each as large as a generated set when there
    are enough). A value that cannot be computed stays None with a note that says how many images it needs."""
    if reference is None:
        return
    dim, n_ref = int(reference.shape[1]), int(reference.shape[0])
    need = min_fid_samples(dim)
    for v in GENERATED:
        fake = generated[v]
        if fake.shape[0] >= need and n_ref >= need:
            values[f"class_fid_{v}"] = frechet_distance(reference, fake)
        else:
            notes.append(
                f"{v} FID: {dim}-dimensional features need at least {need} images per set, have {n_ref} reference "
                f"and {fake.shape[0]} generated (raise evaluation.num_samples to {need}; KID is defined from 2)"
            )
        if fake.shape[0] >= 2 and n_ref >= 2:
            values[f"class_kid_{v}"] = kernel_distance(reference, fake)
    half = min(max(size, 2), n_ref // 2)
    first, second = reference[:half], reference[half : 2 * half]
    if half >= 2:
        values[f"class_kid_{REFERENCE}"] = kernel_distance(first, second)
    if half >= need:
        values[f"class_fid_{REFERENCE}"] = frechet_distance(first, second)
    else:
        notes.append(
            f"reference FID floor: two halves of {need} images needed, the class has {n_ref} reference images"
        )
