"""Accuracy intervals: Wilson's for right/wrong items (checked against the closed form), the item
bootstrap for item-level shares; degenerate data no longer gives a zero-width interval."""

import math

import numpy as np
import pandas as pd
import pytest

from auralens.interp.decay import claim_accuracy_by_step
from auralens.interp.stats import accuracy_ci, bootstrap_mean_ci, wilson_ci


def _wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(5, 5), (0, 5), (3, 7), (40, 100), (99, 100)])
def test_wilson_equals_the_closed_form(k, n):
    assert wilson_ci(k, n) == pytest.approx(_wilson_by_hand(k, n), abs=1e-9)


def test_five_of_five_is_not_certain():
    m, lo, hi = accuracy_ci(np.ones(5))
    assert m == 1.0 and lo < 0.6 and hi == pytest.approx(1.0)
    assert lo == pytest.approx(0.5655, abs=1e-4)


def test_shares_use_the_item_bootstrap_and_nan_items_are_left_out():
    v = np.array([0.5, 1.0, 0.25, 1.0, np.nan, 0.75])
    m, lo, hi = accuracy_ci(v, n_boot=500, seed=2)
    ref = bootstrap_mean_ci(v[~np.isnan(v)], n_boot=500, seed=2)
    assert (m, lo, hi) == pytest.approx(tuple(float(x) for x in ref))
    assert all(math.isnan(x) for x in accuracy_ci(np.array([np.nan])))
    assert all(math.isnan(x) for x in wilson_ci(0, 0))


def test_claim_accuracy_at_a_sparse_step_has_an_honest_interval():
    # step 6: five items, one right claim each (the decay page drew this at 1.0 with a zero-width band)
    claims = pd.DataFrame({"item_id": [f"i{k}" for k in range(5)], "step": 6, "kind": "class", "sound": 0,
                           "value": "dog", "claim_correct": True})
    row = claim_accuracy_by_step(claims).iloc[0]
    assert row["accuracy"] == 1.0 and row["ci_low"] < 0.6 and row["n_items"] == 5


# ------------------------------------------------------------ BCa against scipy directly
def _scipy_bca(samples, statistic, *, seed, n=1000, paired=False):
    from scipy import stats

    r = stats.bootstrap(samples, statistic, n_resamples=n, method="BCa", vectorized=True, paired=paired,
                        rng=np.random.default_rng(seed))
    return float(r.confidence_interval.low), float(r.confidence_interval.high)


def test_mean_ci_is_scipys_bca_column_by_column_nans_left_out():
    rng = np.random.default_rng(4)
    v = rng.normal(0.3, 1.0, size=(40, 3))
    v[30:, 2] = np.nan  # a column with fewer items
    m, lo, hi = bootstrap_mean_ci(v, n_boot=1000, seed=9)
    for c in range(3):
        col = v[~np.isnan(v[:, c]), c]
        assert m[c] == pytest.approx(col.mean())
        assert (lo[c], hi[c]) == pytest.approx(_scipy_bca((col,), np.mean, seed=9), rel=1e-9)
    # BCa is not the percentile interval: on a skewed sample the two differ
    skew = rng.exponential(size=25)
    from scipy import stats

    pct = stats.bootstrap((skew,), np.mean, n_resamples=1000, method="percentile", rng=np.random.default_rng(0))
    _, blo, bhi = bootstrap_mean_ci(skew, seed=0)
    assert (blo, bhi) != pytest.approx((pct.confidence_interval.low, pct.confidence_interval.high), abs=1e-4)


def test_paired_difference_is_scipys_paired_bootstrap():
    from auralens.interp.stats import paired_diff_ci

    rng = np.random.default_rng(1)
    # continuous values: with 0/1 answers, resamples tie the estimate and the float rounding of
    # mean(a - b) vs mean(a) - mean(b) decides BCa's bias term, so the two forms differ slightly
    base = rng.random(60)
    steered = base + rng.normal(0.05, 0.2, 60)

    def diff(a, b, axis=-1):
        return a.mean(axis) - b.mean(axis)

    m, lo, hi = paired_diff_ci(steered, base, seed=5)
    assert m == pytest.approx(steered.mean() - base.mean())
    assert (lo, hi) == pytest.approx(_scipy_bca((steered, base), diff, seed=5, paired=True), rel=1e-9)


