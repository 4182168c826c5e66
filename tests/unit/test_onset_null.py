"""The onset detector with a null (auralens.interp.decay.onset_test): "no onset" on flat and
gradual curves, the planted step on a planted break, its bootstrap against a naive loop."""

import numpy as np
import pandas as pd
import pytest

from auralens.interp.decay import (
    claim_matrix,
    onset_stability,
    onset_test,
    step_means_per_item,
)
from auralens.interp.errors import ConfigError


def _items(rng, curve, n_items=150, sd=0.15, missing=0.1):
    """[items, steps]: each item's values = the curve + per-item noise, some cells missing."""
    v = np.asarray(curve)[None] + sd * rng.standard_normal((n_items, len(curve)))
    v[rng.random(v.shape) < missing] = np.nan
    return np.clip(v, 1e-3, None)


def test_flat_noisy_curves_say_no_onset():
    rng = np.random.default_rng(0)
    outcomes = [onset_test(_items(rng, [0.5] * 6), n_boot=500, seed=s)["onset"] for s in range(40)]
    # the plain argmax (the old onset()) names a step every time; the null names one rarely
    assert sum(o is None for o in outcomes) >= 37


def test_gradual_log_decay_says_no_onset_but_a_planted_break_is_found():
    rng = np.random.default_rng(1)
    gradual = 0.6 * 0.8 ** np.arange(7)  # the same ratio every step: no step stands out in log space
    none = [onset_test(_items(rng, gradual, sd=0.05), log=True, n_boot=500, seed=s)["onset"] for s in range(20)]
    assert sum(o is None for o in none) >= 18
    planted = np.array([0.5, 0.45, 0.4, 0.01, 0.01, 0.012, 0.01])  # x40 fall into step 3
    for s in range(10):
        r = onset_test(_items(rng, planted, sd=0.05), log=True, n_boot=500, seed=s)
        assert r["onset"] == 3 and r["candidate"] == 3 and r["support"] > r["threshold"]
        assert r["margin_ci_low"] > 0 and r["falls"][3] == max(r["falls"].values())


def test_a_small_planted_fall_needs_enough_items():
    rng = np.random.default_rng(2)
    curve = [0.8, 0.8, 0.8, 0.65, 0.65]  # a 0.15 fall into step 3, item noise sd 0.3
    few = [onset_test(_items(rng, curve, n_items=15, sd=0.3), n_boot=500, seed=s)["onset"] for s in range(20)]
    many = [onset_test(_items(rng, curve, n_items=2000, sd=0.3), n_boot=500, seed=s)["onset"] for s in range(20)]
    assert sum(o is None for o in few) >= 15
    assert sum(o == 3 for o in many) >= 18


def test_support_matches_a_naive_bootstrap_loop():
    rng = np.random.default_rng(3)
    v = _items(rng, [0.5, 0.42, 0.4, 0.3, 0.29], n_items=60, sd=0.2, missing=0.2)
    labels = [2, 3, 5, 6, 8]
    r = onset_test(v, steps=labels, n_boot=300, seed=11)
    # the same resamples, drawn and scored one at a time
    idx = np.random.default_rng(11).integers(0, len(v), size=(300, len(v)))
    full = np.nanmean(v, 0)
    falls = full[:-1] - full[1:]
    j = int(np.argmax(falls))
    assert r["candidate"] == labels[j + 1]
    assert r["falls"] == {labels[s + 1]: pytest.approx(falls[s]) for s in range(4)}
    wins = 0
    for b in range(300):
        c = np.nanmean(v[idx[b]], 0)
        f = c[:-1] - c[1:]
        others = [f[i] for i in range(4) if i != j]
        wins += bool(f[j] > 0 and f[j] > max(others))
    assert r["support"] == pytest.approx(wins / 300)
    assert r["threshold"] == pytest.approx(1 - 0.05 / 4)
    assert (r["onset"] is not None) == (wins / 300 > 1 - 0.05 / 4)


def test_weighted_curve_is_the_pooled_claim_accuracy():
    rng = np.random.default_rng(4)
    rows = [{"item_id": f"i{i}", "step": int(s), "kind": "class" if rng.random() < 0.8 else "count",
             "sound": 0, "value": "x", "claim_correct": bool(rng.random() < (0.9 if s < 3 else 0.2))}
            for i in range(80) for s in rng.integers(1, 6, size=int(rng.integers(1, 6)))]
    claims = pd.DataFrame(rows)
    share, count, labels, ids = claim_matrix(claims)
    pooled = claims[claims.kind == "class"].groupby("step")["claim_correct"].mean()
    curve = np.nansum(share * count, 0) / count.sum(0)
    assert labels == sorted(pooled.index) and curve == pytest.approx(pooled.to_numpy())
    assert len(ids) == claims[claims.kind == "class"].item_id.nunique()
    r = onset_test(share, steps=labels, weights=count, n_boot=500)
    assert r["onset"] == 3
    falls = pooled.to_numpy()[:-1] - pooled.to_numpy()[1:]
    assert r["margin"] == pytest.approx(min(falls[1], falls[1] - np.delete(falls, 1).max()))


