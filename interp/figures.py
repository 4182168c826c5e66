"""Figures of the eval and record stages: accuracy, error attribution, per-head yields, perception
decay, claim accuracy, and one item's tokens and time bins.

Pure functions of the run tables (:mod:`auralens.interp.schemas`) and per-item arrays: none reads files.
The record stage writes ``decay.html`` with :func:`decay_curves`; the dashboard, the offline
report and the notebooks draw the same functions.  A missing table gives an empty-state figure
with a message, not an error.  Trace names are stable (see :mod:`auralens.interp.plotting`).
"""

from __future__ import annotations

import html as _html
from collections.abc import Sequence

import numpy as np

from auralens.interp.plotting import (
    LAYOUT,
    PALETTE,
    bar_colours,
    empty_figure,
    graph_objects,
    honest_interval,
    line_with_band,
    n_text,
)

__all__ = [
    "accuracy_bars",
    "claim_accuracy_curve",
    "contrast_ratio",
    "decay_curves",
    "error_types_bar",
    "heads_score_heatmap",
    "item_step_curve",
    "text_colour",
    "time_bins_by_step",
    "time_bins_strip",
    "token_html",
    "token_yield_line",
    "yield_heatmap",
]


# ----------------------------------------------------------------------------------- eval
def accuracy_bars(acc, *, title: str = "Accuracy by tier and answer format"):
    """``accuracy.parquet``: bars per tier, one colour per format, one panel per audio mode."""
    go = graph_objects()
    from plotly.subplots import make_subplots

    if acc is None or len(acc) == 0:
        return empty_figure(title, "no accuracy table")
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
            n = d["n"].to_numpy(float)
            lo, hi = honest_interval(y, d["ci_low"], d["ci_high"], n, proportion=True)
            custom = [[a, b, t] for a, b, t in zip(lo, hi, n_text(n))]
            fig.add_trace(go.Bar(
                x=d["tier"].astype(str), y=y, name=str(fmt), marker_color=bar_colours(PALETTE[k % len(PALETTE)], n),
                legendgroup=str(fmt), showlegend=j == 1,
                error_y=dict(type="data", symmetric=False, array=np.nan_to_num(hi - y), arrayminus=np.nan_to_num(y - lo)),
                customdata=custom,
                hovertemplate=f"{fmt} · %{{x}}<br>accuracy %{{y:.3f}} 95% CI [%{{customdata[0]:.3f}}, "
                              f"%{{customdata[1]:.3f}}]<br>%{{customdata[2]}}<extra></extra>",
            ), row=1, col=j)
    fig.update_layout(title=title, barmode="group", yaxis_title="accuracy", yaxis_range=[0, 1.05], **LAYOUT)
    return fig


def error_types_bar(items, *, title: str = "Where answers fail (CAFE-style attribution)"):
    """Counts of ``error_type`` (correct / perception / reasoning / unverifiable) per format."""
    go = graph_objects()
    if items is None or "error_type" not in getattr(items, "columns", []):
        return empty_figure(title, "no error attribution in this run")
    order = ["correct", "perception", "reasoning", "unverifiable"]
    colours = {"correct": "#2ca02c", "perception": "#d62728", "reasoning": "#ff7f0e", "unverifiable": "#7f7f7f"}
    by = "format" if "format" in items.columns else None
    groups = sorted(items[by].astype(str).unique()) if by else ["all"]
    fig = go.Figure()
    totals = [int((items[by].astype(str) == g).sum()) if by else len(items) for g in groups]
    for et in order + sorted(set(items["error_type"]) - set(order)):
        is_et = items["error_type"] == et
        counts = [int((is_et & (items[by].astype(str) == g)).sum()) if by else int(is_et.sum()) for g in groups]
        fig.add_trace(go.Bar(x=groups, y=counts, name=et, marker_color=colours.get(et, "#17becf"), customdata=totals,
                             hovertemplate=f"{et} · %{{x}}<br>%{{y}} of n=%{{customdata}} items<extra></extra>"))
    fig.update_layout(title=title, barmode="stack", yaxis_title="items", **LAYOUT)
    return fig


