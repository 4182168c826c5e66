"""Perception decay: audio attention yield by reasoning step (attention view) and the accuracy
of perceptual claims by step (outcome view), with error attribution (perception vs reasoning).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from interp.errors import ConfigError
from interp.schemas import CLAIM_ACCURACY, DECAY, DECAY_SUMMARY
from interp.stats import bootstrap_mean_ci

DECAY_COLUMNS = DECAY.names  # the columns of decay.parquet (declared in interp.schemas)


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
):
    """The decay table: per head (group "head"), all heads ("all") and top-k heads ("topk"),
    mean yield per reasoning step (axis "step") and per token-position bin of ``token_bin``
    generated tokens (axis "token_bin"), with bootstrap 95% CIs across items.

    ``yields[i]``: [n_tokens, layers, heads] of item i; ``steps[i]``: [n_tokens] step ids."""
    if not yields:
        raise ConfigError("decay_table: expected at least one item, found none")
    L, H = np.asarray(yields[0]).shape[1:]
    rows = []
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
        for g, vals in groups.items():
            mean, lo, hi = bootstrap_mean_ci(vals, n_boot=n_boot, seed=seed)
            n = (~np.isnan(vals)).sum(0)
            for s in range(n_index):
                rows.append((g, axis, -1, -1, s, mean[s], lo[s], hi[s], int(n[s])))
        if per_head:
            mean, lo, hi = bootstrap_mean_ci(per_item, n_boot=n_boot, seed=seed)  # [S, L, H]
            n = (~np.isnan(per_item)).sum(0)
            for s in range(n_index):
                for layer in range(L):
                    for head in range(H):
                        rows.append(("head", axis, layer, head, s, mean[s, layer, head], lo[s, layer, head],
                                     hi[s, layer, head], int(n[s, layer, head])))
    return DECAY.frame(rows)


def decay_summary(table, *, axis: str = "step", min_n: int = 1):
    """Slope of mean yield per step (least squares) and last/first ratio, per group and head."""
    out = []
    t = table[(table["axis"] == axis) & (table["n"] >= min_n)]
    for (g, layer, head), d in t.groupby(["group", "layer", "head"], sort=False):
        d = d.sort_values("step")
        x, y = d["step"].to_numpy(float), d["mean_yield"].to_numpy(float)
        ok = ~np.isnan(y)
        x, y = x[ok], y[ok]
        slope = float(np.polyfit(x, y, 1)[0]) if len(x) >= 2 else float("nan")
        ratio = float(y[-1] / y[0]) if len(y) >= 2 and y[0] > 0 else float("nan")
        out.append({"group": g, "axis": axis, "layer": int(layer), "head": int(head), "slope": slope,
                    "last_first_ratio": ratio, "first": float(y[0]) if len(y) else float("nan"),
                    "last": float(y[-1]) if len(y) else float("nan"), "n_steps": int(len(y))})
    return DECAY_SUMMARY.frame(out)


# ------------------------------------------------------------------------ outcome view
def claim_rows(item_id: str, text: str, scene: dict) -> list[dict]:
    """Every perceptual claim in a generation, with its step and whether it is true."""
    from interp.cafe.formats import check_claims, parse_claims

    return [
        {"item_id": item_id, "step": c.step, "kind": c.kind, "sound": c.sound, "value": c.value, "claim_correct": ok}
        for c, ok in check_claims(parse_claims(text), scene)
    ]


def claim_accuracy_by_step(claims, *, n_boot: int = 1000, seed: int = 0):
    """Accuracy of perceptual claims made at step s, with item-bootstrap CIs."""
    if len(claims) == 0:
        return CLAIM_ACCURACY.frame()
    rows = []
    for s, d in claims.groupby("step"):
        per_item = d.groupby("item_id")["claim_correct"].mean().to_numpy(float)
        mean, lo, hi = bootstrap_mean_ci(per_item, n_boot=n_boot, seed=seed)
        rows.append({"step": int(s), "accuracy": float(d["claim_correct"].mean()), "ci_low": float(lo),
                     "ci_high": float(hi), "n_claims": len(d), "n_items": len(per_item)})
    return CLAIM_ACCURACY.frame(rows)


def attribute_errors(items_df, claims) -> "object":
    """For every answer: ``correct``, ``perception`` (some perceptual claim was wrong),
    ``reasoning`` (all claims right, answer wrong) or ``unverifiable`` (wrong, no claims)."""
    wrong_claim = set(claims.loc[~claims["claim_correct"], "item_id"]) if len(claims) else set()
    any_claim = set(claims["item_id"]) if len(claims) else set()

    def label(r):
        if r["correct"]:
            return "correct"
        if r["item_id"] in wrong_claim:
            return "perception"
        if r["item_id"] in any_claim:
            return "reasoning"
        return "unverifiable"

    out = items_df.copy()
    out["error_type"] = out.apply(label, axis=1)
    return out