def test_step_means_per_item_are_the_all_heads_means():
    rng = np.random.default_rng(5)
    ys = [rng.random((int(n), 2, 3)) for n in rng.integers(5, 20, size=8)]
    ss = [np.sort(rng.integers(0, 4, size=len(y))) for y in ys]
    m = step_means_per_item(ys, ss)
    for i, (y, s) in enumerate(zip(ys, ss)):
        for k in range(4):
            if (s == k).any():
                assert m[i, k] == pytest.approx(y[s == k].mean())
            else:
                assert np.isnan(m[i, k])
    assert m.shape == (8, 4)


def test_stability_tallies_every_resample_and_bad_input_is_refused():
    rng = np.random.default_rng(6)
    flat = _items(rng, [0.5] * 5, n_items=100)
    s = onset_stability(flat, n_outer=30, n_boot=200)
    assert sum(s["outcomes"].values()) == 30 and s["share_none"] >= 0.8
    drop = _items(rng, [0.5, 0.5, 0.05, 0.05], n_items=100, sd=0.05)
    assert onset_stability(drop, n_outer=20, n_boot=200, log=True)["outcomes"] == {2: 20}
    r = onset_test(np.ones((5, 1)))
    assert r["onset"] is None and np.isnan(r["support"])
    with pytest.raises(ConfigError, match="per-item values"):
        onset_test(np.ones(5))
    with pytest.raises(ConfigError, match="step label"):
        onset_test(np.ones((5, 3)), steps=[0, 1])
    with pytest.raises(ConfigError, match="weights"):
        onset_test(np.ones((5, 3)), weights=np.ones((5, 2)))


class _FakeRun:
    """The two tables add_claims reads from a record run."""

    def __init__(self, claims):
        self.tables = {"claims.parquet": claims, "claim_accuracy.parquet": pd.DataFrame(
            {"step": [0], "accuracy": [0.5], "ci_low": [0.4], "ci_high": [0.6], "n_claims": [1]})}

    def read_table(self, name):
        return self.tables[name]


def _class_claims(rng, n_items, acc_by_step, prefix):
    return pd.DataFrame([{"item_id": f"{prefix}{i}", "step": s, "kind": "class", "sound": s, "value": "x",
                          "claim_correct": bool(rng.random() < a)}
                         for i in range(n_items) for s, a in enumerate(acc_by_step, start=1)])


def test_compare_claim_gap_is_cut_at_an_onset_chosen_on_calibration_items():
    from auralens.compare_metrics import Rows, add_claims

    rng = np.random.default_rng(9)
    cal = _class_claims(rng, 150, [0.9, 0.9, 0.2, 0.2, 0.2], "c")  # planted break into step 3
    flat = _class_claims(rng, 150, [0.6] * 5, "t")
    r = Rows("o", "s", "c", "cot")
    add_claims(r, _FakeRun(flat), n_boot=500, seed=0, min_claims=20, onset_run=_FakeRun(cal))
    got = {x["metric"]: x for x in r if x["group"] == "all"}
    assert got["claim_onset"]["value"] == 3 and "calibration items" in got["claim_onset"]["note"]
    # the gap is measured on the reported (flat) items at the calibration onset: about 0
    t = flat.set_index("item_id")
    before = t[t.step < 3].groupby(level=0)["claim_correct"].mean()
    after = t[t.step >= 3].groupby(level=0)["claim_correct"].mean()
    assert got["claim_gap"]["value"] == pytest.approx((before - after).mean())
    assert abs(got["claim_gap"]["value"]) < 0.1 and got["claim_gap"]["n"] == 150
    # no calibration run and a flat curve: the test says no onset, so no gap is cut
    r2 = Rows("o", "s", "c", "cot")
    add_claims(r2, _FakeRun(flat), n_boot=500, seed=0, min_claims=20)
    got2 = {x["metric"]: x for x in r2 if x["group"] == "all"}
    assert got2["claim_onset"]["value"] == -1 and "no onset" in got2["claim_onset"]["note"]
    assert "claim_gap" not in got2 and "biased" in got2["claim_onset"]["note"]


def test_a_break_margin_separates_a_break_from_the_steepest_step_of_a_smooth_decay():
    rng = np.random.default_rng(10)
    # healthy-micro-like: a smooth decay whose first log fall (0.17) is reliably the largest
    smooth = 0.48 * np.exp(-np.cumsum([0, 0.17, 0.07, 0.12, 0.09, 0.12, 0.02]))
    planted = np.array([0.15, 0.07, 0.05, 0.0012, 0.002, 0.004, 0.004])
    v = _items(rng, smooth, n_items=3000, sd=0.05, missing=0.0)
    assert onset_test(v, log=True, n_boot=500)["onset"] == 1  # significant, but no break
    r = onset_test(v, log=True, n_boot=500, min_margin=np.log(2))
    assert r["onset"] is None and r["support"] == 0.0 and r["min_margin"] == pytest.approx(np.log(2))
    d = _items(rng, planted, n_items=150, sd=0.01, missing=0.0)
    assert onset_test(d, log=True, n_boot=500, min_margin=np.log(2))["onset"] == 3
