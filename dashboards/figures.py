"""Plotly figure builders: pure functions of DataFrames and arrays, shared by the Streamlit app
and the offline HTML report.  None of them reads files or touches Streamlit.

Trace names are stable so tests can find them: a curve is named after its series ("all heads",
"specialist heads", an attribute, a steering vector...), its confidence band is the same name
followed by " 95% CI".
"""

from __future__ import annotations

import html as _html
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "accuracy_bars",
    "claim_accuracy_curve",
    "compare_bars",
    "compare_table",
    "decay_curves",
    "error_types_bar",
    "heads_score_heatmap",
    "item_step_curve",
    "probe_by_layer",
    "probe_by_step",
    "step_label",
    "steering_sweep",
    "time_bins_by_step",
    "time_bins_strip",
    "token_html",
    "token_yield_line",
    "yield_heatmap",
]

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
_LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=50, b=50))


def _go():
    import plotly.graph_objects as go

    return go


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _empty(title: str, message: str):
    go = _go()
    fig = go.Figure()
    fig.update_layout(title=title, **_LAYOUT)
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def _line_with_band(fig, x, y, lo, hi, *, name: str, colour: str, dash: str | None = None, row=None, col=None,
                    showlegend: bool = True, hover: str | None = None, legendgroup: str | None = None) -> None:
    go = _go()
    x, y = np.asarray(x, float), np.asarray(y, float)
    kw = {} if row is None else {"row": row, "col": col}
    group = legendgroup or name
    if lo is not None and hi is not None:
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        ok = ~(np.isnan(lo) | np.isnan(hi))
        if ok.any():
            fig.add_trace(go.Scatter(
                x=np.concatenate([x[ok], x[ok][::-1]]), y=np.concatenate([hi[ok], lo[ok][::-1]]), mode="lines", fill="toself",
                fillcolor=_rgba(colour, 0.18), line=dict(width=0), hoverinfo="skip", name=f"{name} 95% CI",
                showlegend=False, legendgroup=group), **kw)
    fig.add_trace(go.Scatter(
        x=x, y=y, mode="lines+markers", name=name, line=dict(color=colour, dash=dash), legendgroup=group,
        showlegend=showlegend, hovertemplate=hover or f"{name}<br>%{{x}}: %{{y:.3f}}<extra></extra>"), **kw)


# ----------------------------------------------------------------------------------- eval
def accuracy_bars(acc, *, title: str = "Accuracy by tier and answer format"):
    """``accuracy.parquet``: bars per tier, one colour per format, one panel per audio mode."""
    go = _go()
    from plotly.subplots import make_subplots

    if acc is None or len(acc) == 0:
        return _empty(title, "no accuracy table")
    modes = [m for m in ("real", "silence") if m in set(acc["audio"])] + sorted(set(acc["audio"]) - {"real", "silence"})
    fig = make_subplots(rows=1, cols=len(modes), shared_yaxes=True,
                        subplot_titles=[f"audio: {m}" for m in modes])
    formats = list(dict.fromkeys(acc["format"]))
    for j, mode in enumerate(modes, start=1):
        for k, fmt in enumerate(formats):
            d = acc[(acc["audio"] == mode) & (acc["format"] == fmt)]
            if d.empty:
                continue
            y = d["accuracy"].to_numpy(float)
            fig.add_trace(go.Bar(
                x=d["tier"].astype(str), y=y, name=str(fmt), marker_color=PALETTE[k % len(PALETTE)], legendgroup=str(fmt),
                showlegend=j == 1, error_y=dict(type="data", symmetric=False,
                                                array=d["ci_high"].to_numpy(float) - y, arrayminus=y - d["ci_low"].to_numpy(float)),
                customdata=d["n"].to_numpy(), hovertemplate=f"{fmt} · %{{x}}<br>accuracy %{{y:.3f}} (n=%{{customdata}})<extra></extra>",
            ), row=1, col=j)
    fig.update_layout(title=title, barmode="group", yaxis_title="accuracy", yaxis_range=[0, 1.05], **_LAYOUT)
    return fig


