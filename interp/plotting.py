"""The house style of every figure: palette, layout, an empty-state figure, a line with its
confidence band, and the rules every plotted point follows.  Used by the figure modules of each
package (:mod:`auralens.interp.figures`, :mod:`auralens.probes.figures`,
:mod:`auralens.steering.figures`); plotly is imported only when a figure is drawn.

Trace names are stable so tests can find them: a curve is named after its series, its band is
the same name followed by ``" 95% CI"``.

The rules for a point (:func:`line_with_band`, :func:`honest_interval`, :func:`bar_colours`):

- its n is in the hover (``n=...``, with what is counted: items, claims);
- a point from fewer than :data:`MIN_N` items is drawn grey (an open marker, a grey bar) and
  gets no band: too few items to read its value;
- no interval of zero width is drawn under :data:`ZERO_WIDTH_N` items: an accuracy gets
  Wilson's interval (:func:`auralens.interp.stats.wilson_ci`) instead (5/5 right: [0.566, 1]),
  any other quantity no band at that point (the hover says "no interval").

:data:`MIN_N_NOTE` says this in one sentence for the pages that draw such figures.
"""

from __future__ import annotations

import numpy as np

from auralens.interp.stats import wilson_ci

__all__ = ["GREY", "LAYOUT", "MIN_N", "MIN_N_NOTE", "PALETTE", "ZERO_WIDTH_N", "bar_colours", "empty_figure",
           "graph_objects", "honest_interval", "line_with_band", "n_text", "rgba"]

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=50, b=50))
#: a point from fewer items than this is grey and gets no band
MIN_N = 10
#: under this many items no interval of zero width is drawn (Wilson's for accuracies)
ZERO_WIDTH_N = 30
GREY = "#b0b0b0"
MIN_N_NOTE = (f"Every point's n is in its hover. Points from fewer than {MIN_N} items are grey (open markers, "
              f"grey bars) and get no band; no interval of zero width is drawn under n = {ZERO_WIDTH_N} "
              "(an accuracy there gets Wilson's interval, anything else no band).")


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


def _floats(v, size: int | None = None) -> np.ndarray:
    """``v`` as a flat float array (a pandas column's missing values, NA included, as NaN); all
    NaN of ``size`` when ``v`` is None."""
    if v is None:
        return np.full(size or 0, np.nan)
    if hasattr(v, "to_numpy"):
        return np.asarray(v.to_numpy(dtype=float, na_value=np.nan), dtype=float).reshape(-1)
    return np.array([np.nan if x is None else x for x in np.asarray(v, dtype=object).reshape(-1)], dtype=float)


