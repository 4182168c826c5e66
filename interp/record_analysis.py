"""The record stage's analysis: from the per-item yields files of a record run folder, the
listening heads (:func:`rank_heads`, or a ranking made elsewhere: :func:`external_heads`), the decay
tables by reasoning step, the claims and their accuracy, each wrong answer's error type, and the
stage's summary (:func:`analyse_record`).  The run folder layout: :mod:`auralens.interp.record`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from safetensors import safe_open

from auralens.interp.decay import (
    attribute_errors,
    claim_accuracy_by_step,
    claim_accuracy_overall,
    claim_rows,
    decay_summary,
    decay_table,
    depends_on,
    error_shares,
    step_types_of,
)
from auralens.interp.errors import ConfigError
from auralens.interp.figures import decay_curves
from auralens.interp.listening import contrast_scores, correlation_scores, heads_table, top_k as pick_top
from auralens.interp.schemas import CLAIM_ACCURACY, CLAIMS, DECAY, DECAY_SUMMARY, HEADS, RECORD_ITEMS

__all__ = ["analyse_record", "claim_tables", "decay_curve", "decay_slope", "external_heads", "heads_selection",
           "load_step_types", "load_yields", "rank_heads", "record_summary"]


def heads_selection(measured_ids, ranked_ids) -> str:
    """How the heads were selected relative to the measured items."""
    if ranked_ids is None:
        return "unknown items (a heads table without its items)"
    shared = len(set(measured_ids) & set(ranked_ids))
    if shared == 0:
        return "calibration items (disjoint)"
    if set(measured_ids) <= set(ranked_ids):
        return "same items (biased)"
    return f"overlapping items (biased: {shared} of {len(set(measured_ids))} measured items ranked the heads)"


def load_yields(run, df) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    """(yields per item, steps per item, last-prompt yields [items, L, H], silence [items, L, H])."""
    ys, ss, last, sil = [], [], [], []
    for idx in df["item_index"]:
        t = run.read_tensors(f"yields/{int(idx):05d}.safetensors", framework="np")
        ys.append(t["yield"])
        ss.append(t["steps"])
        last.append(t["yield"][0])
        sil.append(t["silence_last"])
    return ys, ss, np.stack(last), np.stack(sil)


def load_step_types(run, df, steps) -> list[np.ndarray]:
    """Per item, per token: the type of its step (:func:`auralens.interp.decay.step_types_of`)."""

    out = []
    for idx, s in zip(df["item_index"], steps):
        with safe_open(str(run.file(f"yields/{int(idx):05d}.safetensors")), "np") as f:
            text = (f.metadata() or {}).get("text", "")
        out.append(step_types_of(text, s))
    return out


def external_heads(heads_from: dict[str, Any], shape: tuple[int, int]):
    """The heads table of ``heads_from`` (:func:`auralens.interp.record.read_heads_source`)
    checked against a model of ``shape`` (layers, heads), with exactly the columns of
    :data:`~auralens.interp.schemas.HEADS` (NaN where it lacks one), sorted by rank."""
    L, H = shape
    ext = heads_from["heads"]
    if len(ext) and (int(ext["layer"].max()) >= L or int(ext["head"].max()) >= H):
        raise ConfigError(f"heads_from {heads_from.get('path')!r}: expected heads of a {L}x{H} model, found layer "
                          f"{int(ext['layer'].max())} / head {int(ext['head'].max())}")
    heads = ext[[c for c in HEADS.names if c in ext.columns]].copy()
    for c in HEADS.names:
        if c not in heads.columns:
            heads[c] = np.nan
    return heads[list(HEADS.names)].sort_values("rank").reset_index(drop=True)


def rank_heads(df, last: np.ndarray, sil: np.ndarray, heads_from: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
    """``(heads table, provenance)``: the heads ranked on these items (listening signals of the
    last-prompt yields ``last`` against correctness and the silence yields ``sil``), or taken from
    ``heads_from``; the provenance (the manifest's ``heads``) says which items ranked them."""
    # ranked here even with heads_from: the same checks of the yields in both cases
    # (correlation undefined (NaN) when every answer is right or every answer is wrong: the column stays)
    corr = correlation_scores(last, df["correct"].to_numpy())
    contrast, dz = contrast_scores(last, sil)
    heads = heads_table(correlation=corr, contrast=contrast, contrast_dz=dz, mean_yield=last.mean(0))
    measured = [str(i) for i in df["item_id"]]
    if heads_from is None:
        return heads, {"heads_selection": "same items (biased)", "heads_source": "same items",
                       "heads_ranked_on": "the measured items", "heads_ranked_on_items": len(measured)}
    heads = external_heads(heads_from, last.shape[1:])
    ids = heads_from.get("item_ids")
    return heads, {"heads_selection": heads_selection(measured, ids),
                   "heads_source": heads_from.get("source", "same items"),
                   "heads_ranked_on": heads_from.get("data") or "the measured items",
                   "heads_ranked_on_items": len(ids) if ids is not None else None}


def claim_tables(run, df, items, *, n_boot: int, seed: int):
    """Write ``claims.parquet``, ``claim_accuracy.parquet`` and ``items.parquet`` (with each wrong
    answer's error type); returns ``(claims, claim accuracy by step, items)``."""
    by_id = {it.item_id: it for it in items}
    claims = []
    for r in df.itertuples():
        it = by_id.get(r.item_id)
        if it is not None and it.scene:
            claims += claim_rows(r.item_id, r.prediction, it.scene)
    claims_df = CLAIMS.frame(claims)
    CLAIMS.write(run, claims_df)
    claim_acc = claim_accuracy_by_step(claims_df, n_boot=n_boot, seed=seed)
    CLAIM_ACCURACY.write(run, claim_acc)
    depends = {i: depends_on(by_id[i]) for i in df["item_id"] if i in by_id}
    df = attribute_errors(df, claims_df, depends)
    RECORD_ITEMS.write(run, df)
    return claims_df, claim_acc, df


def decay_curve(decay, group: str) -> list[dict[str, Any]]:
    """The decay table's by-step curve of ``group`` as JSON rows (rounded to 4 places)."""
    d = decay[(decay.group == group) & (decay.axis == "step")].sort_values("step")
    return [{"step": int(r.step), "mean_yield": round(float(r.mean_yield), 4), "ci_low": round(float(r.ci_low), 4),
             "ci_high": round(float(r.ci_high), 4), "n": int(r.n)} for r in d.itertuples()]


def decay_slope(summ, group: str) -> dict[str, Any]:
    """The decay summary's by-step slope and last/first ratio of ``group`` (with CIs, rounded to
    5 places); empty when the summary has no such row."""
    s = summ[(summ.group == group) & (summ.axis == "step")]
    if not len(s):
        return {}
    r = s.iloc[0]
    out = {"slope": float(r.slope), "slope_ci": [float(r.slope_ci_low), float(r.slope_ci_high)],
           "last_first_ratio": float(r.last_first_ratio),
           "ratio_ci": [float(r.ratio_ci_low), float(r.ratio_ci_high)], "n_steps": int(r.n_steps),
           "n_items": int(r.n_items)}
    return {k: ([round(x, 5) for x in v] if isinstance(v, list) else round(v, 5) if isinstance(v, float) else v)
            for k, v in out.items()}


def record_summary(run, df, *, decay, summ, top, ranked_by: dict[str, Any], claims_df, claim_acc,
                   n_boot: int, seed: int) -> dict[str, Any]:
    """The record stage's result: accuracy, the heads' provenance and top heads, the decay curves
    and slopes (all, top-k, by step type, items reaching the last step), claim accuracy and the
    error shares."""
    reach = decay[(decay.group == "all:reach_last") & (decay.axis == "step")]
    wrong = int((~df["correct"].astype(bool)).sum())
    return {
        "run": str(run.path), "n": len(df), "accuracy": round(float(df["correct"].mean()), 4),
        **ranked_by,
        "top_heads": [list(h) for h in top], "topk_curve": decay_curve(decay, "topk"),
        "all_curve": decay_curve(decay, "all"),
        "topk_decay": decay_slope(summ, "topk"), "all_decay": decay_slope(summ, "all"),
        "decay_by_step_type": {g: decay_slope(summ, g)
                               for g in ("all:claim", "all:reasoning", "topk:claim", "topk:reasoning")},
        "decay_reach_last": {"s_max": int(reach.step.max()) if len(reach) else None,
                             "all": decay_slope(summ, "all:reach_last"), "topk": decay_slope(summ, "topk:reach_last")},
        "claim_accuracy": {k: (round(v, 4) if isinstance(v, float) else v)
                           for k, v in claim_accuracy_overall(claims_df, n_boot=n_boot, seed=seed).items()},
        "claim_accuracy_by_step": claim_acc.round(4).to_dict("records"),
        "error_shares": error_shares(df), "error_shares_of": "wrong answers", "n_wrong": wrong,
        "perception_error_rule": "a wrong claim about a fact the question depends on (auralens.interp.decay.depends_on)",
    }


def analyse_record(run, items, *, top_k: int = 8, n_boot: int = 1000, seed: int = 0,
                   heads_from: dict[str, Any] | None = None) -> dict[str, Any]:
    """Heads, decay and outcome tables from the per-item files already in ``run``.

    ``heads_from`` (:func:`auralens.interp.record.read_heads_source`, plus ``source``): rank the
    heads there (e.g. on a calibration split) instead of on these items; the summary's
    ``heads_selection`` says which items ranked them (``"same items (biased)"`` without it)."""
    df = run.read_table("items.parquet").sort_values("item_index").reset_index(drop=True)
    ys, ss, last, sil = load_yields(run, df)
    heads, ranked_by = rank_heads(df, last, sil, heads_from)
    HEADS.write(run, heads)
    run.update_manifest(heads=ranked_by)
    top = pick_top(heads, min(top_k, len(heads)))
    types = load_step_types(run, df, ss)
    decay, per_item = decay_table(ys, ss, top_heads=top, n_boot=n_boot, seed=seed, step_types=types,
                                  return_per_item=True)
    DECAY.write(run, decay)
    summ = decay_summary(decay, per_item=per_item, n_boot=n_boot, seed=seed)
    DECAY_SUMMARY.write(run, summ)
    claims_df, claim_acc, df = claim_tables(run, df, items, n_boot=n_boot, seed=seed)
    run.write_figure("decay.html", decay_curves(decay))
    return record_summary(run, df, decay=decay, summ=summ, top=top, ranked_by=ranked_by, claims_df=claims_df,
                          claim_acc=claim_acc, n_boot=n_boot, seed=seed)
