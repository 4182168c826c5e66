"""The numbers of one ``auralens compare`` cell (:mod:`auralens.compare`): rows of
:data:`auralens.interp.schemas.COMPARE` for accuracy and paired gains, claims, error shares, the
specialist heads' yield, inference cost; and the summary of a grid's table."""

from __future__ import annotations

from typing import Any

import numpy as np

from auralens.interp.decay import decay_summary, decay_table
from auralens.interp.record_analysis import load_yields
from auralens.interp.stats import accuracy_ci, bootstrap_mean_ci, paired_diff_ci
from auralens.organisms import claim_gap_by_item, class_claim_steps
from auralens.organisms.validate import claim_onset, onset_text

__all__ = ["ERROR_TYPES", "GROUP_KEYS", "Rows", "add_accuracy", "add_claims", "add_decay", "add_errors", "add_gain",
           "add_inference_cost", "finite", "groupings", "mean_ci", "summarize"]

#: the item columns whose values split the accuracy rows (:func:`groupings`)
GROUP_KEYS = ("tier", "category", "task", "difficulty", "sub_category")
#: the error types of the wrong answers (:func:`auralens.interp.decay.attribute_errors`)
ERROR_TYPES = ("perception", "reasoning", "unverifiable")


class Rows(list):
    """Rows of one (organism, system, condition, format) cell."""

    def __init__(self, organism: str, system: str, condition: str, fmt: str):
        super().__init__()
        self.key = {"organism": organism, "system": system, "condition": condition, "format": fmt}

    def add(self, metric, group, value, lo=np.nan, hi=np.nan, n=0, note="") -> None:
        """One measured row: ``metric`` on ``group``, its value, CI, count and note."""
        self.append({**self.key, "metric": metric, "group": group, "value": float(value), "ci_low": float(lo),
                     "ci_high": float(hi), "n": int(n), "source": "measured", "note": note})


