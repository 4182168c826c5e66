"""The listening signal: ranking heads as audio specialists (Glazer, Aharon, Fetaya 2026).

Two definitions, both on the yield at the last prompt token:
(a) Pearson correlation, across items, of a head's yield with answer correctness;
(b) contrast of a head's yield with the real audio against the same prompt with silence
    (mean paired difference; a standardised effect size is reported beside it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from auralens.interp.errors import ConfigError


def correlation_scores(last_yield: np.ndarray, correct: Sequence[bool]) -> np.ndarray:
    """Pearson r of yield with correctness per head: [layers, heads] (NaN where undefined)."""
    y = np.asarray(last_yield, dtype=np.float64)
    c = np.asarray(correct, dtype=np.float64)
    if y.ndim != 3 or len(c) != y.shape[0]:
        raise ConfigError(f"correlation_scores: expected yields [items, layers, heads] and one correctness per item, "
                          f"found {y.shape} and {c.shape}")
    yc = y - y.mean(0)
    cc = c - c.mean()
    num = np.einsum("i,ilh->lh", cc, yc)
    den = np.sqrt((cc**2).sum() * (yc**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = num / den
    r[den == 0] = np.nan
    return r


def contrast_scores(real: np.ndarray, silence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean paired difference real − silence per head, and its standardised effect (d_z)."""
    a, b = np.asarray(real, np.float64), np.asarray(silence, np.float64)
    if a.shape != b.shape or a.ndim != 3:
        raise ConfigError(f"contrast_scores: expected two [items, layers, heads] arrays of one shape, found {a.shape}, {b.shape}")
    d = a - b
    mean = d.mean(0)
    sd = d.std(0, ddof=1) if d.shape[0] > 1 else np.full(mean.shape, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        dz = mean / sd
    return mean, dz


MIN_YIELD = 0.01  # a head with less mean audio yield than this does not attend to the audio at all


def heads_table(
    *, correlation: np.ndarray | None = None, contrast: np.ndarray | None = None, contrast_dz: np.ndarray | None = None,
    mean_yield: np.ndarray | None = None, min_yield: float = MIN_YIELD,
):
    """One row per (layer, head): each score and its rank (1 = strongest listener).

    With ``mean_yield`` (a head's mean audio yield at the ranked row, real audio), heads below
    ``min_yield`` are ranked after every head that attends to the audio (``listens`` False):
    correlation and contrast are computed on near-zero, noise-level yields there, and a head
    that does not attend to the audio cannot be an audio specialist.  This gate is ours, not
    the paper's: on `micro-heads` (planted specialists) the plain ranking put non-attending
    heads in the top-k on noise (see README, organisms)."""
    import pandas as pd

    ref = next(x for x in (correlation, contrast) if x is not None)
    L, H = ref.shape
    df = pd.DataFrame({"layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L)})
    if correlation is not None:
        df["corr"] = correlation.reshape(-1)
        df["corr_rank"] = df["corr"].rank(ascending=False, method="first", na_option="bottom").astype(int)
    if contrast is not None:
        df["contrast"] = contrast.reshape(-1)
        df["contrast_rank"] = df["contrast"].rank(ascending=False, method="first", na_option="bottom").astype(int)
    if contrast_dz is not None:
        df["contrast_dz"] = contrast_dz.reshape(-1)
    # a score that is undefined for every head (e.g. correlation when all answers agree) does not rank
    ranks = [r for r, c in (("corr_rank", "corr"), ("contrast_rank", "contrast")) if c in df and df[c].notna().any()]
    if not ranks:
        raise ConfigError("heads_table: every score is undefined (NaN) for every head; nothing to rank by")
    score = df[ranks].mean(axis=1)
    if mean_yield is not None:
        df["mean_yield"] = np.asarray(mean_yield, dtype=np.float64).reshape(-1)
        df["listens"] = df["mean_yield"] >= min_yield
        score = score + np.where(df["listens"], 0, len(df) + 1)  # non-listeners after every listener
    df["rank"] = score.rank(method="first").astype(int)
    return df.sort_values("rank").reset_index(drop=True)


def top_k(table, k: int, by: str = "rank") -> list[tuple[int, int]]:
    """The top-k heads as (layer, head) by a rank column of :func:`heads_table`."""
    if k < 1:
        raise ConfigError(f"top_k: expected k >= 1, found {k}")
    t = table.sort_values(by)
    return [(int(r.layer), int(r.head)) for r in t.head(k).itertuples()]
