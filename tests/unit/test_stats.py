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