# ---------------------------------------------------------------------------- yields
def yield_heatmap(values, *, title: str = "Audio attention yield", highlight: Sequence[tuple[int, int]] = (),
                  zmax: float | None = None, n: str | None = None):
    """[layers, heads] heatmap; ``highlight`` marks the specialist heads with a ring; ``n`` (e.g.
    ``"n=6 items"``) goes into every cell's hover."""
    go = graph_objects()
    z = np.asarray(values, float)
    L, H = z.shape
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(H)), y=list(range(L)), colorscale="Viridis", zmin=0, zmax=zmax if zmax is not None else float(np.nanmax(z) or 1),
        colorbar=dict(title="yield"), name="yield",
        hovertemplate="layer %{y}, head %{x}<br>yield %{z:.4f}" + (f"<br>{n}" if n else "") + "<extra></extra>"))
    if highlight:
        hl = [(a, b) for a, b in highlight if a < L and b < H]
        fig.add_trace(go.Scatter(
            x=[b for _, b in hl], y=[a for a, _ in hl], mode="markers", name="specialist heads",
            marker=dict(symbol="circle-open", size=14, color="white", line=dict(width=2)),
            hovertemplate="specialist: layer %{y}, head %{x}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="head", yaxis_title="layer", **LAYOUT)
    fig.update_xaxes(dtick=1 if H <= 40 else None)
    fig.update_yaxes(dtick=1 if L <= 40 else None)
    return fig


def heads_score_heatmap(heads, column: str = "rank", *, title: str | None = None, top: int = 0):
    """``heads.parquet`` as a [layers, heads] map of one score (``rank``: 1 = strongest listener)."""
    if heads is None or column not in getattr(heads, "columns", []):
        return empty_figure(title or f"heads: {column}", f"no {column} column in heads.parquet")
    L, H = int(heads["layer"].max()) + 1, int(heads["head"].max()) + 1
    z = np.full((L, H), np.nan)
    z[heads["layer"].to_numpy(int), heads["head"].to_numpy(int)] = heads[column].to_numpy(float)
    hl = [(int(r.layer), int(r.head)) for r in heads.nsmallest(top, "rank").itertuples()] if top and "rank" in heads else []
    go = graph_objects()
    scale = "Viridis_r" if column.endswith("rank") else "RdBu_r"
    fig = go.Figure(go.Heatmap(z=z, x=list(range(H)), y=list(range(L)), colorscale=scale, colorbar=dict(title=column),
                               zmid=None if column.endswith("rank") else 0.0, name=column,
                               hovertemplate=f"layer %{{y}}, head %{{x}}<br>{column} %{{z:.3f}}<extra></extra>"))
    if hl:
        fig.add_trace(go.Scatter(x=[b for _, b in hl], y=[a for a, _ in hl], mode="markers", name="specialist heads",
                                 marker=dict(symbol="circle-open", size=14, color="black", line=dict(width=2))))
    fig.update_layout(title=title or f"Listening signal: {column} per head", xaxis_title="head", yaxis_title="layer", **LAYOUT)
    fig.update_xaxes(dtick=1 if H <= 40 else None)  # whole heads and layers, never half-integer ticks
    fig.update_yaxes(dtick=1 if L <= 40 else None)
    return fig


def decay_curves(decay, *, axis: str = "step", heads: Sequence[tuple[int, int]] = (),
                 groups: Sequence[str] = ("all", "topk"), title: str | None = None):
    """Mean yield per reasoning step (or token bin) with 95% CIs: all heads, the specialist
    (top-k) heads, and any individual ``heads`` chosen.  ``groups`` may also name the step
    subsets of :func:`auralens.interp.decay.decay_table` (``"topk:claim"``, ``"all:reach_last"``...)."""
    names = {"all": "all heads", "topk": "specialist heads"}
    subsets = {"claim": "claim steps", "reasoning": "reasoning steps", "reach_last": "items reaching the last step"}
    for g in groups:
        base, _, sub = g.partition(":")
        if sub in subsets:
            names[g] = f"{names.get(base, base)}, {subsets[sub]}"
    title = title or ("Perception decay: audio yield by reasoning step" if axis == "step" else "Audio yield by generated-token bin")
    if decay is None or len(decay) == 0:
        return empty_figure(title, "no decay table")
    go = graph_objects()
    d = decay[decay["axis"] == axis]
    fig = go.Figure()
    k = 0
    for g in groups:
        sub = d[d["group"] == g].sort_values("step")
        if sub.empty:
            continue
        line_with_band(fig, sub["step"], sub["mean_yield"], sub["ci_low"], sub["ci_high"], name=names.get(g, g),
                        colour=PALETTE[k % len(PALETTE)], n=sub["n"] if "n" in sub else None,
                        hover=f"{names.get(g, g)}<br>{axis} %{{x}}: %{{y:.4f}}<extra></extra>")
        k += 1
    for layer, head in heads:
        sub = d[(d["group"] == "head") & (d["layer"] == layer) & (d["head"] == head)].sort_values("step")
        if sub.empty:
            continue
        line_with_band(fig, sub["step"], sub["mean_yield"], sub["ci_low"], sub["ci_high"], name=f"L{layer}H{head}",
                        colour=PALETTE[k % len(PALETTE)], dash="dot", n=sub["n"] if "n" in sub else None)
        k += 1
    if not fig.data:
        return empty_figure(title, f"no rows with axis={axis!r}")
    fig.update_layout(title=title, xaxis_title="reasoning step" if axis == "step" else "token bin",
                      yaxis_title="mean audio yield", **LAYOUT)
    fig.update_xaxes(dtick=1 if d["step"].nunique() <= 30 else None)
    return fig


def claim_accuracy_curve(claim_acc, *, title: str = "Outcome view: accuracy of perceptual claims by step",
                         name: str = "claim accuracy"):
    """``claim_accuracy.parquet`` (or :func:`auralens.interp.decay.claim_accuracy_by_step` of some
    claims): accuracy by step with its 95% CI; n (items, and claims) in the hover, the minimum-n
    rule of :mod:`auralens.interp.plotting`."""
    if claim_acc is None or len(claim_acc) == 0:
        return empty_figure(title, "no perceptual claims were checked in this run")
    go = graph_objects()
    d = claim_acc.sort_values("step")
    fig = go.Figure()
    n = d["n_items"] if "n_items" in d else None
    extra = [f"{int(c)} claims" for c in d["n_claims"]] if "n_claims" in d else None
    line_with_band(fig, d["step"], d["accuracy"], d["ci_low"], d["ci_high"], name=name, colour=PALETTE[3],
                   n=n, n_extra=extra, proportion=True)
    fig.update_layout(title=title, xaxis_title="reasoning step", yaxis_title="accuracy", yaxis_range=[0, 1.05], **LAYOUT)
    fig.update_xaxes(dtick=1)
    return fig


def item_step_curve(yields, steps, *, heads: Sequence[tuple[int, int]] = (), chosen: tuple[int, int] | None = None,
                    title: str = "This item: yield by reasoning step"):
    """One item's mean yield per step: all heads, the specialist heads and one chosen head."""
    go = graph_objects()
    y = np.asarray(yields, float)
    s = np.asarray(steps)
    ids = sorted(int(v) for v in np.unique(s) if v >= 0)
    if not ids:
        return empty_figure(title, "no reasoning steps")
    series = {"all heads": lambda m: y[m].mean()}
    if heads:
        idx = np.array(heads)
        series["specialist heads"] = lambda m: y[m][:, idx[:, 0], idx[:, 1]].mean()
    if chosen is not None:
        series[f"L{chosen[0]}H{chosen[1]}"] = lambda m: y[m][:, chosen[0], chosen[1]].mean()
    fig = go.Figure()
    tokens = [int((s == i).sum()) for i in ids]
    for k, (name, f) in enumerate(series.items()):
        fig.add_trace(go.Scatter(x=ids, y=[f(s == i) for i in ids], mode="lines+markers", name=name,
                                 line=dict(color=PALETTE[k]), customdata=tokens,
                                 hovertemplate=f"{name}<br>step %{{x}}: %{{y:.4f}}<br>one item, n=%{{customdata}} tokens"
                                               "<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="reasoning step", yaxis_title="mean audio yield", **LAYOUT)
    return fig


# ----------------------------------------------------------------------------- tokens
def _rgb(v: float, vmax: float) -> tuple[int, int, int]:
    t = 0.0 if not np.isfinite(v) or vmax <= 0 else float(np.clip(v / vmax, 0, 1))
    # white -> deep blue
    r, g, b = (int(255 + (c - 255) * t) for c in (8, 69, 148))
    return r, g, b


def _colour(v: float, vmax: float) -> str:
    r, g, b = _rgb(v, vmax)
    return f"rgb({r},{g},{b})"


def luminance(rgb: tuple[int, int, int]) -> float:
    """WCAG relative luminance of an sRGB colour (0 black .. 1 white)."""
    def lin(c: float) -> float:
        c = c / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """WCAG contrast ratio of two colours (1 .. 21; 4.5 is the AA level for body text)."""
    la, lb = sorted((luminance(a), luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def text_colour(background: tuple[int, int, int]) -> str:
    """``"white"`` or ``"black"``, whichever contrasts more with ``background`` (at least 4.58:1
    on any background: the two tie at a luminance of 0.179): white on the dark cells."""
    white, black = (255, 255, 255), (0, 0, 0)
    return "white" if contrast_ratio(background, white) >= contrast_ratio(background, black) else "black"


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
        fg = text_colour(_rgb(v, vmax))
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
    go = graph_objects()
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
    fig.update_layout(title=title, xaxis_title="generated token", yaxis_title="audio yield", **LAYOUT)
    return fig


def time_bins_strip(bins, *, duration: float | None = None, title: str = "Yield over the clip's time bins"):
    """A one-row strip: the head's yield on each of K time bins of the audio (seconds when the
    clip's duration is known)."""
    go = graph_objects()
    b = np.asarray(bins, float).reshape(-1)
    K = len(b)
    x = (np.arange(K) + 0.5) * (duration / K) if duration else np.arange(K)
    fig = go.Figure(go.Heatmap(z=b[None, :], x=x, y=["yield"], colorscale="Viridis", zmin=0, colorbar=dict(title="yield"),
                               name="time bins",
                               hovertemplate=("t=%{x:.2f} s" if duration else "bin %{x}") + "<br>yield %{z:.4f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="time in clip (s)" if duration else "time bin", height=200,
                      **{**LAYOUT, "margin": dict(l=60, r=20, t=40, b=40)})
    return fig


def time_bins_by_step(tb, steps, *, duration: float | None = None, title: str = "Where in the clip each step listens"):
    """[n_tokens, K] time-bin yields of one head averaged per reasoning step: rows = steps."""
    go = graph_objects()
    tb = np.asarray(tb, float)
    s = np.asarray(steps)
    ids = sorted(int(v) for v in np.unique(s) if v >= 0)
    z = np.stack([tb[0]] + [tb[s == i].mean(0) for i in ids])
    K = tb.shape[1]
    x = (np.arange(K) + 0.5) * (duration / K) if duration else np.arange(K)
    fig = go.Figure(go.Heatmap(z=z, x=x, y=["last prompt"] + [f"step {i}" for i in ids], colorscale="Viridis", zmin=0,
                               colorbar=dict(title="yield"), name="time bins by step",
                               hovertemplate="%{y}<br>" + ("t=%{x:.2f} s" if duration else "bin %{x}") + ": %{z:.4f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="time in clip (s)" if duration else "time bin", **LAYOUT)
    fig.update_yaxes(autorange="reversed")
    return fig