def test_degenerate_data_warns_and_gets_the_defined_interval():
    from auralens.interp.stats import DegenerateDataWarning, degenerate_interval, paired_diff_ci

    with pytest.warns(DegenerateDataWarning, match="one value over all items"):
        m, lo, hi = bootstrap_mean_ci(np.ones(5), bounds=(0.0, 1.0))
    assert (m, lo, hi) == pytest.approx((1.0, *wilson_ci(5, 5)))  # bounds [0, 1]: exactly Wilson
    assert lo < 0.6
    with pytest.warns(DegenerateDataWarning):
        m, lo, hi = paired_diff_ci(np.ones(8), np.ones(8))  # nothing changed on 8 items
    w = wilson_ci(0, 8)[1]
    assert (m, lo, hi) == pytest.approx((0.0, -w, w))
    with pytest.warns(DegenerateDataWarning, match="zero width"):
        _, lo, hi = bootstrap_mean_ci(np.full(4, 3.0))  # no bounds known
    assert lo == hi == 3.0
    assert degenerate_interval(0.25, 10, (0.0, 1.0)) == pytest.approx((0.25 - 0.25 * wilson_ci(0, 10)[1],
                                                                       0.25 + 0.75 * wilson_ci(0, 10)[1]))


def test_probe_score_ci_is_scipys_bca_over_items():
    from auralens.probes.fit import ProbeConfig, _attribute_seed, _bootstrap_ci  # noqa: PLC2701 (the CI itself)

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(30), 2)  # two rows per item
    target = rng.integers(0, 3, size=60)
    pred = np.where(rng.random(60) < 0.7, target, (target + 1) % 3)
    cfg = ProbeConfig(n_bootstrap=1000, seed=3)
    lo, hi = _bootstrap_ci(target, pred, groups, cfg, "pitch")
    correct = np.bincount(groups, weights=(pred == target).astype(float))
    rows = np.bincount(groups).astype(float)
    ref = _scipy_bca((correct, rows), lambda c, r, axis=-1: c.sum(axis) / r.sum(axis),
                     seed=_attribute_seed(3, "pitch") + 1, paired=True)
    assert (lo, hi) == pytest.approx(ref, rel=1e-9) and lo < (pred == target).mean() < hi
    # every item right: not [1, 1]
    from auralens.interp.stats import DegenerateDataWarning

    with pytest.warns(DegenerateDataWarning):
        lo, hi = _bootstrap_ci(target, target, groups, cfg, "pitch")
    assert hi == 1.0 and lo == pytest.approx(wilson_ci(30, 30)[0])


def test_decay_curve_ci_is_scipys_bca_of_the_slope():
    from auralens.interp.decay import _slopes, curve_ci  # noqa: PLC2701 (the reference slope)

    rng = np.random.default_rng(2)
    per_item = np.clip(0.5 - 0.05 * np.arange(5)[None] + rng.normal(0, 0.05, size=(20, 5)), 0, 1)
    out = curve_ci(per_item, [0, 1, 2, 3, 4], n_boot=1000, seed=4)

    def slope(*cols, axis=-1):  # one sample per step, paired
        curve = np.stack([c.mean(axis) for c in cols], -1)
        return _slopes(curve.reshape(-1, 5), np.arange(5.0)).reshape(curve.shape[:-1])

    ref = _scipy_bca(tuple(per_item.T), slope, seed=4, paired=True)
    est = np.polyfit(np.arange(5.0), per_item.mean(0), 1)[0]
    assert out["slope_ci_low"] < est < out["slope_ci_high"] < 0
    assert (out["slope_ci_low"], out["slope_ci_high"]) == pytest.approx(ref, rel=1e-9)
