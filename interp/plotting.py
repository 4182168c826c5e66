"""The house style of every figure: palette, layout, an empty-state figure and a line with its
confidence band.  Used by the figure modules of each package (:mod:`auralens.interp.figures`,
:mod:`auralens.probes.figures`, :mod:`auralens.steering.figures`); plotly is imported only when a figure is drawn.

Trace names are stable so tests can find them: a curve is named after its series, its band is
the same name followed by ``" 95% CI"``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LAYOUT", "PALETTE", "empty_figure", "graph_objects", "line_with_band", "rgba"]

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=50, b=50))


def graph_objects():
    """``plotly.graph_objects``, imported on first use."""
    import plotly.graph_objects as go

    return go


def rgba(hex_colour: str, alpha: float) -> str:
    """``"#1f77b4"`` -> ``"rgba(31,119,180,alpha)"``."""
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def empty_figure(title: str, message: str):
    """A figure with no axes and ``message`` in the middle: what a page shows for missing data."""
    fig = graph_objects().Figure()
    fig.update_layout(title=title, **LAYOUT)
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def line_with_band(fig, x, y, lo, hi, *, name: str, colour: str, dash: str | None = None, row=None, col=None,
                   showlegend: bool = True, hover: str | None = None, legendgroup: str | None = None) -> None:
    """Add a ``name`` line (markers on) and, where ``lo``/``hi`` are given and finite, its
    ``"{name} 95% CI"`` band (hidden from the legend, same legend group)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    kw = {} if row is None else {"row": row, "col": col}
    group = legendgroup or name
    if lo is not None and hi is not None:
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        ok = ~(np.isnan(lo) | np.isnan(hi))
        if ok.any():
            fig.add_trace(graph_objects().Scatter(
                x=np.concatenate([x[ok], x[ok][::-1]]), y=np.concatenate([hi[ok], lo[ok][::-1]]), mode="lines",
                fill="toself", fillcolor=rgba(colour, 0.18), line=dict(width=0), hoverinfo="skip",
                name=f"{name} 95% CI", showlegend=False, legendgroup=group), **kw)
    fig.add_trace(graph_objects().Scatter(
        x=x, y=y, mode="lines+markers", name=name, line=dict(color=colour, dash=dash), legendgroup=group,
        showlegend=showlegend, hovertemplate=hover or f"{name}<br>%{{x}}: %{{y:.3f}}<extra></extra>"), **kw)
