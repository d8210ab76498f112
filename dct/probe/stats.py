"""Paired shifts DCT − baseline per attribute: effect sizes, bootstrap intervals, Benjamini–Hochberg control.

Baseline and DCT images of a class share their noise seeds, so the unit of analysis is the per-seed
difference. Where several optimisation runs of the same class exist (same seeds, different tokens) the
differences form a ``(R runs, S seeds)`` array and the interval resamples runs AND seeds (a two-way
bootstrap), so it covers the run-to-run spread of the token as well as the choice of seeds.

The noise seed fixes much of an image (its background above all), so per-seed differences can vary
little and a small shift already has a large paired effect size (0.027 in border brightness gives
d ≈ 1.4 on the toy world). Reports therefore rank by the ABSOLUTE shift in the attribute's own units,
among the shifts that survive the multiple-comparison control; d is a column, never the ranking. For the
same reason a shift counts only beyond a margin (``min_shift``, the smallest shift of interest): with 64
seeds a real but negligible 0.02 in background brightness is "significant" against 0, and a 10,000-class
run would report thousands of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

DEFAULT_BOOTSTRAP = 2000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_FDR = 0.05
# The smallest shift of interest, in the attributes' own units (every built-in and classifier source lies on
# a 0–1 scale, the contrast on −1..1): 5 points of brightness, saturation, share or probability.
DEFAULT_MIN_SHIFT = 0.05


@dataclass(frozen=True)
class Shifts:
    """Per-attribute statistics of one class, arrays of shape ``(K,)``.

    Attributes:
        baseline_mean, dct_mean: mean attribute value per variant (over runs and seeds).
        shift: mean of the paired differences DCT − baseline (the attribute's own units).
        effect_size: paired Cohen's d (``d_z``): shift / standard deviation of the per-seed differences
            (the differences averaged over runs first); ±inf when every seed moved by the same amount.
        ci_low, ci_high: percentile bootstrap interval of ``shift``.
        p_value: one-sample t-test of the per-seed differences (averaged over runs): with ``min_shift`` = 0
            two-sided against 0; else one-sided against the margin on the shift's side (H0: |shift| ≤
            min_shift), so a small p says the shift exceeds the margin.
        num_runs, num_seeds: R and S.
    """

    baseline_mean: np.ndarray
    dct_mean: np.ndarray
    shift: np.ndarray
    effect_size: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    p_value: np.ndarray
    num_runs: int
    num_seeds: int


def paired_shifts(
    baseline: np.ndarray,
    dct: np.ndarray,
    *,
    num_bootstrap: int = DEFAULT_BOOTSTRAP,
    confidence: float = DEFAULT_CONFIDENCE,
    min_shift: float = 0.0,
    seed: int = 0,
) -> Shifts:
    """Shift statistics of K attributes from paired values.

    Args:
        baseline: ``(S, K)`` or ``(R, S, K)`` attribute values of the baseline images (seed s of run r).
        dct: the same shape, the DCT images on the same seeds.
        num_bootstrap: bootstrap resamples (≥ 100).
        confidence: two-sided coverage of the interval, in (0, 1).
        min_shift: the margin of the p-value's null hypothesis |shift| ≤ min_shift (≥ 0; 0 = no effect).
        seed: seed of the resampling (the same inputs give the same interval).

    Returns:
        A :class:`Shifts`.

    Raises:
        ValueError: shapes that differ or are not 2-/3-d, fewer than 2 seeds, non-finite values, or a bad
            ``num_bootstrap`` / ``confidence``.
    """
    base, tok = np.asarray(baseline, dtype=np.float64), np.asarray(dct, dtype=np.float64)
    if base.shape != tok.shape:
        raise ValueError(f"baseline {base.shape} and dct {tok.shape} differ; pair the images by seed")
    if base.ndim == 2:
        base, tok = base[None], tok[None]
    if base.ndim != 3:
        raise ValueError(f"values of shape {np.shape(baseline)} must be (seeds, K) or (runs, seeds, K)")
    runs, seeds, _ = base.shape
    if seeds < 2:
        raise ValueError(f"{seeds} seed(s): a paired interval needs at least 2 seeds per class")
    if not (np.isfinite(base).all() and np.isfinite(tok).all()):
        raise ValueError("attribute values contain NaN or inf; check the extractor")
    if num_bootstrap < 100:
        raise ValueError(f"num_bootstrap {num_bootstrap!r} must be at least 100")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence!r} must be within (0, 1), e.g. 0.95")
    if not min_shift >= 0.0:
        raise ValueError(f"min_shift {min_shift!r} must be >= 0 (0 tests against no shift)")
    diff = tok - base  # (R, S, K)
    per_seed = diff.mean(0)  # (S, K)
    shift = diff.mean((0, 1))
    sd = per_seed.std(0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(sd > 0, shift / np.where(sd > 0, sd, 1.0), np.where(shift == 0, 0.0, np.sign(shift) * np.inf))
        if min_shift == 0:
            tested = sps.ttest_1samp(per_seed, 0.0, axis=0).pvalue
        else:  # one-sided against the margin on the side the shift lies (H0: |mean| <= min_shift)
            side = np.where(shift >= 0, 1.0, -1.0)
            tested = sps.ttest_1samp(per_seed * side, min_shift, axis=0, alternative="greater").pvalue
        p = np.where(sd > 0, tested, np.where(np.abs(shift) > min_shift, 0.0, 1.0))
    # Two-way bootstrap with count weights: mean_b = Σ_r Σ_s w_r[b,r] w_s[b,s] diff[r,s] / (R S).
    rng = np.random.default_rng(seed)
    w_r = rng.multinomial(runs, np.full(runs, 1 / runs), size=num_bootstrap).astype(np.float64)
    w_s = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=num_bootstrap).astype(np.float64)
    if runs == 1:
        w_r[:] = 1.0
    boot = np.einsum("br,bs,rsk->bk", w_r, w_s, diff) / (runs * seeds)
    alpha = 1 - confidence
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2], axis=0)
    return Shifts(
        baseline_mean=base.mean((0, 1)),
        dct_mean=tok.mean((0, 1)),
        shift=shift,
        effect_size=d,
        ci_low=low,
        ci_high=high,
        p_value=np.clip(p, 0.0, 1.0),
        num_runs=runs,
        num_seeds=seeds,
    )


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values) of a family of tests, same shape as ``p_values``.

    A test is a discovery at false-discovery rate α when its q-value is ≤ α (Benjamini & Hochberg, 1995).

    Raises:
        ValueError: a p-value outside [0, 1] or NaN.
    """
    p = np.asarray(p_values, dtype=np.float64)
    flat = p.ravel()
    if flat.size and (np.isnan(flat).any() or flat.min() < 0 or flat.max() > 1):
        raise ValueError("p-values must lie in [0, 1] (no NaN)")
    m = flat.size
    if m == 0:
        return p.copy()
    order = np.argsort(flat)
    ranked = flat[order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum.accumulate(ranked[::-1])[::-1]
    q = np.empty_like(flat)
    q[order] = np.minimum(q_sorted, 1.0)
    return q.reshape(p.shape)
