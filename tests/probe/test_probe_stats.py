"""Paired shifts, bootstrap intervals and Benjamini–Hochberg on synthetic data with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from dct.probe.stats import benjamini_hochberg, paired_shifts


def test_a_true_shift_is_found_and_a_null_is_not():
    rng = np.random.default_rng(0)
    seeds = 64
    # The seed decides most of the value (shared by both variants); attribute 0 shifts by +0.1, 1 does not.
    seed_effect = rng.uniform(0.2, 0.8, size=(seeds, 2))
    base = seed_effect + rng.normal(0, 0.02, size=(seeds, 2))
    dct = seed_effect + np.array([0.1, 0.0]) + rng.normal(0, 0.02, size=(seeds, 2))
    st = paired_shifts(base, dct, num_bootstrap=1000)
    assert st.shift[0] == pytest.approx(0.1, abs=0.01)
    assert st.ci_low[0] > 0.08 and st.ci_high[0] < 0.12
    assert st.p_value[0] < 1e-10
    assert st.ci_low[1] < 0 < st.ci_high[1]
    assert st.p_value[1] > 0.01
    # Paired: the seed effect cancels, so d is large although the shift is small against the value range.
    assert st.effect_size[0] > 2


def test_interval_over_runs_is_wider_when_runs_disagree():
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 1, size=(3, 32, 1))
    noise = rng.normal(0, 0.01, size=(3, 32, 1))
    same = paired_shifts(base, base + 0.05 + noise)
    disagree = paired_shifts(base, base + np.array([0.0, 0.05, 0.1]).reshape(3, 1, 1) + noise)
    assert same.num_runs == 3 and same.num_seeds == 32
    assert same.shift[0] == pytest.approx(disagree.shift[0], abs=0.005)
    assert (disagree.ci_high - disagree.ci_low)[0] > 3 * (same.ci_high - same.ci_low)[0]


def test_same_inputs_give_the_same_interval():
    rng = np.random.default_rng(2)
    a, b = rng.uniform(size=(10, 3)), rng.uniform(size=(10, 3))
    s1, s2 = paired_shifts(a, b, seed=5), paired_shifts(a, b, seed=5)
    assert np.array_equal(s1.ci_low, s2.ci_low) and np.array_equal(s1.ci_high, s2.ci_high)


def test_benjamini_hochberg_keeps_true_shifts_and_drops_noise():
    rng = np.random.default_rng(3)
    null = rng.uniform(size=10_000)  # 10,000 null tests: ~500 below 0.05 uncorrected
    true = np.full(20, 1e-8)
    assert (null < 0.05).sum() > 300
    assert (benjamini_hochberg(null) <= 0.05).sum() == 0  # only noise: nothing reported
    q = benjamini_hochberg(np.concatenate([true, null]))
    assert (q[:20] <= 0.05).all()
    false = (q[20:] <= 0.05).sum()
    assert false / (20 + false) <= 0.2  # the false-discovery proportion stays near the 5% rate


def test_benjamini_hochberg_matches_the_step_up_definition():
    p = np.array([0.01, 0.04, 0.03, 0.2])
    # sorted 0.01, 0.03, 0.04, 0.2 → ·4/rank = 0.04, 0.06, 0.0533, 0.2 → running min from the top.
    assert np.allclose(benjamini_hochberg(p), [0.04, 0.0533333, 0.0533333, 0.2])


@pytest.mark.parametrize(
    "base, dct, kwargs, match",
    [
        (np.zeros((4, 2)), np.zeros((4, 3)), {}, "pair the images"),
        (np.zeros((1, 2)), np.zeros((1, 2)), {}, "at least 2 seeds"),
        (np.full((4, 2), np.nan), np.zeros((4, 2)), {}, "NaN"),
        (np.zeros((4, 2)), np.zeros((4, 2)), {"confidence": 1.5}, "confidence"),
        (np.zeros((4, 2)), np.zeros((4, 2)), {"num_bootstrap": 10}, "num_bootstrap"),
    ],
)
def test_bad_input_fails_with_a_value_error(base, dct, kwargs, match):
    with pytest.raises(ValueError, match=match):
        paired_shifts(base, dct, **kwargs)


def test_bh_rejects_p_values_outside_unit_interval():
    with pytest.raises(ValueError, match="p-values"):
        benjamini_hochberg(np.array([0.5, 1.5]))


def test_a_real_but_negligible_shift_is_not_reported_beyond_the_margin():
    """64 seeds make a consistent 0.02 shift "significant" against 0; the margin tests |shift| > min_shift."""
    rng = np.random.default_rng(3)
    seeds = 64
    seed_effect = rng.uniform(0.2, 0.8, size=(seeds, 3))
    base = seed_effect + rng.normal(0, 0.01, size=(seeds, 3))
    dct = seed_effect + np.array([0.02, -0.2, -0.06]) + rng.normal(0, 0.01, size=(seeds, 3))
    against_zero = paired_shifts(base, dct, num_bootstrap=500)
    margin = paired_shifts(base, dct, num_bootstrap=500, min_shift=0.05)
    assert (against_zero.p_value < 1e-10).all()  # every shift is "real"
    assert margin.p_value[0] > 0.5  # 0.02 lies inside the margin
    assert margin.p_value[1] < 1e-10 and margin.p_value[2] < 0.01  # 0.2 and 0.06 lie beyond it, either sign
    assert margin.shift == pytest.approx(against_zero.shift) and np.array_equal(margin.ci_low, against_zero.ci_low)
    with pytest.raises(ValueError, match="min_shift"):
        paired_shifts(base, dct, min_shift=-0.1)


def test_the_probe_counts_a_shift_only_beyond_the_margin(write_run):
    """probe_values: significant = q <= fdr AND the interval wholly beyond ±min_shift (stored planted runs)."""
    from dct.artifacts.store import ArtifactStore
    from dct.probe.attributes import resolve_attributes
    from dct.probe.probe import probe_records, run_records

    root, run_id = write_run({4: 0.02, 9: 0.2}, seeds=range(48))
    store = ArtifactStore(root)
    records = [run_records(store, "toy", run_id)]
    attrs = resolve_attributes(["border_brightness"])

    def significant(**kw):
        table = probe_records(store, records, attrs, num_bootstrap=300, **kw).table.to_pylist()
        return {r["class_id"]: r["significant"] for r in table}, table

    assert significant(min_shift=0.0)[0] == {4: True, 9: True}  # 0.02 is real, and "significant" against 0
    by_default, table = significant()
    assert by_default == {4: False, 9: True}  # ...but within the default margin
    assert {r["min_shift"] for r in table} == {0.05}
