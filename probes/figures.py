"""Plotly figures of probe tables (``probes.parquet``, the DataFrame of :func:`auralens.probes.tables.probe_table`).

- :func:`accuracy_by_layer`: score by layer, one small panel per attribute (faceted, shared y
  axis; no overlaid traces, no legend): the probe's score as a line inside its bootstrap CI band
  with n in the hover, the control task's score dashed, the chance level dotted (or, with
  ``metric="selectivity"``, score minus control).
- :func:`accuracy_by_step`: the same by reasoning step, at each attribute's best layer.
- :func:`step_label`: a row's step as text (``"—"`` for none), for pickers and captions.
- :func:`write_html`: a self-contained HTML file (plotly.js embedded, no CDN).

The probe stage writes its HTML with these functions; the dashboard, the offline report and
the notebooks draw the same ones. A table with several splits (column ``split``) is drawn
from its ``report`` rows.

Trace names are stable so tests and dashboards can find them: ``"{attribute}"``,
``"{attribute} control"``, ``"{attribute} chance"`` and ``"{attribute} 95% CI"`` (the
level follows the table's CI). The score is accuracy for categorical attributes and R^2 for
continuous ones.  Points from fewer than :data:`auralens.interp.plotting.MIN_N` items are grey.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from auralens.interp.errors import ProbeError
from auralens.interp.plotting import LAYOUT, MIN_N, PALETTE, graph_objects, line_with_band
from auralens.interp.schemas import PROBES

__all__ = ["accuracy_by_layer", "accuracy_by_step", "best_layers", "step_label", "write_html"]

_NEEDED = tuple(c for c in PROBES.names if c != "split")  # tables from before the split column still plot


def _one_split(table):
    """The rows of one split: a table holding probes of several splits (``select`` and
    ``report``, see :mod:`auralens.probes.stage`) is drawn from its ``report`` rows (else its first
    split), so every (attribute, layer) has one score."""
    if "split" not in table.columns:
        return table
    splits = list(dict.fromkeys(table["split"].astype(str)))
    if len(splits) <= 1:
        return table
    return table[table["split"].astype(str) == ("report" if "report" in splits else splits[0])]
_METRICS = ("accuracy", "selectivity")


def step_label(v: Any) -> str:
    """A probe row's step as text: "—" for none (NaN/None/NA), "3" for 3 or 3.0."""

    if _is_na(v):
        return "—"
    if isinstance(v, (int, float, np.integer, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def _check_table(table: Any, name: str) -> None:
    import pandas as pd

    if not isinstance(table, pd.DataFrame):
        raise ProbeError(f"{name}: expected a pandas DataFrame from probe_table, found "
                         f"{type(table).__name__}")
    missing = [c for c in _NEEDED if c not in table.columns]
    if missing:
        raise ProbeError(f"{name}: expected the probe_table columns, missing {missing}")
    if table.empty:
        raise ProbeError(f"{name}: expected at least one probe row, found an empty table")


def _same(series, value):
    """Element-wise equality that treats None/NaN as equal to None/NaN."""
    import pandas as pd

    if value is None or (isinstance(value, float) and value != value):
        return series.isna()
    return series.map(lambda v: (not pd.isna(v)) and v == value).astype(bool)


def _select(table, *, site: Any, position: Any, step: Any, use_step: bool, name: str):
    """Filter on the given location values and check one (site, position[, step]) remains
    (of one split: :func:`_one_split`)."""
    sub = _one_split(table)
    for col, value in (("site", site), ("position", position)):
        if value is not None:
            sub = sub[_same(sub[col], value)]
    if use_step and step != "any":
        sub = sub[_same(sub["step"], step)]
    if sub.empty:
        raise ProbeError(
            f"{name}: expected rows with site={site!r}, position={position!r}"
            + (f", step={step!r}" if use_step else "")
            + f"; found none (table has sites {sorted(map(str, table['site'].unique()))}, "
            f"positions {sorted(map(str, table['position'].unique()))}, "
            f"steps {sorted(map(str, table['step'].unique()))})"
        )
    cols = ["site", "position"] + (["step"] if use_step else [])
    combos = sub[cols].astype(str).drop_duplicates()
    if len(combos) > 1:
        found = [tuple(r) for r in combos.itertuples(index=False)]
        raise ProbeError(
            f"{name}: expected one ({', '.join(cols)}) combination to plot, found {len(found)}: "
            f"{found}; pass {', '.join(c + '=' for c in cols)} to choose"
        )
    return sub


def _add_attribute_traces(
    fig, sub, *, x: str, attribute: str, colour: str, hover: str, label: str | None = None,
    metric: str = "accuracy", row: int | None = None, col: int | None = None,
) -> None:
    """One attribute's panel: its score (a line in its 95% CI band, n in the hover, the
    minimum-n rule of :mod:`auralens.interp.plotting`), the control task dashed, chance dotted."""
    go = graph_objects()
    sub = sub.sort_values(x)
    xs = sub[x].tolist()
    kw: dict[str, Any] = {} if row is None else {"row": row, "col": col}
    n = sub["n"].to_numpy(float) if "n" in sub else None
    if metric == "selectivity":
        line_with_band(fig, xs, sub["selectivity"], None, None, name=attribute, colour=colour, n=n, showlegend=False,
                       hover=f"{label or attribute}<br>{hover}=%{{x}}<br>selectivity=%{{y:.3f}}<extra></extra>",
                       row=row, col=col)
        return
    group = attribute
    categorical = bool(sub["chance"].notna().any())
    extra = [f"selectivity {v:.3f}" for v in sub["selectivity"].to_numpy(float)]
    line_with_band(fig, xs, sub["accuracy"], sub["ci_low"] if sub["ci_low"].notna().any() else None,
                   sub["ci_high"] if sub["ci_high"].notna().any() else None, name=attribute, colour=colour,
                   legendgroup=group, showlegend=False, n=n, n_extra=extra, proportion=categorical,
                   hover=f"{label or attribute}<br>{hover}=%{{x}}<br>score=%{{y:.3f}}<extra></extra>",
                   row=row, col=col)
    if sub["control_accuracy"].notna().any():
        fig.add_trace(go.Scatter(
            x=xs, y=sub["control_accuracy"].tolist(), mode="lines", name=f"{attribute} control",
            legendgroup=group, showlegend=False, line={"color": colour, "dash": "dash", "width": 1.5},
            hovertemplate=f"{attribute} control task<br>{hover}=%{{x}}: %{{y:.3f}}<extra></extra>",
        ), **kw)
    fig.add_trace(go.Scatter(
        x=xs, y=sub["chance"].tolist(), mode="lines", name=f"{attribute} chance", showlegend=False,
        legendgroup=group, line={"color": colour, "dash": "dot", "width": 1}, opacity=0.7,
        hovertemplate=f"{attribute} chance<br>%{{y:.3f}}<extra></extra>",
    ), **kw)


#: panels per row of the faceted probe figures
FACET_COLUMNS = 3


def _facets(attrs: list[str], *, shared_y: bool):
    """A figure with one small panel per attribute (titled by it), :data:`FACET_COLUMNS` a row."""
    from plotly.subplots import make_subplots

    cols = max(1, min(FACET_COLUMNS, len(attrs)))
    rows = -(-len(attrs) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(attrs), shared_yaxes="all" if shared_y else False,
                        horizontal_spacing=0.06, vertical_spacing=min(0.3 / max(rows - 1, 1), 0.18))
    fig.update_layout(height=max(320, 250 * rows + 120))
    return fig, cols


def _cell(i: int, cols: int) -> tuple[int, int]:
    return i // cols + 1, i % cols + 1


def _check_metric(metric: str, name: str) -> None:
    if metric not in _METRICS:
        raise ProbeError(f"{name} metric: expected one of {_METRICS}, found {metric!r}")


def _layout(fig, *, title: str, xaxis_title: str, metric: str, n_panels: int = 1, cols: int = 1) -> None:
    """Title, axis titles (x on the bottom row's panels, y on the first column's) and the key
    to the line styles under the title (no legend: each panel is titled by its attribute)."""
    key = ("solid: probe score in its 95% CI band · dashed: control task · dotted: chance · grey markers: "
           f"fewer than {MIN_N} items" if metric == "accuracy" else
           f"score minus control-task score · grey markers: fewer than {MIN_N} items")
    fig.update_layout(title=dict(text=f"{title}<br><sup>{key}</sup>"), showlegend=False, **LAYOUT)
    fig.update_layout(margin=dict(l=60, r=20, t=90, b=50))
    rows = -(-n_panels // cols)
    for i in range(n_panels):
        r, c = _cell(i, cols)
        if r == rows or i + cols >= n_panels:
            fig.update_xaxes(title_text=xaxis_title, row=r, col=c)
        if c == 1:
            fig.update_yaxes(title_text=(_Y_SHORT if metric == "accuracy" else "selectivity"), row=r, col=c)


_Y_SHORT = "score (acc.; R²)"


def accuracy_by_layer(
    table,
    *,
    attributes: list[str] | None = None,
    site: Any = None,
    position: Any = None,
    step: Any = None,
    metric: str = "accuracy",
    title: str | None = None,
):
    """Probe score by layer, one colour per attribute, for one (site, position, step).

    ``site``/``position``/``step`` filter the table (``None`` matches rows whose step is
    missing, the usual "prompt" probes, and leaves site/position unfiltered); after filtering
    exactly one combination must remain, else :class:`ProbeError` lists what was found.
    ``metric="selectivity"`` plots score minus control instead (no band, control or chance).
    """
    _check_metric(metric, "accuracy_by_layer")
    _check_table(table, "accuracy_by_layer table")
    sub = _select(table, site=site, position=position, step=step, use_step=True,
                  name="accuracy_by_layer")
    attrs = _attributes(sub, attributes, "accuracy_by_layer")
    fig, cols = _facets(attrs, shared_y=True)
    for i, attribute in enumerate(attrs):
        rows = sub[sub["attribute"] == attribute]
        dup = rows["layer"].duplicated()
        if dup.any():
            raise ProbeError(
                f"accuracy_by_layer: expected one row per layer for attribute {attribute!r}, "
                f"found layer {rows['layer'][dup].iloc[0]!r} more than once"
            )
        r, c = _cell(i, cols)
        _add_attribute_traces(fig, rows, x="layer", attribute=attribute,
                              colour=PALETTE[i % len(PALETTE)], hover="layer", metric=metric, row=r, col=c)
    first = sub.iloc[0]
    where = f"{first['site']} · position {first['position']}"
    if not _is_na(first["step"]):
        where += f" · step {first['step']}"
    what = "score" if metric == "accuracy" else "selectivity"
    _layout(fig, title=title or f"Probe {what} by layer ({where})", xaxis_title="layer", metric=metric,
            n_panels=len(attrs), cols=cols)
    if sub["layer"].nunique() <= 40:
        fig.update_xaxes(dtick=1)
    return fig


def _is_na(value: Any) -> bool:
    import pandas as pd

    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _attributes(sub, attributes: list[str] | None, name: str) -> list[str]:
    present = list(dict.fromkeys(sub["attribute"].tolist()))
    if attributes is None:
        return present
    missing = [a for a in attributes if a not in present]
    if missing:
        raise ProbeError(f"{name}: expected attributes among {present}, found {missing}")
    return list(attributes)


def best_layers(
    table,
    *,
    by: Literal["accuracy", "selectivity"] = "accuracy",
    site: Any = None,
    position: Any = None,
) -> dict[str, int]:
    """Best layer per attribute: highest mean ``by`` over the reasoning steps in the table.

    Rows without a step are left out when stepped rows exist. Ties go to the earlier layer.
    """
    _check_table(table, "best_layers table")
    if by not in ("accuracy", "selectivity"):
        raise ProbeError(f"best_layers by: expected 'accuracy' or 'selectivity', found {by!r}")
    sub = _select(table, site=site, position=position, step="any", use_step=False,
                  name="best_layers")
    stepped = sub[sub["step"].notna()]
    if not stepped.empty:
        sub = stepped
    means = sub.groupby(["attribute", "layer"], sort=True)[by].mean().reset_index()
    out: dict[str, int] = {}
    for attribute, rows in means.groupby("attribute", sort=False):
        rows = rows.sort_values("layer", kind="stable")
        if rows[by].isna().all():
            raise ProbeError(
                f"best_layers: expected a {by} for attribute {attribute!r}, found only NaN "
                f"(was the control task off? use by='accuracy')"
            )
        out[str(attribute)] = int(rows.loc[rows[by].idxmax(), "layer"])
    return out


def accuracy_by_step(
    table,
    *,
    attributes: list[str] | None = None,
    site: Any = None,
    position: Any = None,
    by: Literal["accuracy", "selectivity"] = "accuracy",
    layers: dict[str, int] | None = None,
    title: str | None = None,
):
    """Probe score by reasoning step, each attribute at its best layer.

    The best layer is :func:`best_layers` (mean ``by`` over steps; on the ``select`` rows of a
    table with ``select`` and ``report`` splits, drawn from the ``report`` rows) unless
    ``layers`` gives ``{attribute: layer}``. Only rows with a step are plotted; the hover text of the
    ``"{attribute}"`` trace names the chosen layer.
    """
    _check_table(table, "accuracy_by_step table")
    sub = _select(table, site=site, position=position, step="any", use_step=False,
                  name="accuracy_by_step")
    sub = sub[sub["step"].notna()]
    if sub.empty:
        raise ProbeError("accuracy_by_step: expected rows with a reasoning step, found none "
                         "(every row has step None)")
    attrs = _attributes(sub, attributes, "accuracy_by_step")
    if layers is None and "split" in table.columns and set(table["split"].astype(str)) >= {"select", "report"}:
        # the layer is chosen on the select split and its curve drawn from the report split
        sel = table[table["split"].astype(str) == "select"]
        sel = _select(sel, site=site, position=position, step="any", use_step=False, name="accuracy_by_step")
        sel = sel[sel["step"].notna()]
        layers = best_layers(sel, by=by) if not sel.empty else {}
        attrs = [a for a in attrs if a in layers]  # an attribute with no select-split steps is not drawn
    chosen = best_layers(sub, by=by) if layers is None else dict(layers)
    fig, cols = _facets(attrs, shared_y=True)
    for i, attribute in enumerate(attrs):
        if attribute not in chosen:
            raise ProbeError(f"accuracy_by_step layers: expected a layer for {attribute!r}, "
                             f"found only {sorted(chosen)}")
        layer = chosen[attribute]
        rows = sub[(sub["attribute"] == attribute) & (sub["layer"] == layer)]
        if rows.empty:
            raise ProbeError(f"accuracy_by_step: expected rows for {attribute!r} at layer "
                             f"{layer}, found none")
        if rows["step"].duplicated().any():
            raise ProbeError(f"accuracy_by_step: expected one row per step for {attribute!r} "
                             f"at layer {layer}, found duplicates")
        r, c = _cell(i, cols)
        _add_attribute_traces(fig, rows, x="step", attribute=attribute,
                              colour=PALETTE[i % len(PALETTE)], hover="step",
                              label=f"{attribute} (layer {layer})", row=r, col=c)
    if len(fig.layout.annotations) == len(attrs):  # the panels' titles name the layer too
        for ann, attribute in zip(fig.layout.annotations, attrs):
            ann.text = f"{attribute} (layer {chosen[attribute]})"
    first = sub.iloc[0]
    _layout(fig, title=title or (f"Probe score by reasoning step at the best layer "
                                 f"({first['site']} · position {first['position']}; best by {by})"),
            xaxis_title="reasoning step", metric="accuracy", n_panels=len(attrs), cols=cols)
    fig.update_xaxes(dtick=1)
    return fig


def write_html(fig, path: str | Path) -> Path:
    """Write ``fig`` as a self-contained HTML file (plotly.js embedded; works offline)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return path
