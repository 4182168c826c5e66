"""Small statistics shared by every table: bootstrap CIs over items (vectorised), and Wilson
intervals for accuracies (a share of right/wrong items: a percentile bootstrap of 5/5 right is
[1, 1], Wilson's is [0.566, 1])."""

from __future__ import annotations

import numpy as np


def bootstrap_mean_ci(
    values: np.ndarray, *, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over axis 0 and percentile bootstrap CI, resampling rows (items).

    ``values``: [items, ...].  NaN entries (an item lacking that cell) are ignored per column.
    Returns (mean, low, high), each of shape values.shape[1:]."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
        squeeze = True
    else:
        squeeze = False
    n = v.shape[0]
    flat = v.reshape(n, -1)
    valid = ~np.isnan(flat)
    filled = np.where(valid, flat, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = filled.sum(0) / valid.sum(0)
    if n == 0:
        nan = np.full(flat.shape[1], np.nan)
        out = (nan, nan, nan)
    else:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(n_boot, n))
        # sum over resampled rows via counts: [n_boot, n] @ [n, cols]
        counts = np.zeros((n_boot, n))
        np.add.at(counts, (np.arange(n_boot)[:, None], idx), 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = (counts @ filled) / (counts @ valid.astype(np.float64))
        a = (1 - confidence) / 2
        lo = np.nanquantile(boot, a, axis=0) if n > 1 else mean.copy()
        hi = np.nanquantile(boot, 1 - a, axis=0) if n > 1 else mean.copy()
        out = (mean, lo, hi)
    shape = v.shape[1:]
    res = tuple(x.reshape(shape) for x in out)
    if squeeze:
        res = tuple(x[0] for x in res)
    return res  # type: ignore[return-value]


def wilson_ci(successes: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (``scipy.stats.binomtest(...).proportion_ci``);
    (nan, nan) when ``n`` is 0."""
    if n <= 0:
        return float("nan"), float("nan")
    from scipy.stats import binomtest

    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def accuracy_ci(values, *, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of per-item ``values`` in [0, 1] with a 95% CI: Wilson's interval when every value is
    0 or 1 (right/wrong items), else the item bootstrap (:func:`bootstrap_mean_ci`: item-level
    shares, e.g. each item's share of right claims).  NaN items are left out."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[~np.isnan(v)]
    if not len(v):
        nan = float("nan")
        return nan, nan, nan
    if np.isin(v, (0.0, 1.0)).all():
        lo, hi = wilson_ci(int(v.sum()), len(v), confidence=confidence)
        return float(v.mean()), lo, hi
    m, lo, hi = bootstrap_mean_ci(v, n_boot=n_boot, seed=seed, confidence=confidence)
    return float(m), float(lo), float(hi)