def honest_interval(y, lo, hi, n, *, proportion: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)`` as drawn: where the interval has zero width (or is missing) and ``n`` is under
    :data:`ZERO_WIDTH_N`, an accuracy (``proportion``) gets Wilson's interval of
    ``round(y * n)`` right out of ``n``; any other quantity NaN there (no band)."""
    y = np.asarray(y, dtype=float).reshape(-1)
    lo, hi, nn = _floats(lo, len(y)).copy(), _floats(hi, len(y)).copy(), _floats(n, len(y))
    with np.errstate(invalid="ignore"):
        narrow = (~np.isfinite(lo) | ~np.isfinite(hi) | (np.abs(hi - lo) <= 1e-12)) & (nn < ZERO_WIDTH_N) & (nn > 0)
    for i in np.flatnonzero(narrow & np.isfinite(y)):
        if proportion and 0.0 <= y[i] <= 1.0:
            lo[i], hi[i] = wilson_ci(int(round(y[i] * nn[i])), int(nn[i]))
        else:
            lo[i] = hi[i] = np.nan
    return lo, hi


def n_text(n, *, unit: str = "items", extra=None) -> list[str]:
    """Per point: ``"n=12 items"`` (``extra``: text appended per point), and for n under
    :data:`MIN_N` ``" (below the minimum n of 10: grey)"``."""
    out = []
    nn = _floats(n)
    for i, v in enumerate(nn):
        s = f"n={int(v)} {unit}" if np.isfinite(v) else "n unknown"
        if extra is not None:
            s += f" · {extra[i]}"
        if np.isfinite(v) and v < MIN_N:
            s += f" (below the minimum n of {MIN_N}: grey)"
        out.append(s)
    return out


def bar_colours(colour: str, n) -> list[str]:
    """One colour per bar: ``colour``, or :data:`GREY` where n is under :data:`MIN_N`."""
    return [GREY if (np.isfinite(v) and v < MIN_N) else colour for v in _floats(n)]


def _segments(ok: np.ndarray) -> list[np.ndarray]:
    idx = np.flatnonzero(ok)
    if not len(idx):
        return []
    return np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1)


def line_with_band(fig, x, y, lo, hi, *, name: str, colour: str, dash: str | None = None, row=None, col=None,
                   showlegend: bool = True, hover: str | None = None, legendgroup: str | None = None,
                   n=None, n_unit: str = "items", n_extra=None, proportion: bool = False) -> None:
    """Add a ``name`` line (markers on) and, where ``lo``/``hi`` are given and finite, its
    ``"{name} 95% CI"`` band (hidden from the legend, same legend group).

    ``n`` (one per point) puts each point's n and interval in the hover, greys the points under
    :data:`MIN_N` (no band there) and applies :func:`honest_interval` (``proportion``: the values
    are accuracies).  A band with gaps is drawn as separate pieces (never across a gap)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    kw = {} if row is None else {"row": row, "col": col}
    group = legendgroup or name
    go = graph_objects()
    has_ci = lo is not None and hi is not None
    nn = _floats(n, len(y))
    low = np.isfinite(nn) & (nn < MIN_N)
    if has_ci:
        lo, hi = (honest_interval(y, lo, hi, nn, proportion=proportion) if n is not None
                  else (np.asarray(lo, float), np.asarray(hi, float)))
        ok = ~(np.isnan(lo) | np.isnan(hi)) & ~low
        bx: list = []
        by: list = []
        for seg in _segments(ok):
            if bx:
                bx.append(None)
                by.append(None)
            bx += list(x[seg]) + list(x[seg][::-1])
            by += list(hi[seg]) + list(lo[seg][::-1])
        if bx:
            fig.add_trace(go.Scatter(
                x=bx, y=by, mode="lines", fill="toself", fillcolor=rgba(colour, 0.18), line=dict(width=0),
                hoverinfo="skip", name=f"{name} 95% CI", showlegend=False, legendgroup=group), **kw)
    extra: dict = {}
    if n is not None:
        ci = [f"95% CI [{a:.3f}, {b:.3f}]" if np.isfinite(a) and np.isfinite(b) else "no interval"
              for a, b in zip(*(lo, hi) if has_ci else (np.full(len(y), np.nan),) * 2)]
        texts = n_text(nn, unit=n_unit, extra=n_extra)
        extra["customdata"] = [[c, t] for c, t in zip(ci, texts)]
        extra["marker"] = dict(color=[GREY if v else colour for v in low],
                               symbol=["circle-open" if v else "circle" for v in low], size=8,
                               line=dict(color=[GREY if v else colour for v in low], width=1.5))
        tail = "<br>%{customdata[0]}<br>%{customdata[1]}<extra></extra>"
        base = hover or f"{name}<br>%{{x}}: %{{y:.3f}}<extra></extra>"
        hover = base.replace("<extra></extra>", "") + tail
    fig.add_trace(go.Scatter(
        x=x, y=y, mode="lines+markers", name=name, line=dict(color=colour, dash=dash), legendgroup=group,
        showlegend=showlegend, hovertemplate=hover or f"{name}<br>%{{x}}: %{{y:.3f}}<extra></extra>", **extra), **kw)