def mean_ci(values, *, n_boot: int, seed: int, bounds: tuple[float, float] | None = (0.0, 1.0)
            ) -> tuple[float, float, float]:
    """Mean of per-item ``values`` and its 95% CI; NaNs for none.  ``bounds=(0, 1)`` (right/wrong
    items or an item's share): :func:`auralens.interp.stats.accuracy_ci` (Wilson for right/wrong
    items, else the BCa item bootstrap); other bounds (a paired difference: (-1, 1); counts:
    None): :func:`auralens.interp.stats.bootstrap_mean_ci`, BCa, those bounds for all-equal data."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return np.nan, np.nan, np.nan
    if bounds == (0.0, 1.0):
        return accuracy_ci(v, n_boot=n_boot, seed=seed)
    m, lo, hi = bootstrap_mean_ci(v, n_boot=n_boot, seed=seed, bounds=bounds)
    return float(m), float(lo), float(hi)


def groupings(df) -> list[str]:
    """The grouping columns that split the items, skipping one that repeats an earlier split."""
    keys, seen = [], []
    for k in GROUP_KEYS:
        if k not in df or df[k].fillna("").astype(str).eq("").all():
            continue
        part = tuple(df[k].fillna("").astype(str).factorize()[0])
        if part in seen or df[k].nunique() < 2 and k != "tier":
            continue
        seen.append(part)
        keys.append(k)
    return keys


def add_accuracy(rows: Rows, df, *, n_boot, seed) -> None:
    """``accuracy`` over all items and by each grouping that splits them (:func:`groupings`)."""
    m, lo, hi = mean_ci(df["correct"], n_boot=n_boot, seed=seed)
    rows.add("accuracy", "all", m, lo, hi, len(df))
    for key in groupings(df):
        for val, g in df.groupby(df[key].fillna("").astype(str), sort=True):
            m, lo, hi = mean_ci(g["correct"], n_boot=n_boot, seed=seed)
            rows.add("accuracy", f"{key}={val}", m, lo, hi, len(g))


def add_gain(rows: Rows, metric, df, ref, ref_name, *, n_boot, seed) -> None:
    """``metric``: accuracy of ``df`` − ``ref`` on their common items, paired bootstrap CI."""
    a = df.set_index("item_id")["correct"].astype(float)
    b = ref.set_index("item_id")["correct"].astype(float)
    common = a.index.intersection(b.index)
    if len(common):
        m, lo, hi = paired_diff_ci(a[common].to_numpy(), b[common].to_numpy(), n_boot=n_boot, seed=seed)
    else:
        m = lo = hi = np.nan
    rows.add(metric, "all", m, lo, hi, len(common), note=f"paired BCa bootstrap over items vs {ref_name}")


def add_claims(rows: Rows, run, *, n_boot, seed, min_claims: int, onset_run=None) -> None:
    """``claim_accuracy`` (all, by step), ``claim_onset`` and ``claim_gap`` of a record run's claims.

    The onset is the onset test with a null (:func:`auralens.organisms.validate.claim_onset`) on
    ``onset_run``'s claims (other items: the model's calibration run), else on these items
    (biased, said in the note); ``claim_onset`` is -1 when the test says "no onset", and then
    there is no ``claim_gap``.  The gap (class-claim accuracy before the onset − from it on,
    paired by item) is measured on these items."""
    claims = run.read_table("claims.parquet")
    if not len(claims):
        return
    per_item = claims.groupby("item_id")["claim_correct"].mean().to_numpy(float)
    _, lo, hi = mean_ci(per_item, n_boot=n_boot, seed=seed)
    rows.add("claim_accuracy", "all", claims["claim_correct"].mean(), lo, hi, len(claims),
             note="perceptual claims checked against the scene; value pooled over claims, CI over items")
    for r in run.read_table("claim_accuracy.parquet").itertuples():
        rows.add("claim_accuracy", f"step={int(r.step)}", r.accuracy, r.ci_low, r.ci_high, r.n_claims,
                 note="claims made at this reasoning step")
    # onset and gap on class claims (auralens.organisms: the same measurement as the validator's)
    cls, _ = class_claim_steps(claims, min_claims)
    src = claims if onset_run is None else onset_run.read_table("claims.parquet")
    where = ("the reported items (no calibration run: biased)" if onset_run is None
             else "calibration items (the model's heads run), not the reported ones")
    test = claim_onset(src, min_claims=min_claims, n_boot=n_boot, seed=seed)
    if test["onset"] is None:
        rows.add("claim_onset", "all", -1, n=test["n_items"],
                 note=f"onset test on {where}: no onset, {onset_text(test)}")
        return
    k = int(test["onset"])
    rows.add("claim_onset", "all", k, n=test["n_items"], note=f"onset test on {where}: {onset_text(test)}")
    diffs = claim_gap_by_item(cls, k)
    m, lo, hi = mean_ci(diffs.to_numpy(float), n_boot=n_boot, seed=seed, bounds=(-1.0, 1.0))  # paired by item
    rows.add("claim_gap", "all", m, lo, hi, len(diffs),
             note=f"class-claim accuracy before step {k} (chosen on {'the same' if onset_run is None else 'other'} "
                  "items) - from it on, paired by item")


def add_errors(rows: Rows, df, *, n_boot, seed) -> None:
    """``error_share`` of each error type among the wrong answers."""
    wrong = df[~df["correct"].astype(bool)]
    for et in ERROR_TYPES:
        ind = (wrong["error_type"] == et).to_numpy(float)
        m, lo, hi = mean_ci(ind, n_boot=n_boot, seed=seed) if len(ind) else (np.nan,) * 3
        rows.add("error_share", et, m, lo, hi, len(wrong), note="share of the wrong answers (auralens.interp.decay.attribute_errors)")


def add_decay(rows: Rows, run, df, top, *, n_boot, seed) -> None:
    """``specialist_yield`` by step of the heads ``top`` and the yield slopes (specialists, all heads)."""
    ys, ss, _, _ = load_yields(run, df)
    table = decay_table(ys, ss, top_heads=top, n_boot=n_boot, seed=seed, per_head=False)
    summ = decay_summary(table)
    heads = ", ".join(f"{L}:{h}" for L, h in top)
    for r in table[(table.group == "topk") & (table.axis == "step")].sort_values("step").itertuples():
        rows.add("specialist_yield", f"step={int(r.step)}", r.mean_yield, r.ci_low, r.ci_high, r.n,
                 note=f"mean audio yield of heads {heads} (ranked on calibration items)")
    for group, metric in (("topk", "yield_slope_specialists"), ("all", "yield_slope_all_heads")):
        s = summ[summ.group == group]
        if len(s):
            rows.add(metric, "all", s.slope.iloc[0], n=int(s.n_steps.iloc[0]),
                     note="least-squares slope of mean yield per reasoning step; < 0 = perception decay")


def add_inference_cost(rows: Rows, run, df, pause_id: int | None, extra_forwards: int, *, n_boot, seed) -> None:
    """``generated_tokens``, ``pauses_per_item`` (tokens ``pause_id`` in the generated ids) and
    ``forwards_per_item`` (generated tokens + ``extra_forwards``)."""
    toks = df["n_tokens"].to_numpy(float)
    m, lo, hi = mean_ci(toks, n_boot=n_boot, seed=seed, bounds=None)
    rows.add("generated_tokens", "all", m, lo, hi, len(df), note="generated tokens per item (end-of-turn included)")
    pauses = np.zeros(len(df))
    if pause_id is not None:
        for i, idx in enumerate(df["item_index"]):
            ids = run.read_tensors(f"yields/{int(idx):05d}.safetensors", framework="np")["token_ids"]
            pauses[i] = float((ids == pause_id).sum())
    rows.add("pauses_per_item", "all", pauses.mean(), n=len(df), note="PAUSE tokens per answer (HyPeR's rule)")
    rows.add("forwards_per_item", "all", toks.mean() + extra_forwards, n=len(df),
             note="one forward per generated token" + (
                 "" if not extra_forwards else ", +1 for s(x) (its silence pass; the real pass is the generation's prefill)"
                 if extra_forwards == 1 else f", +{extra_forwards} for s(x) (real and silence passes)"))


def summarize(table, systems, conditions) -> dict[str, Any]:
    """Per system and condition, the headline numbers of ``table`` (value, CI, n; ``None`` where missing)."""

    def get(s, c, metric, group="all"):
        r = table[(table.system == s) & (table.condition == c) & (table.metric == metric) & (table.group == group)]
        if not len(r):
            return None
        r = r.iloc[0]
        return {"value": round(float(r.value), 4), "ci": [round(float(r.ci_low), 4), round(float(r.ci_high), 4)],
                "n": int(r.n)}

    out: dict[str, Any] = {}
    for s in systems:
        out[s] = {c: {"accuracy": get(s, c, "accuracy"), "gain_vs_base": get(s, c, "gain_vs_base"),
                      "gain_vs_unsteered": get(s, c, "gain_vs_unsteered"),
                      "claim_accuracy": get(s, c, "claim_accuracy"), "claim_onset": get(s, c, "claim_onset"),
                      "claim_gap": get(s, c, "claim_gap"),
                      "error_shares": {et: (get(s, c, "error_share", et) or {}).get("value") for et in ERROR_TYPES},
                      "generated_tokens": get(s, c, "generated_tokens"),
                      "forwards_per_item": get(s, c, "forwards_per_item"),
                      "pauses_per_item": get(s, c, "pauses_per_item")}
                  for c in conditions}
    return out


def finite(obj):
    """NaN -> None, recursively (summary.json is strict JSON)."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj

