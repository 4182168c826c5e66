"""Figures of the steer and compare stages: the α sweep (``steering.parquet``) and steering vs
fine-tuning (``compare.parquet``).

Pure functions of the tables (:mod:`interp.schemas`); none reads files.  The steer stage writes
``steering_accuracy.html`` / ``steering_delta.html`` with :func:`steering_sweep`, the compare
stage ``compare.html`` with :func:`compare_figure`; the dashboard, the offline report and the
notebooks draw the same functions.  A missing table gives an empty-state figure.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from interp.plotting import LAYOUT, PALETTE, empty_figure, graph_objects, line_with_band
from interp.schemas import SYSTEMS

__all__ = ["SYSTEM_COLOURS", "compare_bars", "compare_figure", "compare_table", "steering_sweep"]

#: one colour per measured system of ``auralens compare``, the same in every figure
SYSTEM_COLOURS = dict(zip(SYSTEMS, (PALETTE[0], PALETTE[2], PALETTE[3], PALETTE[4])))
_REPORTED_COLOUR = "#888888"


# ---------------------------------------------------------------------------- steering
def steering_sweep(steer, *, category: str | None = "all", y: str = "accuracy", vectors: Sequence[str] | None = None,
                   layers: Sequence[int] | None = None, title: str | None = None):
    """Accuracy (or gain ``delta``) against the steering strength α, one curve per
    (vector, method, layer, positions[, format]), with 95% CIs."""
    title = title or ("Steering: accuracy vs α" if y == "accuracy" else "Steering: gain over α=0 vs α")
    if steer is None or len(steer) == 0:
        return empty_figure(title, "no steering table")
    go = graph_objects()
    d = steer
    if category is not None and "category" in d:
        d = d[d["category"].astype(str) == str(category)]
    if vectors is not None:
        d = d[d["vector"].isin(vectors)]
    if layers is not None:
        d = d[d["layer"].isin(layers)]
    if d.empty:
        return empty_figure(title, f"no steering rows for category={category}")
    lo, hi = ("ci_low", "ci_high") if y == "accuracy" else ("delta_ci_low", "delta_ci_high")
    fig = go.Figure()
    keys = [c for c in ("vector", "method", "layer", "positions", "format") if c in d]
    if "format" in keys and d["format"].nunique() <= 1:
        keys.remove("format")
    for k, (key, g) in enumerate(d.groupby(keys, sort=True, dropna=False)):
        g = g.sort_values("alpha")
        name = " · ".join(f"L{v}" if c == "layer" else str(v) for c, v in zip(keys, key))
        line_with_band(fig, g["alpha"], g[y], g[lo] if lo in g else None, g[hi] if hi in g else None, name=name,
                       colour=PALETTE[k % len(PALETTE)], hover=f"{name}<br>α=%{{x}}: %{{y:.3f}}<extra></extra>")
    if y == "delta":
        fig.add_hline(y=0, line=dict(color="#999", width=1))
    fig.update_layout(title=title + (f" (category: {category})" if category is not None else ""), xaxis_title="α",
                      yaxis_title="accuracy" if y == "accuracy" else "Δ accuracy vs α=0",
                      legend=dict(orientation="h", y=-0.25), **LAYOUT)
    return fig


# ----------------------------------------------------------------------------- compare
def compare_table(compare):
    """The compare table, one row per (metric, group, system), value with its CI as text;
    measured rows first, then the reported ones."""
    import pandas as pd

    if compare is None or len(compare) == 0:
        return pd.DataFrame(columns=["metric", "group", "system", "source", "value", "95% CI", "n", "note"])

    def ci(r):
        if pd.isna(r["ci_low"]) or pd.isna(r["ci_high"]):
            return ""
        return f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"

    out = compare.copy()
    out["95% CI"] = out.apply(ci, axis=1)
    out["value"] = out["value"].map(lambda v: f"{v:.3f}" if pd.notna(v) else "")
    cols = [c for c in ("metric", "group", "system", "source", "value", "95% CI", "n", "note") if c in out]
    order = {s: i for i, s in enumerate(SYSTEMS)}
    out["_o"] = out["system"].map(lambda s: order.get(s, 9))
    out["_m"] = (out["source"] != "measured").astype(int) if "source" in out else 0
    return out.sort_values(["_m", "metric", "group", "_o", "system"])[cols].reset_index(drop=True)


def _system_bars(fig, s, *, x, name: str, colour: str, hatched=None, showlegend: bool = True,
                 legendgroup: str | None = None, row=None, col=None) -> None:
    """One system's bars (``value`` at ``x``) with their 95% CI whiskers where known."""
    v = s["value"].to_numpy(float)
    kw = {} if row is None else {"row": row, "col": col}
    fig.add_trace(graph_objects().Bar(
        x=list(x), y=v, name=name, marker_color=colour, legendgroup=legendgroup or name, showlegend=showlegend,
        marker_pattern_shape=None if hatched is None else ["/" if h else "" for h in hatched],
        error_y=dict(type="data", symmetric=False, array=np.nan_to_num(s["ci_high"].to_numpy(float) - v),
                     arrayminus=np.nan_to_num(v - s["ci_low"].to_numpy(float))),
        hovertemplate=f"{name}<br>%{{x}}: %{{y:.3f}}<extra></extra>"), **kw)


