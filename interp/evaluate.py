"""Accuracy of a model on items, per tier and answer format, with real audio and with silence."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from interp.generation import AUDIO_MODES, GenerationConfig, batches, generate_batch, item_row, model_inputs
from interp.items import Item
from interp.stats import bootstrap_mean_ci


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
    import pandas as pd

    done = log.done() if log is not None else set()
    rows: list[dict[str, Any]] = []
    jobs = [(f, a) for f in formats for a in audio_modes]
    total = len(jobs) * len(items)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="eval", unit="item", initial=len(done))
    for fmt, mode in jobs:
        todo = [it for it in items if f"{it.item_id}|{fmt}|{mode}" not in done]
        for chunk in batches(todo, cfg.batch_size):
            batch = model_inputs(lm, chunk, fmt, mode)
            _, texts = generate_batch(lm, batch, cfg)
            new_rows = [item_row(it, fmt, mode, t) for it, t in zip(chunk, texts)]
            rows.extend(new_rows)
            if log is not None:
                log.extend(new_rows)
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return log.frame() if log is not None else pd.DataFrame(rows)


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
