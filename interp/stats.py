"""The one statistics module every table and figure uses for its intervals.

- **Accuracies** (a share of right/wrong items): Wilson's score interval
  (``scipy.stats.binomtest(...).proportion_ci``; 5/5 right is [0.566, 1], not [1, 1]).
- **Means and paired differences over items** (yields, per-item shares, per-item steered −
  base differences, a probe's pooled score): ``scipy.stats.bootstrap`` with ``method="BCa"``
  (bias-corrected and accelerated), vectorised, the items resampled (the samples of one call
  are resampled together, ``paired=True``: a paired difference keeps each item's two answers
  together).
- **Degenerate data** (every item has the same value, or a single item): BCa is undefined
  (scipy returns NaN with a ``DegenerateDataWarning``).  Here a :class:`DegenerateDataWarning`
  is issued instead and the interval is :func:`degenerate_interval`'s: when the values' bounds
  are known (``bounds=(lo, hi)``: [0, 1] for yields and shares, [-1, 1] for paired differences
  of shares), ``[v − w·(v − lo), v + w·(hi − v)]`` with ``w`` the Wilson upper bound of 0
  successes in n (a share ``w`` of items could lie anywhere in the bounds without n draws
  showing one; for 0/1 data this is exactly Wilson's interval); without bounds, ``[v, v]``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np

N_RESAMPLES = 1000
# elements of one vectorised resample batch (memory ~8 bytes each): bounds scipy's ``batch``
_BATCH_ELEMENTS = 4_000_000

CI_METHOD = ("95% BCa bootstrap over items (scipy.stats.bootstrap, paired where paired); accuracies: Wilson; "
             "all-equal data: the degenerate rule of auralens.interp.stats")


class DegenerateDataWarning(UserWarning):
    """Every item has the same value (or there is one item): the bootstrap says nothing, the
    interval is :func:`degenerate_interval`'s."""



def _scipy_stats():
    """``scipy.stats``, imported when first used (the CLI imports this module; ``--help`` stays light)."""
    from scipy import stats

    return stats