def error_types_bar(items, *, title: str = "Where answers fail (CAFE-style attribution)"):
    """Counts of ``error_type`` (correct / perception / reasoning / unverifiable) per format."""
    go = _go()
    if items is None or "error_type" not in getattr(items, "columns", []):
        return _empty(title, "no error attribution in this run")
    order = ["correct", "perception", "reasoning", "unverifiable"]
    colours = {"correct": "#2ca02c", "perception": "#d62728", "reasoning": "#ff7f0e", "unverifiable": "#7f7f7f"}
    by = "format" if "format" in items.columns else None
    groups = sorted(items[by].astype(str).unique()) if by else ["all"]
    fig = go.Figure()
    for et in order + sorted(set(items["error_type"]) - set(order)):
        is_et = items["error_type"] == et
        counts = [int((is_et & (items[by].astype(str) == g)).sum()) if by else int(is_et.sum()) for g in groups]
        fig.add_trace(go.Bar(x=groups, y=counts, name=et, marker_color=colours.get(et, "#17becf")))
    fig.update_layout(title=title, barmode="stack", yaxis_title="items", **_LAYOUT)
    return fig


# ---------------------------------------------------------------------------- yields
def yield_heatmap(values, *, title: str = "Audio attention yield", highlight: Sequence[tuple[int, int]] = (),
                  zmax: float | None = None):
    """[layers, heads] heatmap; ``highlight`` marks the specialist heads with a ring."""
    go = _go()
    z = np.asarray(values, float)
    L, H = z.shape
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(H)), y=list(range(L)), colorscale="Viridis", zmin=0, zmax=zmax if zmax is not None else float(np.nanmax(z) or 1),
        colorbar=dict(title="yield"), hovertemplate="layer %{y}, head %{x}<br>yield %{z:.4f}<extra></extra>", name="yield"))
    if highlight:
        hl = [(a, b) for a, b in highlight if a < L and b < H]
        fig.add_trace(go.Scatter(
            x=[b for _, b in hl], y=[a for a, _ in hl], mode="markers", name="specialist heads",
            marker=dict(symbol="circle-open", size=14, color="white", line=dict(width=2)),
            hovertemplate="specialist: layer %{y}, head %{x}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="head", yaxis_title="layer", **_LAYOUT)
    fig.update_xaxes(dtick=1 if H <= 40 else None)
    fig.update_yaxes(dtick=1 if L <= 40 else None)
    return fig


def heads_score_heatmap(heads, column: str = "rank", *, title: str | None = None, top: int = 0):
    """``heads.parquet`` as a [layers, heads] map of one score (``rank``: 1 = strongest listener)."""
    if heads is None or column not in getattr(heads, "columns", []):
        return _empty(title or f"heads: {column}", f"no {column} column in heads.parquet")
    L, H = int(heads["layer"].max()) + 1, int(heads["head"].max()) + 1
    z = np.full((L, H), np.nan)
    z[heads["layer"].to_numpy(int), heads["head"].to_numpy(int)] = heads[column].to_numpy(float)
    hl = [(int(r.layer), int(r.head)) for r in heads.nsmallest(top, "rank").itertuples()] if top and "rank" in heads else []
    go = _go()
    scale = "Viridis_r" if column.endswith("rank") else "RdBu_r"
    fig = go.Figure(go.Heatmap(z=z, x=list(range(H)), y=list(range(L)), colorscale=scale, colorbar=dict(title=column),
                               zmid=None if column.endswith("rank") else 0.0, name=column,
                               hovertemplate=f"layer %{{y}}, head %{{x}}<br>{column} %{{z:.3f}}<extra></extra>"))
    if hl:
        fig.add_trace(go.Scatter(x=[b for _, b in hl], y=[a for a, _ in hl], mode="markers", name="specialist heads",
                                 marker=dict(symbol="circle-open", size=14, color="black", line=dict(width=2))))
    fig.update_layout(title=title or f"Listening signal: {column} per head", xaxis_title="head", yaxis_title="layer", **_LAYOUT)
    return fig


def decay_curves(decay, *, axis: str = "step", heads: Sequence[tuple[int, int]] = (),
                 groups: Sequence[str] = ("all", "topk"), title: str | None = None):
    """Mean yield per reasoning step (or token bin) with 95% CIs: all heads, the specialist
    (top-k) heads, and any individual ``heads`` chosen."""
    names = {"all": "all heads", "topk": "specialist heads"}
    title = title or ("Perception decay: audio yield by reasoning step" if axis == "step" else "Audio yield by generated-token bin")
    if decay is None or len(decay) == 0:
        return _empty(title, "no decay table")
    go = _go()
    d = decay[decay["axis"] == axis]
    fig = go.Figure()
    k = 0
    for g in groups:
        sub = d[d["group"] == g].sort_values("step")
        if sub.empty:
            continue
        _line_with_band(fig, sub["step"], sub["mean_yield"], sub["ci_low"], sub["ci_high"], name=names.get(g, g),
                        colour=PALETTE[k % len(PALETTE)],
                        hover=f"{names.get(g, g)}<br>{axis} %{{x}}: %{{y:.4f}}<extra></extra>")
        k += 1
    for layer, head in heads:
        sub = d[(d["group"] == "head") & (d["layer"] == layer) & (d["head"] == head)].sort_values("step")
        if sub.empty:
            continue
        _line_with_band(fig, sub["step"], sub["mean_yield"], sub["ci_low"], sub["ci_high"], name=f"L{layer}H{head}",
                        colour=PALETTE[k % len(PALETTE)], dash="dot")
        k += 1
    if not fig.data:
        return _empty(title, f"no rows with axis={axis!r}")
    fig.update_layout(title=title, xaxis_title="reasoning step" if axis == "step" else "token bin",
                      yaxis_title="mean audio yield", **_LAYOUT)
    fig.update_xaxes(dtick=1 if d["step"].nunique() <= 30 else None)
    return fig


def claim_accuracy_curve(claim_acc, *, title: str = "Outcome view: accuracy of perceptual claims by step"):
    if claim_acc is None or len(claim_acc) == 0:
        return _empty(title, "no perceptual claims were checked in this run")
    go = _go()
    d = claim_acc.sort_values("step")
    fig = go.Figure()
    _line_with_band(fig, d["step"], d["accuracy"], d["ci_low"], d["ci_high"], name="claim accuracy", colour=PALETTE[3])
    fig.update_layout(title=title, xaxis_title="reasoning step", yaxis_title="accuracy", yaxis_range=[0, 1.05], **_LAYOUT)
    fig.update_xaxes(dtick=1)
    return fig


def item_step_curve(yields, steps, *, heads: Sequence[tuple[int, int]] = (), chosen: tuple[int, int] | None = None,
                    title: str = "This item: yield by reasoning step"):
    """One item's mean yield per step: all heads, the specialist heads and one chosen head."""
    go = _go()
    y = np.asarray(yields, float)
    s = np.asarray(steps)
    ids = sorted(int(v) for v in np.unique(s) if v >= 0)
    if not ids:
        return _empty(title, "no reasoning steps")
    series = {"all heads": lambda m: y[m].mean()}
    if heads:
        idx = np.array(heads)
        series["specialist heads"] = lambda m: y[m][:, idx[:, 0], idx[:, 1]].mean()
    if chosen is not None:
        series[f"L{chosen[0]}H{chosen[1]}"] = lambda m: y[m][:, chosen[0], chosen[1]].mean()
    fig = go.Figure()
    for k, (name, f) in enumerate(series.items()):
        fig.add_trace(go.Scatter(x=ids, y=[f(s == i) for i in ids], mode="lines+markers", name=name,
                                 line=dict(color=PALETTE[k])))
    fig.update_layout(title=title, xaxis_title="reasoning step", yaxis_title="mean audio yield", **_LAYOUT)
    return fig


# ----------------------------------------------------------------------------- tokens
def _colour(v: float, vmax: float) -> str:
    t = 0.0 if not np.isfinite(v) or vmax <= 0 else float(np.clip(v / vmax, 0, 1))
    # white -> deep blue
    r, g, b = (int(255 + (c - 255) * t) for c in (8, 69, 148))
    return f"rgb({r},{g},{b})"


def token_html(tokens: Sequence[str], values, *, steps=None, vmax: float | None = None, max_tokens: int | None = None,
               caption: str = "") -> str:
    """The generated text as HTML spans coloured by ``values`` (one per token); hovering a token
    shows its index, step and value (the span's ``title``)."""
    vals = np.asarray(values, float)
    n = min(len(tokens), len(vals))
    if max_tokens is not None:
        n = min(n, max_tokens)
    vmax = float(np.nanmax(vals[:n])) if vmax is None and n else (vmax or 1.0)
    parts = []
    for i in range(n):
        tok = str(tokens[i])
        v = vals[i]
        step = f", step {int(steps[i])}" if steps is not None and i < len(steps) else ""
        tip = _html.escape(f"token {i}{step}: {tok!r}  yield {v:.4f}", quote=True)
        fg = "white" if vmax and v / vmax > 0.6 else "black"
        shown = _html.escape(tok).replace("\n", "↵<br>")
        parts.append(f'<span class="tok" title="{tip}" data-yield="{v:.5f}" '
                     f'style="background:{_colour(v, vmax)};color:{fg};border-radius:3px;padding:0 1px;">{shown}</span>')
    more = f'<p style="color:#777">… {len(tokens) - n} more tokens not shown</p>' if len(tokens) > n else ""
    legend = (f'<div style="font-size:0.8em;color:#555;margin-top:6px">colour: 0 '
              f'<span style="background:linear-gradient(90deg,{_colour(0, 1)},{_colour(1, 1)});padding:0 40px"></span> '
              f'{vmax:.3f} {_html.escape(caption)}</div>')
    return ('<div class="auralens-tokens" style="font-family:monospace;line-height:1.9;white-space:pre-wrap;'
            'word-break:break-word">' + "".join(parts) + "</div>" + more + legend)


def token_yield_line(values, steps=None, *, name: str = "yield", title: str = "Yield while producing each token"):
    """Yield per generated token (row 0 = last prompt token), with step boundaries shaded."""
    go = _go()
    v = np.asarray(values, float)
    fig = go.Figure(go.Scatter(x=np.arange(len(v)), y=v, mode="lines", name=name,
                               hovertemplate="token %{x}<br>yield %{y:.4f}<extra></extra>"))
    if steps is not None and len(steps):
        s = np.asarray(steps)
        starts = [0] + [i for i in range(1, len(s)) if s[i] != s[i - 1]]
        for k, a in enumerate(starts):
            b = starts[k + 1] if k + 1 < len(starts) else len(s)
            if k % 2:
                fig.add_vrect(x0=a - 0.5, x1=b - 0.5, fillcolor="#888", opacity=0.08, line_width=0)
    fig.update_layout(title=title, xaxis_title="generated token", yaxis_title="audio yield", **_LAYOUT)
    return fig


def time_bins_strip(bins, *, duration: float | None = None, title: str = "Yield over the clip's time bins"):
    """A one-row strip: the head's yield on each of K time bins of the audio (seconds when the
    clip's duration is known)."""
    go = _go()
    b = np.asarray(bins, float).reshape(-1)
    K = len(b)
    x = (np.arange(K) + 0.5) * (duration / K) if duration else np.arange(K)
    fig = go.Figure(go.Heatmap(z=b[None, :], x=x, y=["yield"], colorscale="Viridis", zmin=0, colorbar=dict(title="yield"),
                               name="time bins",
                               hovertemplate=("t=%{x:.2f} s" if duration else "bin %{x}") + "<br>yield %{z:.4f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="time in clip (s)" if duration else "time bin", height=200,
                      **{**_LAYOUT, "margin": dict(l=60, r=20, t=40, b=40)})
    return fig


def time_bins_by_step(tb, steps, *, duration: float | None = None, title: str = "Where in the clip each step listens"):
    """[n_tokens, K] time-bin yields of one head averaged per reasoning step: rows = steps."""
    go = _go()
    tb = np.asarray(tb, float)
    s = np.asarray(steps)
    ids = sorted(int(v) for v in np.unique(s) if v >= 0)
    z = np.stack([tb[0]] + [tb[s == i].mean(0) for i in ids])
    K = tb.shape[1]
    x = (np.arange(K) + 0.5) * (duration / K) if duration else np.arange(K)
    fig = go.Figure(go.Heatmap(z=z, x=x, y=["last prompt"] + [f"step {i}" for i in ids], colorscale="Viridis", zmin=0,
                               colorbar=dict(title="yield"), name="time bins by step",
                               hovertemplate="%{y}<br>" + ("t=%{x:.2f} s" if duration else "bin %{x}") + ": %{z:.4f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="time in clip (s)" if duration else "time bin", **_LAYOUT)
    fig.update_yaxes(autorange="reversed")
    return fig


# ----------------------------------------------------------------------------- probes
def step_label(v: Any) -> str:
    """A probe row's step as text: "—" for none (NaN/None/NA), "3" for 3 or 3.0."""
    import pandas as pd

    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return "—"
    if isinstance(v, (int, float, np.integer, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def _probe_select(probes, site, position, step):
    d = probes
    if site is not None:
        d = d[d["site"].astype(str) == str(site)]
    if position is not None:
        d = d[d["position"].astype(str) == str(position)]
    if step is not None:
        d = d[d["step"].astype(object).map(step_label) == step_label(step) if step != "—" else
              d["step"].astype(object).map(step_label) == "—"]
    return d


def probe_by_layer(probes, *, site: str | None = None, position: str | None = None, step: Any = "—",
                   attributes: Sequence[str] | None = None, metric: str = "accuracy", title: str | None = None):
    """Probe score by layer, one colour per attribute: score with its CI band, control task
    dashed, chance dotted.  ``step="—"`` selects rows with no step (e.g. the last prompt token);
    ``metric="selectivity"`` plots score minus control."""
    title = title or ("Probe accuracy by layer" if metric == "accuracy" else "Probe selectivity by layer")
    if probes is None or len(probes) == 0:
        return _empty(title, "no probe table")
    go = _go()
    d = _probe_select(probes, site, position, step)
    if d.empty:
        return _empty(title, f"no probes at site={site}, position={position}, step={step}")
    fig = go.Figure()
    attrs = attributes or list(dict.fromkeys(d["attribute"]))
    for k, attr in enumerate(attrs):
        a = d[d["attribute"] == attr].groupby("layer", as_index=False).mean(numeric_only=True).sort_values("layer")
        if a.empty:
            continue
        c = PALETTE[k % len(PALETTE)]
        if metric == "selectivity":
            _line_with_band(fig, a["layer"], a["selectivity"], None, None, name=str(attr), colour=c)
            continue
        _line_with_band(fig, a["layer"], a["accuracy"], a["ci_low"], a["ci_high"], name=str(attr), colour=c,
                        hover=f"{attr}<br>layer %{{x}}: %{{y:.3f}}<extra></extra>")
        fig.add_trace(go.Scatter(x=a["layer"], y=a["control_accuracy"], mode="lines", name=f"{attr} control",
                                 line=dict(color=c, dash="dash", width=1), legendgroup=str(attr), showlegend=False))
        fig.add_trace(go.Scatter(x=a["layer"], y=a["chance"], mode="lines", name=f"{attr} chance",
                                 line=dict(color=c, dash="dot", width=1), legendgroup=str(attr), showlegend=False))
    where = ", ".join(f"{k}={v}" for k, v in (("site", site), ("position", position), ("step", step)) if v not in (None, "—"))
    fig.update_layout(title=f"{title}" + (f" ({where})" if where else ""), xaxis_title="layer",
                      yaxis_title=metric if metric != "accuracy" else "accuracy (dashed: control, dotted: chance)", **_LAYOUT)
    if d["layer"].nunique() <= 40:
        fig.update_xaxes(dtick=1)
    return fig


def probe_by_step(probes, *, site: str | None = None, position: str | None = None, title: str = "Probe accuracy by reasoning step (best layer per attribute)"):
    """For each attribute, the layer with the best mean accuracy, then its accuracy per step."""
    import pandas as pd

    if probes is None or len(probes) == 0:
        return _empty(title, "no probe table")
    d = _probe_select(probes, site, position, None)
    d = d[pd.notna(d["step"])]
    if d.empty:
        return _empty(title, "no probes by reasoning step in this run")
    go = _go()
    fig = go.Figure()
    for k, attr in enumerate(dict.fromkeys(d["attribute"])):
        a = d[d["attribute"] == attr]
        best = int(a.groupby("layer")["accuracy"].mean().idxmax())
        a = a[a["layer"] == best].groupby("step", as_index=False).mean(numeric_only=True).sort_values("step")
        c = PALETTE[k % len(PALETTE)]
        _line_with_band(fig, a["step"].astype(float), a["accuracy"], a["ci_low"], a["ci_high"], name=f"{attr} (layer {best})", colour=c)
        fig.add_trace(go.Scatter(x=a["step"].astype(float), y=a["chance"], mode="lines", name=f"{attr} chance",
                                 line=dict(color=c, dash="dot", width=1), showlegend=False))
    fig.update_layout(title=title, xaxis_title="reasoning step", yaxis_title="accuracy", **_LAYOUT)
    fig.update_xaxes(dtick=1)
    return fig


# ---------------------------------------------------------------------------- steering
def steering_sweep(steer, *, category: str | None = "all", y: str = "accuracy", vectors: Sequence[str] | None = None,
                   layers: Sequence[int] | None = None, title: str | None = None):
    """Accuracy (or gain ``delta``) against the steering strength α, one curve per
    (vector, method, layer, positions[, format]), with 95% CIs."""
    title = title or ("Steering: accuracy vs α" if y == "accuracy" else "Steering: gain over α=0 vs α")
    if steer is None or len(steer) == 0:
        return _empty(title, "no steering table")
    go = _go()
    d = steer
    if category is not None and "category" in d:
        d = d[d["category"].astype(str) == str(category)]
    if vectors is not None:
        d = d[d["vector"].isin(vectors)]
    if layers is not None:
        d = d[d["layer"].isin(layers)]
    if d.empty:
        return _empty(title, f"no steering rows for category={category}")
    lo, hi = ("ci_low", "ci_high") if y == "accuracy" else ("delta_ci_low", "delta_ci_high")
    fig = go.Figure()
    keys = [c for c in ("vector", "method", "layer", "positions", "format") if c in d]
    if "format" in keys and d["format"].nunique() <= 1:
        keys.remove("format")
    for k, (key, g) in enumerate(d.groupby(keys, sort=True, dropna=False)):
        g = g.sort_values("alpha")
        name = " · ".join(f"L{v}" if c == "layer" else str(v) for c, v in zip(keys, key))
        _line_with_band(fig, g["alpha"], g[y], g[lo] if lo in g else None, g[hi] if hi in g else None, name=name,
                        colour=PALETTE[k % len(PALETTE)], hover=f"{name}<br>α=%{{x}}: %{{y:.3f}}<extra></extra>")
    if y == "delta":
        fig.add_hline(y=0, line=dict(color="#999", width=1))
    fig.update_layout(title=title + (f" (category: {category})" if category is not None else ""), xaxis_title="α",
                      yaxis_title="accuracy" if y == "accuracy" else "Δ accuracy vs α=0",
                      legend=dict(orientation="h", y=-0.25), **_LAYOUT)
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
    order = {"base": 0, "base+steering": 1, "finetuned": 2, "finetuned+steering": 3}
    out["_o"] = out["system"].map(lambda s: order.get(s, 9))
    out["_m"] = (out["source"] != "measured").astype(int) if "source" in out else 0
    return out.sort_values(["_m", "metric", "group", "_o", "system"])[cols].reset_index(drop=True)


def compare_bars(compare, *, metric: str | None = None, title: str | None = None):
    """One bar per system and group for a metric; reported (not measured) rows hatched."""
    if compare is None or len(compare) == 0:
        return _empty(title or "Steering vs fine-tuning", "no compare table")
    go = _go()
    metric = metric or str(compare["metric"].iloc[0])
    d = compare[compare["metric"] == metric]
    fig = go.Figure()
    systems = list(dict.fromkeys(d["system"]))
    for k, sys_ in enumerate(systems):
        s = d[d["system"] == sys_]
        v = s["value"].to_numpy(float)
        reported = (s.get("source", "measured") == "reported").to_numpy() if "source" in s else np.zeros(len(s), bool)
        fig.add_trace(go.Bar(
            x=s["group"].astype(str), y=v, name=str(sys_), marker_color=PALETTE[k % len(PALETTE)],
            marker_pattern_shape=["/" if r else "" for r in reported],
            error_y=dict(type="data", symmetric=False, array=np.nan_to_num(s["ci_high"].to_numpy(float) - v),
                         arrayminus=np.nan_to_num(v - s["ci_low"].to_numpy(float))),
            hovertemplate=f"{sys_}<br>%{{x}}: %{{y:.3f}}<extra></extra>"))
    fig.update_layout(title=title or f"Steering vs fine-tuning: {metric} (hatched: reported, not measured)",
                      barmode="group", yaxis_title=metric, **_LAYOUT)
    return fig