def compare_bars(compare, *, metric: str | None = None, title: str | None = None):
    """One bar per system and group for a metric; reported (not measured) rows hatched."""
    if compare is None or len(compare) == 0:
        return empty_figure(title or "Steering vs fine-tuning", "no compare table")
    metric = metric or str(compare["metric"].iloc[0])
    d = compare[compare["metric"] == metric]
    fig = graph_objects().Figure()
    for k, sys_ in enumerate(dict.fromkeys(d["system"])):
        s = d[d["system"] == sys_]
        reported = (s["source"] == "reported").to_numpy() if "source" in s else np.zeros(len(s), bool)
        _system_bars(fig, s, x=s["group"].astype(str), name=str(sys_), hatched=reported,
                     colour=SYSTEM_COLOURS.get(sys_, PALETTE[k % len(PALETTE)]))
    fig.update_layout(title=title or f"Steering vs fine-tuning: {metric} (hatched: reported, not measured)",
                      barmode="group", yaxis_title=metric, **LAYOUT)
    return fig


def compare_figure(table):
    """Six panels of ``compare.parquet``: accuracy by tier, claim accuracy by step, error shares,
    specialist yield by step, training compute, and the papers' reported numbers (labelled as such)."""
    go = graph_objects()
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=3, subplot_titles=(
        "accuracy by tier (95% CI)", "perceptual-claim accuracy by reasoning step", "share of wrong answers by cause",
        "specialist heads' audio yield by step", "training compute (FLOPs)", "reported in the papers (not measured)"))
    m = table[table.source == "measured"]
    formats = sorted({g.split("/", 1)[0] for g in m.group if "/" in g})
    for system, colour in SYSTEM_COLOURS.items():
        s = m[m.system == system]
        if s.empty:
            continue
        for fi, fmt in enumerate(formats):
            name = system if len(formats) == 1 else f"{system} · {fmt}"

            def pick(metric, prefix):
                d = s[(s.metric == metric) & s.group.str.startswith(f"{fmt}/{prefix}")]
                return d.assign(x=d.group.str.split("/", n=1).str[1].str.replace(prefix, "", regex=False))

            acc = pick("accuracy", "")
            acc = acc[acc.x.eq("all") | acc.x.str.startswith("tier=")]
            _system_bars(fig, acc, x=acc.x, name=name, colour=colour, showlegend=fi == 0, row=1, col=1)
            for metric, row, col in (("claim_accuracy", 1, 2), ("specialist_yield", 2, 1)):
                d = pick(metric, "step=")
                d = d[d.x != "all"]
                if len(d):
                    line_with_band(fig, d.x.astype(int), d.value, d.ci_low, d.ci_high, name=name, colour=colour,
                                   showlegend=False, row=row, col=col)
            err = pick("error_share", "")
            if len(err):
                _system_bars(fig, err, x=err.x, name=name, colour=colour, showlegend=False, row=1, col=3)
        cost = s[s.metric.isin(["training_flops", "steering_fit_flops"])].fillna({"value": 0.0})
        if len(cost):
            fig.add_trace(go.Bar(x=cost.metric, y=cost.value.clip(lower=1.0), name=system, marker_color=colour,
                                 legendgroup=system if len(formats) == 1 else None, showlegend=False), row=2, col=2)
    rep = table[table.source == "reported"]
    fig.add_trace(go.Bar(x=[f"{s} · {g}" for s, g in zip(rep.system, rep.group)], y=rep.value,
                         marker_color=_REPORTED_COLOUR, name="reported (papers)", text=[f"{v:.3f}" for v in rep.value],
                         hovertext=list(rep.note)), row=2, col=3)
    fig.update_yaxes(type="log", row=2, col=2)
    fig.update_layout(title="Steering vs MPAR²-style fine-tuning on the same items", barmode="group", height=850,
                      **LAYOUT)
    return fig