def wilson_ci(successes: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (``scipy.stats.binomtest(...).proportion_ci``);
    (nan, nan) when ``n`` is 0."""
    if n <= 0:
        return float("nan"), float("nan")
    ci = _scipy_stats().binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def degenerate_interval(value: float, n: int, bounds: tuple[float, float] | None, *,
                        confidence: float = 0.95) -> tuple[float, float]:
    """The interval for ``n`` items that all have ``value`` (see the module docstring)."""
    if n <= 0 or not np.isfinite(value):
        return float("nan"), float("nan")
    if bounds is None:
        return float(value), float(value)
    lo, hi = float(bounds[0]), float(bounds[1])
    w = wilson_ci(0, n, confidence=confidence)[1]
    return float(value - w * (value - lo)), float(value + w * (hi - value))


def _batch(n: int, cols: int, n_resamples: int) -> int:
    return int(max(1, min(n_resamples, _BATCH_ELEMENTS // max(1, n * cols))))


def _bca(samples: Sequence[np.ndarray], statistic: Callable[..., np.ndarray], *, n_resamples: int, seed: int,
         confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """scipy's BCa interval of ``statistic`` over axis 0 of ``samples`` (resampled together);
    its DegenerateDataWarning is left to the caller's degenerate rule (NaN comes back)."""
    n = samples[0].shape[0]
    cols = int(np.prod(samples[0].shape[1:])) * len(samples)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", _scipy_stats().DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        res = _scipy_stats().bootstrap(tuple(samples), statistic, n_resamples=n_resamples, method="BCa",
                            confidence_level=confidence, vectorized=True, paired=len(samples) > 1, axis=0,
                            rng=np.random.default_rng(seed), batch=_batch(n, cols, n_resamples))
    return np.asarray(res.confidence_interval.low, float), np.asarray(res.confidence_interval.high, float)


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def bootstrap_mean_ci(
    values: np.ndarray, *, n_boot: int = N_RESAMPLES, seed: int = 0, confidence: float = 0.95,
    bounds: tuple[float, float] | None = None, warn: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over axis 0 (items) and its BCa bootstrap CI (``scipy.stats.bootstrap``).

    ``values``: [items, ...].  NaN entries (an item lacking that cell) are left out per column
    (columns with the same items present share one vectorised call).  Columns whose items all
    have one value (or one item) get :func:`degenerate_interval` with ``bounds`` and one
    :class:`DegenerateDataWarning` per call (``warn=False``: none).
    Returns (mean, low, high), each of shape values.shape[1:]."""
    v = np.asarray(values, dtype=np.float64)
    squeeze = v.ndim == 1
    if squeeze:
        v = v[:, None]
    n = v.shape[0]
    flat = v.reshape(n, -1)
    valid = ~np.isnan(flat)
    counts = valid.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(valid, flat, 0.0).sum(0) / counts
    lo = np.full(flat.shape[1], np.nan)
    hi = np.full(flat.shape[1], np.nan)
    with np.errstate(invalid="ignore"):
        spread = np.max(flat, 0, initial=-np.inf, where=valid) - np.min(flat, 0, initial=np.inf, where=valid)
    degenerate = (counts >= 1) & ((counts == 1) | (spread == 0))
    live = (counts >= 2) & ~degenerate
    if live.any():
        masks: dict[bytes, list[int]] = {}
        for c in np.flatnonzero(live):
            masks.setdefault(np.packbits(valid[:, c]).tobytes(), []).append(int(c))
        for cols in masks.values():
            rows = valid[:, cols[0]]
            data = flat[rows][:, cols]
            lo[cols], hi[cols] = _bca((data,), _mean, n_resamples=n_boot, seed=seed, confidence=confidence)
        bad = live & ~(np.isfinite(lo) & np.isfinite(hi))
        for c in np.flatnonzero(bad):  # BCa undefined though the values differ (rare): percentile
            d = flat[valid[:, c], c]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", _scipy_stats().DegenerateDataWarning)
                r = _scipy_stats().bootstrap((d,), _mean, n_resamples=n_boot, method="percentile", confidence_level=confidence,
                                  vectorized=True, rng=np.random.default_rng(seed))
            lo[c], hi[c] = r.confidence_interval.low, r.confidence_interval.high
    for c in np.flatnonzero(degenerate):
        lo[c], hi[c] = degenerate_interval(float(mean[c]), int(counts[c]), bounds, confidence=confidence)
    if warn and degenerate.any():
        rule = (f"within bounds {tuple(bounds)}: Wilson's bound on an unseen share" if bounds is not None
                else "no bounds given: zero width")
        warnings.warn(DegenerateDataWarning(
            f"bootstrap_mean_ci: {int(degenerate.sum())} of {flat.shape[1]} column(s) have one value over all items "
            f"(or one item); their interval is the degenerate rule ({rule})"), stacklevel=2)
    shape = v.shape[1:]
    out = tuple(x.reshape(shape) for x in (mean, lo, hi))
    if squeeze:
        out = tuple(x[0] for x in out)
    return out  # type: ignore[return-value]


def paired_diff_ci(a, b, *, n_boot: int = N_RESAMPLES, seed: int = 0, confidence: float = 0.95,
                   bounds: tuple[float, float] | None = (-1.0, 1.0), warn: bool = True) -> tuple[float, float, float]:
    """Mean of the per-item differences ``a − b`` (the same items in the same order) with its
    paired BCa bootstrap CI: resampling items keeps each item's two values together, so this is
    the bootstrap of the mean of the differences.  Items where either is NaN are left out.
    ``bounds``: of one difference ([-1, 1] for two shares or right/wrong answers)."""
    d = np.asarray(a, dtype=np.float64).reshape(-1) - np.asarray(b, dtype=np.float64).reshape(-1)
    m, lo, hi = bootstrap_mean_ci(d, n_boot=n_boot, seed=seed, confidence=confidence, bounds=bounds, warn=warn)
    return float(m), float(lo), float(hi)


def bootstrap_stat_ci(
    samples: Sequence[np.ndarray], statistic: Callable[..., np.ndarray], *, n_boot: int = N_RESAMPLES,
    seed: int = 0, confidence: float = 0.95, bounds: tuple[float, float] | None = None, warn: bool = True,
    what: str = "statistic",
) -> tuple[float, float, float]:
    """A scalar ``statistic(*samples, axis=-1)`` of items (1-D samples, one value per item,
    resampled together: ``paired=True``) with its BCa bootstrap CI.  ``statistic`` must be vectorised (take ``axis``, the
    items' axis of a batch of resamples).  When every resample gives the estimate (all items
    alike, or one item) the interval is :func:`degenerate_interval` with ``bounds``."""
    arrs = [np.asarray(s, dtype=np.float64).reshape(-1) for s in samples]
    n = arrs[0].shape[0]
    est = float(statistic(*[np.moveaxis(a, 0, -1) for a in arrs], axis=-1))
    if n == 0:
        return float("nan"), float("nan"), float("nan")

    def stat(*xs, axis=-1):  # scipy hands the items' axis; bring it last
        return statistic(*[np.moveaxis(x, axis, -1) for x in xs], axis=-1)

    lo = hi = float("nan")
    if n >= 2 and np.isfinite(est):
        lo_a, hi_a = _bca(arrs, stat, n_resamples=n_boot, seed=seed, confidence=confidence)
        lo, hi = float(lo_a), float(hi_a)
    if (np.isfinite(lo) and np.isfinite(hi)) or not np.isfinite(est):
        return est, lo, hi
    # BCa undefined: degenerate when every leave-one-out estimate is the estimate (all items alike)
    keep = ~np.eye(n, dtype=bool) if n >= 2 else np.zeros((0, n), bool)
    loo = [stat(*[np.moveaxis(a, 0, -1)[..., keep[i]] for a in arrs], axis=-1) for i in range(len(keep))]
    if n == 1 or np.allclose(np.asarray(loo, float), est, rtol=0, atol=1e-12):
        lo, hi = degenerate_interval(est, n, bounds, confidence=confidence)
        why = f"every resample of the {n} item(s) gives {est:.4g}; the interval is the degenerate rule " \
              f"({'bounds ' + str(tuple(bounds)) if bounds is not None else 'zero width'})"
    else:
        why = "BCa is undefined (non-finite resamples); no interval"
    if warn:
        warnings.warn(DegenerateDataWarning(f"bootstrap_stat_ci ({what}): {why}"), stacklevel=2)
    return est, lo, hi


def accuracy_ci(values, *, n_boot: int = N_RESAMPLES, seed: int = 0, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of per-item ``values`` in [0, 1] with a 95% CI: Wilson's interval when every value is
    0 or 1 (right/wrong items), else the BCa item bootstrap (:func:`bootstrap_mean_ci`,
    bounds [0, 1]: item-level shares, e.g. each item's share of right claims).  NaN items are
    left out."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[~np.isnan(v)]
    if not len(v):
        nan = float("nan")
        return nan, nan, nan
    if np.isin(v, (0.0, 1.0)).all():
        lo, hi = wilson_ci(int(v.sum()), len(v), confidence=confidence)
        return float(v.mean()), lo, hi
    m, lo, hi = bootstrap_mean_ci(v, n_boot=n_boot, seed=seed, confidence=confidence, bounds=(0.0, 1.0))
    return float(m), float(lo), float(hi)
