"""Perception decay: audio attention yield by reasoning step (attention view) and the accuracy
of perceptual claims by step (outcome view), with error attribution (perception vs reasoning).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from auralens.interp.cafe.formats import check_claims, parse_claims
from auralens.interp.errors import ConfigError
from auralens.interp.schemas import CLAIM_ACCURACY, DECAY, DECAY_SUMMARY
from auralens.interp.stats import accuracy_ci, bootstrap_mean_ci, bootstrap_stat_ci
from auralens.interp.steps import char_steps

DECAY_COLUMNS = DECAY.names  # the columns of decay.parquet (declared in auralens.interp.schemas)
REACH_FRAC = 0.5  # S_max: the last step reached by at least this share of the items


def _per_item_means(
    yields: Sequence[np.ndarray], index: Sequence[np.ndarray], n_index: int
) -> np.ndarray:
    """[items, n_index, L, H]: each item's mean yield over its tokens with that step/bin (NaN
    where the item has none)."""
    L, H = yields[0].shape[1:]
    out = np.full((len(yields), n_index, L, H), np.nan)
    for i, (y, s) in enumerate(zip(yields, index)):
        y = np.asarray(y, dtype=np.float64)
        s = np.asarray(s)
        if len(s) != len(y):
            raise ConfigError(f"item {i}: expected one step id per token ({len(y)}), found {len(s)}")
        for k in np.unique(s[s >= 0]):
            if k < n_index:
                out[i, k] = y[s == k].mean(axis=0)
    return out


def decay_table(
    yields: Sequence[np.ndarray],
    steps: Sequence[np.ndarray],
    *,
    top_heads: Sequence[tuple[int, int]] = (),
    token_bin: int = 16,
    max_steps: int | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    per_head: bool = True,
    step_types: Sequence[np.ndarray] | None = None,
    reach_frac: float = REACH_FRAC,
    return_per_item: bool = False,
):
    """The decay table: per head (group "head"), all heads ("all") and top-k heads ("topk"),
    mean yield per reasoning step (axis "step") and per token-position bin of ``token_bin``
    generated tokens (axis "token_bin"), with bootstrap 95% CIs across items.

    ``yields[i]``: [n_tokens, layers, heads] of item i; ``steps[i]``: [n_tokens] step ids.

    With ``step_types`` (per item, per token ``"claim"`` or ``"reasoning"``, the type of the
    token's step: :func:`step_types_of`), the step axis is also reported on claim steps only
    (groups ``all:claim``, ``topk:claim``) and on reasoning steps only (``...:reasoning``).
    Always on the step axis: ``all:reach_last`` / ``topk:reach_last``, the items whose chain
    reaches step S_max (:func:`reach_last_step`), the same items at every step 0..S_max.
    With ``return_per_item``: also ``{group: [items, steps]}`` of the non-head step-axis
    groups (for :func:`decay_summary`'s item-bootstrap CIs)."""
    if not yields:
        raise ConfigError("decay_table: expected at least one item, found none")
    L, H = np.asarray(yields[0]).shape[1:]
    rows = []
    per_item_groups: dict[str, np.ndarray] = {}
    axes = {
        "step": [np.asarray(s) for s in steps],
        "token_bin": [np.arange(len(y)) // token_bin for y in yields],
    }
    for axis, index in axes.items():
        n_index = int(max(int(ix.max()) if len(ix) else -1 for ix in index) + 1)
        if max_steps is not None:
            n_index = min(n_index, max_steps)
        if n_index <= 0:
            continue
        per_item = _per_item_means(yields, index, n_index)  # [items, S, L, H]
        groups = {"all": per_item.reshape(*per_item.shape[:2], -1).mean(-1)}
        if top_heads:
            sel = np.array([per_item[:, :, layer, head] for layer, head in top_heads])  # [k, items, S]
            groups["topk"] = sel.mean(0)
        if axis == "step":
            groups.update(_step_subsets(yields, index, n_index, groups, top_heads, step_types, reach_frac))
            per_item_groups = groups
        for g, vals in groups.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a subset's step no resample holds
                # yields lie in [0, 1]: the bound of stats' degenerate rule (all items alike)
                mean, lo, hi = bootstrap_mean_ci(vals, n_boot=n_boot, seed=seed, bounds=(0.0, 1.0), warn=False)
            n = (~np.isnan(vals)).sum(0)
            for s in range(vals.shape[1]):
                if g.endswith((":claim", ":reasoning", ":reach_last")) and not n[s]:
                    continue  # a subset's step with no item: no row
                rows.append((g, axis, -1, -1, s, mean[s], lo[s], hi[s], int(n[s])))
        if per_head:
            mean, lo, hi = bootstrap_mean_ci(per_item, n_boot=n_boot, seed=seed, bounds=(0.0, 1.0),
                                             warn=False)  # [S, L, H]
            n = (~np.isnan(per_item)).sum(0)
            for s in range(n_index):
                for layer in range(L):
                    for head in range(H):
                        rows.append(("head", axis, layer, head, s, mean[s, layer, head], lo[s, layer, head],
                                     hi[s, layer, head], int(n[s, layer, head])))
    table = DECAY.frame(rows)
    return (table, per_item_groups) if return_per_item else table


def reach_last_step(n_steps: Sequence[int], reach_frac: float = REACH_FRAC) -> int:
    """S_max: the largest step s reached (chain of more than s steps) by at least
    ``reach_frac`` of the items (at least one); -1 when no item has a step."""
    n = np.asarray(n_steps, dtype=np.int64)
    if not len(n) or n.max() <= 0:
        return -1
    need = max(1, int(np.ceil(reach_frac * len(n))))
    reached = [(n > s).sum() for s in range(int(n.max()))]
    ok = [s for s, c in enumerate(reached) if c >= need]
    return max(ok) if ok else 0


def _step_subsets(yields, index, n_index, groups, top_heads, step_types, reach_frac) -> dict[str, np.ndarray]:
    """The step-axis subsets of :func:`decay_table`: by step type, and the reach-last items."""
    out: dict[str, np.ndarray] = {}

    def agg(per_item):
        d = {"all": per_item.reshape(*per_item.shape[:2], -1).mean(-1)}
        if top_heads:
            d["topk"] = np.array([per_item[:, :, layer, head] for layer, head in top_heads]).mean(0)
        return d

    if step_types is not None:
        if len(step_types) != len(yields):
            raise ConfigError(f"decay_table: expected one step-type array per item ({len(yields)}), found {len(step_types)}")
        for kind in STEP_TYPES:
            masked = [np.where(np.asarray(t) == kind, ix, -1) for ix, t in zip(index, step_types)]
            for g, v in agg(_per_item_means(yields, masked, n_index)).items():
                out[f"{g}:{kind}"] = v
    n_steps = [int(ix.max()) + 1 if len(ix) else 0 for ix in index]
    s_max = min(reach_last_step(n_steps, reach_frac), n_index - 1)
    if s_max >= 0:
        keep = np.array([k > s_max for k in n_steps])
        for g, v in groups.items():
            sub = np.full((len(yields), s_max + 1), np.nan)
            sub[keep] = v[keep, : s_max + 1]
            out[f"{g}:reach_last"] = sub
    return out


STEP_TYPES = ("claim", "reasoning")


def step_types_of(text: str, steps: np.ndarray) -> np.ndarray:
    """Per token, the type of its step: ``"claim"`` when the step's text holds a perceptual
    claim (:func:`auralens.interp.cafe.formats.parse_claims`), else ``"reasoning"``.  ``text``: the
    generation, cut into steps as the tokens were (:func:`auralens.interp.steps.char_steps`)."""

    steps = np.asarray(steps)
    cs = char_steps(text) if text else np.zeros(0, dtype=np.int64)
    out = np.full(len(steps), "reasoning", dtype=object)
    for k in np.unique(steps):
        piece = "".join(c for c, s in zip(text, cs) if s == k).replace("\n", " ")
        if parse_claims(piece):
            out[steps == k] = "claim"
    return out


def _slopes(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Least-squares slope of each row of ``y`` [B, S] against ``x`` [S], NaNs left out."""
    ok = ~np.isnan(y)
    cnt = ok.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        xm = np.where(ok, x, 0.0).sum(1) / cnt
        ym = np.where(ok, y, 0.0).sum(1) / cnt
        dx = np.where(ok, x[None] - xm[:, None], 0.0)
        dy = np.where(ok, y - ym[:, None], 0.0)
        out = (dx * dy).sum(1) / (dx**2).sum(1)
    out[cnt < 2] = np.nan
    return out


def _curve_stat(kind: str, steps: np.ndarray):
    """The vectorised statistic of :func:`curve_ci`: one sample per step (``[..., items]``, NaN:
    no value; resampled together) -> the slope or the last/first ratio of the item-mean curve."""

    def stat(*cols, axis=-1):
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN steps of a resample
            curve = np.stack([np.nanmean(c, axis=axis) for c in cols], -1)  # [..., S]
        if kind == "ratio":
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(curve[..., 0] > 0, curve[..., -1] / curve[..., 0], np.nan)
        flat = curve.reshape(-1, curve.shape[-1])
        return _slopes(flat, steps).reshape(curve.shape[:-1])

    return stat


def curve_ci(per_item: np.ndarray, steps: Sequence[int], *, n_boot: int = 1000, seed: int = 0,
             alpha: float = 0.05) -> dict[str, float]:
    """Item-bootstrap CIs of the slope and of the last/first ratio of the mean curve over
    ``steps`` (the steps the point estimate used): BCa intervals of ``scipy.stats.bootstrap``
    (:func:`auralens.interp.stats.bootstrap_stat_ci`), items resampled, the mean curve, its
    slope and ratio recomputed on each resample."""
    v = np.asarray(per_item, dtype=np.float64)[:, list(steps)]
    nan = float("nan")
    out = {"slope_ci_low": nan, "slope_ci_high": nan, "ratio_ci_low": nan, "ratio_ci_high": nan}
    if len(steps) < 2 or not len(v):
        return out
    x = np.asarray(steps, dtype=np.float64)
    for kind in ("slope", "ratio"):
        # one sample per step, paired (an item's steps are resampled together)
        _, lo, hi = bootstrap_stat_ci(tuple(v.T), _curve_stat(kind, x), n_boot=n_boot, seed=seed, confidence=1 - alpha,
                                      what=f"decay {kind}")
        out[f"{kind}_ci_low"], out[f"{kind}_ci_high"] = lo, hi
    return out


def decay_summary(table, *, axis: str = "step", min_n: int = 1, per_item: dict[str, np.ndarray] | None = None,
                  n_boot: int = 1000, seed: int = 0):
    """Slope of mean yield per step (least squares) and last/first ratio, per group and head.

    With ``per_item`` (``{group: [items, steps]}``, from ``decay_table(..., return_per_item=True)``)
    the groups found there get item-bootstrap 95% CIs on the slope and on the ratio
    (:func:`curve_ci`) and ``n_items`` (items with a value at some used step); the others NaN."""
    out = []
    t = table[(table["axis"] == axis) & (table["n"] >= min_n)]
    for (g, layer, head), d in t.groupby(["group", "layer", "head"], sort=False):
        d = d.sort_values("step")
        x, y = d["step"].to_numpy(float), d["mean_yield"].to_numpy(float)
        ok = ~np.isnan(y)
        x, y = x[ok], y[ok]
        slope = float(np.polyfit(x, y, 1)[0]) if len(x) >= 2 else float("nan")
        ratio = float(y[-1] / y[0]) if len(y) >= 2 and y[0] > 0 else float("nan")
        nan = float("nan")
        ci = {"slope_ci_low": nan, "slope_ci_high": nan, "ratio_ci_low": nan, "ratio_ci_high": nan}
        n_items = -1
        if per_item is not None and axis == "step" and g in per_item and len(x):
            used = [int(v) for v in x]
            ci = curve_ci(per_item[g], used, n_boot=n_boot, seed=seed)
            n_items = int((~np.isnan(per_item[g][:, used])).any(1).sum())
        out.append({"group": g, "axis": axis, "layer": int(layer), "head": int(head), "slope": slope,
                    "last_first_ratio": ratio, "first": float(y[0]) if len(y) else float("nan"),
                    "last": float(y[-1]) if len(y) else float("nan"), "n_steps": int(len(y)), **ci,
                    "n_items": n_items})
    return DECAY_SUMMARY.frame(out)


# ------------------------------------------------------------------------ outcome view
def claim_rows(item_id: str, text: str, scene: dict) -> list[dict]:
    """Every perceptual claim in a generation, with its step and whether it is true."""

    return [
        {"item_id": item_id, "step": c.step, "kind": c.kind, "sound": c.sound, "value": c.value, "claim_correct": ok}
        for c, ok in check_claims(parse_claims(text), scene)
    ]


def claim_accuracy_by_step(claims, *, n_boot: int = 1000, seed: int = 0):
    """Accuracy of perceptual claims made at step s: the item-level mean (each item's share of
    right claims at that step, averaged over items), with the 95% CI of the same mean:
    Wilson's when each item's share is 0 or 1 (one claim each, or all right / all wrong), else the
    item bootstrap (:func:`auralens.interp.stats.accuracy_ci`)."""
    if len(claims) == 0:
        return CLAIM_ACCURACY.frame()
    rows = []
    for s, d in claims.groupby("step"):
        per_item = d.groupby("item_id")["claim_correct"].mean().to_numpy(float)
        mean, lo, hi = accuracy_ci(per_item, n_boot=n_boot, seed=seed)  # Wilson where each item has one claim
        rows.append({"step": int(s), "accuracy": float(mean), "ci_low": float(lo),
                     "ci_high": float(hi), "n_claims": len(d), "n_items": len(per_item)})
    return CLAIM_ACCURACY.frame(rows)


def claim_accuracy_overall(claims, *, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Item-level mean claim accuracy over all steps, with its item-bootstrap 95% CI."""
    if len(claims) == 0:
        return {"accuracy": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n_items": 0}
    per_item = claims.groupby("item_id")["claim_correct"].mean().to_numpy(float)
    mean, lo, hi = accuracy_ci(per_item, n_boot=n_boot, seed=seed)  # Wilson if each item is right/wrong
    return {"accuracy": float(mean), "ci_low": float(lo), "ci_high": float(hi), "n_items": int(len(per_item))}


def depends_on(item) -> set[tuple[str, int]] | None:
    """The perceptual facts a cafe question depends on, as ``(claim kind, sound index)``
    pairs (sound -1: the count), from the question's ``facts`` (auralens.interp.cafe.questions);
    None when unknown (not a cafe item): then every claim counts.

    count: the count; identity / last: the class of sound k; louder / higher: the loudness /
    pitch of sounds i and j; first_of_two: the classes of sounds ia and ib; after: the classes
    of sounds ia and ia + 1; count_loud: the loudness of every sound."""
    meta = getattr(item, "meta", None) or {}
    f = meta.get("facts")
    qt = getattr(item, "sub_category", None)
    if f is None or not getattr(item, "scene", None):
        return None
    n = len(item.scene.get("events", ()))
    if qt == "count":
        return {("count", -1)}
    if qt in ("identity", "last"):
        return {("class", int(f["k"]))}
    if qt in ("louder", "higher"):
        kind = "loudness" if f.get("attr") == "loudness_level" else "pitch"
        return {(kind, int(f["i"])), (kind, int(f["j"]))}
    if qt == "first_of_two":
        return {("class", int(f["ia"])), ("class", int(f["ib"]))}
    if qt == "after":
        return {("class", int(f["ia"])), ("class", int(f["ia"]) + 1)}
    if qt == "count_loud":
        return {("loudness", k) for k in range(n)}
    return None


ERROR_TYPES = ("perception", "reasoning", "unverifiable")


def attribute_errors(items_df, claims, depends: dict[str, set[tuple[str, int]] | None] | None = None) -> "object":
    """For every answer: ``correct``, ``perception`` (a perceptual claim the question depends
    on was wrong), ``reasoning`` (the claims it depends on were made and all right, answer
    wrong) or ``unverifiable`` (wrong, none of the claims it depends on was made).

    ``depends``: item id -> :func:`depends_on` of the item; an item missing there (or None)
    depends on every claim (any wrong claim is a perception error)."""
    depends = depends or {}
    by_item = {i: d for i, d in claims.groupby("item_id")} if len(claims) else {}

    def label(r):
        if r["correct"]:
            return "correct"
        d = by_item.get(r["item_id"])
        if d is None or not len(d):
            return "unverifiable"
        dep = depends.get(r["item_id"])
        if dep is not None:
            keys = list(zip(d["kind"], d["sound"].astype(int)))
            d = d[[k in dep for k in keys]]
            if not len(d):
                return "unverifiable"
        return "perception" if (~d["claim_correct"].astype(bool)).any() else "reasoning"

    out = items_df.copy()
    out["error_type"] = out.apply(label, axis=1) if len(out) else []
    return out


def error_shares(items_df) -> dict[str, float]:
    """Shares of the wrong answers by error type (they sum to 1 over the wrong answers)."""
    wrong = items_df[items_df["error_type"] != "correct"]
    if not len(wrong):
        return {t: 0.0 for t in ERROR_TYPES}
    vc = wrong["error_type"].value_counts(normalize=True)
    return {t: round(float(vc.get(t, 0.0)), 4) for t in ERROR_TYPES}


# ------------------------------------------------------------------------ onset with a null
ONSET_ALPHA = 0.05
ONSET_RULE = ("item bootstrap: the candidate k is the step after the largest fall of the mean curve; it is reported "
              "only when, in more than 1 - alpha/m of the item resamples (m = the number of falls, a Bonferroni "
              "bound over the steps that could have been picked), the fall into k is positive and exceeds every "
              "other step's fall by more than min_margin; else no onset")


def step_means_per_item(yields: Sequence[np.ndarray], steps: Sequence[np.ndarray], n_steps: int | None = None
                        ) -> np.ndarray:
    """[items, steps]: each item's mean yield over all heads and its tokens of each step (NaN
    where the item has no token of that step): the per-item values behind decay_table's
    ``all`` group on the step axis."""
    if not yields:
        raise ConfigError("step_means_per_item: expected at least one item, found none")
    if n_steps is None:
        n_steps = int(max(int(np.max(s)) if len(s) else -1 for s in steps) + 1)
    per = _per_item_means(yields, [np.asarray(s) for s in steps], max(n_steps, 0))
    return per.reshape(*per.shape[:2], -1).mean(-1)


def claim_matrix(claims, *, kind: str | None = "class"):
    """Claims as item × step matrices: (share right [items, steps], claims made [items, steps],
    step labels, item ids); ``kind`` keeps one claim kind (None: all).  NaN / 0 where an item
    made no such claim at a step.  Weighting the shares by the counts gives the pooled
    (claim-level) accuracy of each step."""
    c = claims if kind is None else claims[claims["kind"] == kind]
    if not len(c):
        return np.zeros((0, 0)), np.zeros((0, 0)), [], []
    g = c.groupby(["item_id", "step"])["claim_correct"].agg(["mean", "count"])
    share = g["mean"].unstack("step")
    count = g["count"].unstack("step").fillna(0.0)
    return (share.to_numpy(float), count.to_numpy(float), [int(s) for s in share.columns],
            [str(i) for i in share.index])


def _resample_counts(rng, n: int, n_boot: int) -> np.ndarray:
    """[n_boot, n]: how often each item is drawn in each resample (n draws with replacement)."""
    idx = rng.integers(0, n, size=(n_boot, n))
    counts = np.zeros((n_boot, n))
    np.add.at(counts, (np.repeat(np.arange(n_boot), n), idx.ravel()), 1.0)
    return counts


def _curves(values: np.ndarray, weights: np.ndarray | None, counts: np.ndarray) -> np.ndarray:
    """[B, steps]: the (weighted) mean curve of each resample given by ``counts`` [B, items]."""
    ok = ~np.isnan(values)
    w = ok.astype(float) if weights is None else np.where(ok, weights, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (counts @ (np.where(ok, values, 0.0) * w)) / (counts @ w)


def _falls(curves: np.ndarray, log: bool, floor: float) -> np.ndarray:
    """[B, steps - 1]: curve[s - 1] − curve[s] (in log space with ``log``)."""
    v = np.log(np.maximum(curves, floor)) if log else curves
    return v[:, :-1] - v[:, 1:]


def onset_test(per_item, *, steps: Sequence[int] | None = None, weights=None, log: bool = False,
               floor: float = 1e-4, n_boot: int = 1000, seed: int = 0, alpha: float = ONSET_ALPHA,
               min_margin: float = 0.0) -> dict:
    """The onset of a per-step curve, with a null: "no onset" unless one fall stands out.

    ``per_item``: [items, steps] (NaN where an item has no value at a step); ``steps``: the step
    label of each column (default 0..S-1); ``weights`` [items, steps]: the curve is the
    weighted mean (e.g. claims per item and step: the pooled claim accuracy), else the plain
    mean over the items with a value; ``log``: falls in log space (``log(max(curve, floor))``,
    for yields: a planted break takes the curve from listening to ~0, a gradual decay falls by
    similar ratios each step).

    **Rule** (item bootstrap).  The candidate k is the step after the largest fall of the mean
    curve (what :func:`auralens.organisms.onset` returned).  Items are resampled with
    replacement ``n_boot`` times and in each resample b the margin
    ``D_b = min(f_k, f_k − max_{j≠k} f_j)`` is computed (f_j: the fall into step j of that
    resample's curve): D_b > 0 exactly when the fall into k is a fall and the largest one.
    ``support`` = share of resamples with D_b > ``min_margin`` (0: any margin; a break, not the
    largest step of a smooth decay, needs more: ``auralens.organisms.validate`` asks log 2 of
    yields, the fall into k at least twice the ratio of any other, and 0.10 of claim accuracy);
    the onset is reported only when
    ``support > 1 − alpha / m`` (``threshold``; m = the number of falls, S − 1), equivalently
    when the one-sided (1 − alpha / m) percentile-bootstrap lower bound of D is above
    ``min_margin``; else
    ``onset`` is None ("no onset").  The alpha / m is a Bonferroni bound over the m steps that
    could have been the candidate: the candidate is picked on the same items, and with two
    near-equal falls the picked one's support is inflated (healthy micro, 200 cot test items,
    300 outer item resamples, no margin: ``support > 0.95`` declared a yield onset in 42 of
    them, ``> 1 − 0.05 / 7`` in 8).  At most one step can pass (the events D_j > 0 are disjoint).  A resample where
    some step has no item counts against the onset.

    Returns ``{"onset": k | None, "candidate": k, "support", "margin" (D of the full sample),
    "margin_ci_low" (the alpha quantile of D_b), "falls" (of the full sample, per step after),
    "steps", "n_items", "n_boot", "alpha", "threshold", "min_margin", "rule"}``; with fewer than two steps the onset is
    None and support NaN."""
    v = np.asarray(per_item, dtype=np.float64)
    if v.ndim != 2:
        raise ConfigError(f"onset_test: expected per-item values [items, steps], found shape {v.shape}")
    labels = list(range(v.shape[1])) if steps is None else [int(s) for s in steps]
    if len(labels) != v.shape[1]:
        raise ConfigError(f"onset_test: expected one step label per column ({v.shape[1]}), found {len(labels)}")
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    if w is not None and w.shape != v.shape:
        raise ConfigError(f"onset_test: expected weights of shape {v.shape}, found {w.shape}")
    if not 0 < alpha < 1 or n_boot < 1:
        raise ConfigError(f"onset_test: expected 0 < alpha < 1 and n_boot >= 1, found alpha={alpha}, n_boot={n_boot}")
    nan = float("nan")
    out: dict[str, Any] = {"onset": None, "candidate": None, "support": nan, "margin": nan, "margin_ci_low": nan, "falls": {},
           "steps": labels, "n_items": int((~np.isnan(v)).any(1).sum()) if v.size else 0, "n_boot": int(n_boot),
           "alpha": float(alpha), "threshold": nan, "min_margin": float(min_margin), "rule": ONSET_RULE}
    if v.shape[1] < 2 or v.shape[0] == 0:
        return out
    full = _falls(_curves(v, w, np.ones((1, len(v)))), log, floor)[0]
    if not np.isfinite(full).any():
        return out
    j = int(np.nanargmax(full))

    def margin(f):
        others = np.delete(f, j, axis=1)
        rest = np.max(others, axis=1) if others.shape[1] else np.full(len(f), -np.inf)
        d = np.minimum(f[:, j], f[:, j] - rest)
        return np.where(np.isnan(d) | np.isnan(f).any(1), -np.inf, d)  # a step no item holds: against

    boot = margin(_falls(_curves(v, w, _resample_counts(np.random.default_rng(seed), len(v), n_boot)), log, floor))
    support = float((boot > min_margin).mean())
    out.update(candidate=labels[j + 1], support=support, margin=float(margin(full[None])[0]),
               margin_ci_low=float(np.quantile(boot, alpha)),
               falls={labels[s + 1]: float(full[s]) for s in range(len(full))})
    threshold = 1 - alpha / len(full)
    out["threshold"] = threshold
    if support > threshold:
        out["onset"] = labels[j + 1]
    return out


def onset_stability(per_item, *, n_outer: int = 300, seed: int = 0, **kwargs) -> dict:
    """How often :func:`onset_test` says what it says on item-bootstrap resamples of the data:
    ``n_outer`` resamples of the items (with replacement), the whole test (its own inner
    bootstrap) run on each.  Returns ``{"outcomes": {"none" | k: count}, "n_outer",
    "share_none", "share": {"none" | k: share}}``."""
    v = np.asarray(per_item, dtype=np.float64)
    w = kwargs.pop("weights", None)
    w = None if w is None else np.asarray(w, dtype=np.float64)
    rng = np.random.default_rng([seed, 1])
    tally: dict[Any, int] = {}
    for o in range(n_outer):
        idx = rng.integers(0, len(v), size=len(v))
        r = onset_test(v[idx], weights=None if w is None else w[idx], seed=seed + 1 + o, **kwargs)
        key = "none" if r["onset"] is None else r["onset"]
        tally[key] = tally.get(key, 0) + 1
    return {"outcomes": tally, "n_outer": n_outer, "share_none": tally.get("none", 0) / n_outer,
            "share": {k: c / n_outer for k, c in tally.items()}}
