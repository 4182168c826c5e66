"""Accuracy of a model on items, per tier and answer format, with real audio and with silence."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from auralens.interp.generation import AUDIO_MODES, GenerationConfig, generate_batch, item_row, model_inputs
from auralens.interp.items import Item
from auralens.interp.runs import fill_rows
from auralens.interp.stats import bootstrap_mean_ci


def run_eval(
    lm,
    items: Sequence[Item],
    *,
    formats: Sequence[str] = ("direct", "cot", "structured"),
    audio_modes: Sequence[str] = AUDIO_MODES,
    cfg: GenerationConfig = GenerationConfig(),
    log=None,
    progress: bool = True,
):
    """Generate and score every (item, format, audio mode); rows go to ``log`` (a RowLog)
    after each batch, and rows already in it are skipped (resume)."""

    def rows_for(job, chunk):
        fmt, mode = job
        _, texts = generate_batch(lm, model_inputs(lm, chunk, fmt, mode), cfg)
        return [item_row(it, fmt, mode, t) for it, t in zip(chunk, texts)]

    return fill_rows([(f, a) for f in formats for a in audio_modes], items,
                     key=lambda it, job: f"{it.item_id}|{job[0]}|{job[1]}", rows_for=rows_for,
                     batch_size=cfg.batch_size, log=log, progress=progress, desc="eval", unit="item")


def summarize(df, by: Sequence[str] = ("audio", "format", "tier")):
    """Accuracy with bootstrap 95% CI per group."""
    import pandas as pd

    out = []
    for keys, g in df.groupby(list(by), sort=True):
        keys = keys if isinstance(keys, tuple) else (keys,)
        _, lo, hi = bootstrap_mean_ci(g["correct"].to_numpy(dtype=float))
        out.append({**dict(zip(by, keys)), "accuracy": float(g["correct"].mean()), "ci_low": float(lo), "ci_high": float(hi), "n": len(g)})
    return pd.DataFrame(out)


def summary_json(df) -> dict[str, Any]:
    """{audio: {format: {tier: accuracy, "all": accuracy}}} plus counts."""
    res: dict[str, Any] = {}
    for (mode, fmt), g in df.groupby(["audio", "format"]):
        d = {tier: round(float(t["correct"].mean()), 4) for tier, t in g.groupby("tier")}
        d["all"] = round(float(g["correct"].mean()), 4)
        res.setdefault(mode, {})[fmt] = d
    for mode, g in df.groupby("audio"):
        res.setdefault(mode, {})["all_formats"] = {
            **{tier: round(float(t["correct"].mean()), 4) for tier, t in g.groupby("tier")},
            "all": round(float(g["correct"].mean()), 4),
        }
    return res
