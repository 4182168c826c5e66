"""Small statistics shared by every table: bootstrap CIs over items (vectorised)."""

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
