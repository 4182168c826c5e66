"""Figures of the steer and compare stages: the β sweep (``steering.parquet``) and steering vs
fine-tuning (``compare.parquet``: the systems x organisms x conditions grid, and separately the
papers' reported numbers).

Pure functions of the tables (:mod:`auralens.interp.schemas`); none reads files.  The steer stage writes
``steering_accuracy.html`` / ``steering_delta.html`` with :func:`steering_sweep`, the compare
stage ``compare.html`` with :func:`compare_figure`; the dashboard, the offline report and the
notebooks draw the same functions.  A missing table gives an empty-state figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePath

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
from auralens.interp.schemas import SYSTEMS

__all__ = [
    "SYSTEM_COLOURS",
    "compare_bars",
    "compare_figure",
    "compare_grid",
    "compare_table",
    "condition_label",
    "cost_table",
    "reported_figure",
    "reported_table",
    "steering_sweep",
]

#: one colour per measured system of ``auralens compare``, the same in every figure
SYSTEM_COLOURS = dict(zip(SYSTEMS, (PALETTE[0], PALETTE[2], PALETTE[3], PALETTE[4], PALETTE[1])))
_REPORTED_COLOUR = "#888888"


# ---------------------------------------------------------------------------- steering
def steering_sweep(steer, *, category: str | None = "all", y: str = "accuracy", vectors: Sequence[str] | None = None,
                   layers: Sequence[int] | None = None, title: str | None = None):
    """Accuracy (or gain ``delta``) against the steering strength β (column ``beta``; a table
    written with the former column name ``alpha`` reads the same), one curve per
    (vector, method, layer, positions[, format]), with 95% CIs."""
    title = title or ("Steering: accuracy vs β" if y == "accuracy" else "Steering: gain over β=0 vs β")
    if steer is None or len(steer) == 0:
        return empty_figure(title, "no steering table")
    go = graph_objects()
    d = steer if "beta" in steer else steer.rename(columns={"alpha": "beta"})
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
        g = g.sort_values("beta")
        name = " · ".join(f"L{v}" if c == "layer" else str(v) for c, v in zip(keys, key))
        line_with_band(fig, g["beta"], g[y], g[lo] if lo in g else None, g[hi] if hi in g else None, name=name,
                       colour=PALETTE[k % len(PALETTE)], hover=f"{name}<br>β=%{{x}}: %{{y:.3f}}<extra></extra>",
                       n=g["n"] if "n" in g else None, proportion=y == "accuracy")
    if y == "delta":
        fig.add_hline(y=0, line=dict(color="#999", width=1))
    fig.update_layout(title=title + (f" (category: {category})" if category is not None else ""), xaxis_title="β",
                      yaxis_title="accuracy" if y == "accuracy" else "Δ accuracy vs β=0",
                      legend=dict(orientation="h", y=-0.25), **LAYOUT)
    return fig


# ----------------------------------------------------------------------------- compare
# compare.parquet (auralens.interp.schemas.COMPARE): measured rows are the systems x organisms x
# conditions grid; reported rows (source "reported") are the papers' numbers for other models
# on other benchmarks.  The two never share an axis: compare_figure / compare_bars / compare_grid
# / cost_table draw measured rows only, reported_figure / reported_table the reported ones.

_CONDITION_ORDER = ("neutral", "congruent", "conflict")
_SPLITS = ("calibration", "dev", "test", "train")
#: greys, so the causes never read as one of the systems' colours
_ERROR_COLOURS = {"perception": "#333333", "reasoning": "#888888", "unverifiable": "#cccccc"}
#: per-condition inference cost metrics (rows with a condition), in display order
_INFERENCE_COST = ("forwards_per_item", "pauses_per_item", "generated_tokens")
#: training cost metrics (rows with condition "" and format "")
_TRAINING_COST = ("training_minutes", "training_flops", "steering_fit_flops")
_TEXT_COLUMNS = ("organism", "system", "condition", "format", "metric", "group", "source", "note")


def _frame(table):
    """``table`` with every text column present (missing -> ""), text as ``str``; None -> None."""
    if table is None or len(table) == 0:
        return None
    t = table.copy()
    for c in _TEXT_COLUMNS:
        t[c] = t[c].fillna("").astype(str) if c in t else ""
    if "source" in table:
        t.loc[t["source"] == "", "source"] = "measured"
    else:
        t["source"] = "measured"
    for c in ("value", "ci_low", "ci_high"):
        t[c] = t[c].astype(float) if c in t else np.nan
    if "n" not in t:
        t["n"] = 0
    return t


def _measured(table):
    t = _frame(table)
    return None if t is None else t[t["source"] == "measured"]


def _reported(table):
    t = _frame(table)
    return None if t is None else t[t["source"] == "reported"]


def condition_label(condition: str) -> str:
    """A short name for a compare condition: ``"cafe-conflict:test"`` -> ``"conflict"``, a file
    dataset (``.../mmau-test-mini.json:test@3``) -> its file stem, ``""`` -> ``"—"``."""
    c = str(condition)
    if not c:
        return "—"
    c = c.split("@", 1)[0] if "@" in c and c.rsplit("@", 1)[1].isdigit() else c
    head, _, split = c.rpartition(":")
    if head and split in _SPLITS:
        c = head
    if c.startswith("cafe-"):
        return c[len("cafe-"):]
    if "/" in c or "\\" in c or c.endswith((".json", ".jsonl", ".csv")):

        return PurePath(c.replace("\\", "/")).stem or c
    return c


def _condition_labels(conditions) -> dict[str, str]:
    """``condition -> label``, unique (falls back to the full spec where two labels collide)."""
    labels = {c: condition_label(c) for c in conditions}
    seen: dict[str, int] = {}
    for v in labels.values():
        seen[v] = seen.get(v, 0) + 1
    return {c: (v if seen[v] == 1 else c) for c, v in labels.items()}


def _conditions(m) -> list[str]:
    """The measured conditions (not the cost rows' ""), neutral / congruent / conflict first;
    ``[""]`` when every row has an empty condition (one unnamed condition)."""
    conds = [c for c in dict.fromkeys(m["condition"]) if c]
    if not conds and len(m):
        return [""]
    rank = {name: i for i, name in enumerate(_CONDITION_ORDER)}
    return sorted(conds, key=lambda c: (rank.get(condition_label(c), len(rank)), conds.index(c)))


def _organisms(m) -> list[str]:
    return [o for o in dict.fromkeys(m["organism"])]


def _systems(m) -> list[str]:
    order = {s: i for i, s in enumerate(SYSTEMS)}
    seen = list(dict.fromkeys(m["system"]))
    return sorted(seen, key=lambda s: (order.get(s, len(order)), seen.index(s)))


def _colour(system: str, systems: Sequence[str]) -> str:
    if system in SYSTEM_COLOURS:
        return SYSTEM_COLOURS[system]
    others = [s for s in systems if s not in SYSTEM_COLOURS]
    return PALETTE[(len(SYSTEM_COLOURS) + others.index(system)) % len(PALETTE)] if system in others else PALETTE[-1]


def _series(d, systems: Sequence[str]):
    """``(name, system, rows)`` per system of ``d``; a system answering in more than one format
    for the same organism and condition is split into one series per format (``"system · fmt"``).
    A format that only differs between organisms (each base model in its own) stays one series,
    the format in the hover."""
    out = []
    for system in systems:
        s = d[d["system"] == system]
        if s.empty:
            continue
        keys = [k for k in ("organism", "condition", "metric", "group") if k in s]
        split = bool(len(s)) and bool((s.groupby(keys)["format"].nunique() > 1).any())
        if not split:
            out.append((system, system, s))
            continue
        for fmt in dict.fromkeys(s["format"]):
            out.append((f"{system} · {fmt or '—'}", system, s[s["format"] == fmt]))
    return out


def _ci_text(lo, hi) -> str:
    return "" if (lo is None or hi is None or not np.isfinite(lo) or not np.isfinite(hi)) else f"[{lo:.3f}, {hi:.3f}]"


def _bars(fig, s, keys, x, *, index, name: str, colour: str, showlegend: bool, legendgroup: str, row=None,
          col=None, fmt: str = ".3f") -> None:
    """One series' bars at ``x`` (the rows of ``s`` looked up by ``index`` columns at ``keys``),
    with their 95% CI whiskers where known and n in the hover."""
    s = s.drop_duplicates(list(index)).set_index(list(index))
    if len(index) == 1:
        s.index = s.index.get_level_values(0)
    s = s.reindex(keys)
    v = s["value"].to_numpy(float)
    n = s["n"].to_numpy(float)
    metric = str(s["metric"].dropna().iloc[0]) if "metric" in s and s["metric"].notna().any() else ""
    counted = metric not in _TRAINING_COST + _INFERENCE_COST  # cost rows have no items behind them
    lo, hi = s["ci_low"].to_numpy(float), s["ci_high"].to_numpy(float)
    if counted:
        lo, hi = honest_interval(v, lo, hi, n, proportion=metric == "accuracy" or metric.endswith("_accuracy"))
    kw = {} if row is None else {"row": row, "col": col}
    formats = s["format"].fillna("").astype(str) if "format" in s else [""] * len(s)
    texts = n_text(n, extra=[f"{f} answers" if f else "" for f in formats]) if counted else [""] * len(v)
    custom = [[a, b, t] for a, b, t in zip(lo, hi, texts)]
    fig.add_trace(graph_objects().Bar(
        x=x, y=v, name=name, marker_color=bar_colours(colour, n) if counted else colour, legendgroup=legendgroup,
        showlegend=showlegend,
        error_y=dict(type="data", symmetric=False, array=np.nan_to_num(hi - v), arrayminus=np.nan_to_num(v - lo),
                     visible=bool(np.isfinite(lo).any() or np.isfinite(hi).any())),
        customdata=custom,
        hovertemplate=f"{name}<br>%{{x}}: %{{y:{fmt}}}<br>95% CI [%{{customdata[0]:.3f}}, %{{customdata[1]:.3f}}]"
                      f"<br>%{{customdata[2]}}<extra></extra>"), **kw)


def compare_table(compare):
    """The compare table, one row per number, value with its CI as text: the measured rows
    (organism, condition, system, ...) first, then the reported ones."""
    import pandas as pd

    cols = ["metric", "group", "system", "source", "value", "95% CI", "n", "organism", "condition", "format", "note"]
    t = _frame(compare)
    if t is None:
        return pd.DataFrame(columns=cols)
    out = t.copy()
    out["95% CI"] = [_ci_text(lo, hi) for lo, hi in zip(out["ci_low"], out["ci_high"])]
    out["value"] = out["value"].map(lambda v: f"{v:.4g}" if pd.notna(v) else "")
    order = {s: i for i, s in enumerate(SYSTEMS)}
    out["_m"] = (out["source"] != "measured").astype(int)
    out["_o"] = out["system"].map(lambda s: order.get(s, len(order)))
    orgs = {o: i for i, o in enumerate(dict.fromkeys(out["organism"]))}
    out["_g"] = out["organism"].map(orgs)
    conds = {c: i for i, c in enumerate(_conditions(out[out["_m"] == 0]))}
    out["_c"] = out["condition"].map(lambda c: conds.get(c, len(conds)))
    out = out.sort_values(["_m", "_g", "_c", "metric", "group", "_o", "system"], kind="stable")
    return out[cols].reset_index(drop=True)


def compare_grid(compare, *, metric: str = "accuracy", group: str = "all"):
    """The systems x organisms grid of one measured ``metric`` (``group``): one row per
    (organism, system) with its answer format, one column per condition, each cell
    ``value [ci_low, ci_high]``.
    Reported rows are never in it (see :func:`reported_table`)."""
    import pandas as pd

    m = _measured(compare)
    if m is None:
        return pd.DataFrame(columns=["organism", "system", "format"])
    d = m[(m["metric"] == metric) & (m["group"] == group)]
    if d.empty:
        return pd.DataFrame(columns=["organism", "system", "format"])
    conds = _conditions(d) or [""]
    labels = _condition_labels(conds)
    rows = []
    for org in _organisms(d):
        for name, _system, s in _series(d[d["organism"] == org], _systems(d)):
            r = {"organism": org, "system": name, "format": ", ".join(f for f in dict.fromkeys(s["format"]) if f)}
            for c in conds:
                x = s[s["condition"] == c]
                if len(x):
                    x = x.iloc[0]
                    r[labels[c]] = f"{x['value']:.3f} {_ci_text(x['ci_low'], x['ci_high'])}".strip()
                else:
                    r[labels[c]] = ""
            rows.append(r)
    return pd.DataFrame(rows)


def cost_table(compare):
    """Cost per (organism, system), measured rows only: training minutes and FLOPs, the
    steering vector's fit FLOPs, and per condition the forwards, PAUSE tokens and generated
    tokens per item (a column per condition when there are several)."""
    import pandas as pd

    m = _measured(compare)
    if m is None:
        return pd.DataFrame(columns=["organism", "system"])
    d = m[m["metric"].isin(_TRAINING_COST + _INFERENCE_COST)]
    if d.empty:
        return pd.DataFrame(columns=["organism", "system"])
    conds = _conditions(d)
    labels = _condition_labels(conds)
    columns = [c for c in _TRAINING_COST if (d["metric"] == c).any()]
    for metric in _INFERENCE_COST:
        here = [c for c in conds if ((d["metric"] == metric) & (d["condition"] == c)).any()]
        columns += [metric if len(conds) == 1 else f"{metric} · {labels[c]}" for c in here]
    rows = []
    for org in _organisms(d):
        for system in _systems(d[d["organism"] == org]):
            s = d[(d["organism"] == org) & (d["system"] == system)]
            r: dict = {"organism": org, "system": system}
            for _, x in s.iterrows():
                key = x["metric"] if x["metric"] in _TRAINING_COST or len(conds) == 1 else \
                    f"{x['metric']} · {labels.get(x['condition'], x['condition'])}"
                r.setdefault(key, float(x["value"]))
            rows.append(r)
    return pd.DataFrame(rows).reindex(columns=["organism", "system", *columns])


def reported_table(compare):
    """The papers' numbers (source ``reported``): model, benchmark, metric, value and where the
    paper states it.  Other models on other benchmarks: never compared with the measured grid."""
    import pandas as pd

    cols = ["model", "benchmark", "metric", "value", "quoted from"]
    r = _reported(compare)
    if r is None or r.empty:
        return pd.DataFrame(columns=cols)
    return pd.DataFrame({"model": r["system"], "benchmark": r["condition"].where(r["condition"] != "", r["group"]),
                         "metric": r["metric"], "value": r["value"], "quoted from": r["note"]})[cols].reset_index(drop=True)


def reported_figure(compare, *, title: str = "Quoted from the papers (not measured here)"):
    """The papers' reported numbers, grey bars, one panel per (benchmark, metric): other models
    on other benchmarks, so never on an axis with this project's measured ``cafe`` numbers."""
    r = _reported(compare)
    if r is None or r.empty:
        return empty_figure(title, "no reported rows")
    from plotly.subplots import make_subplots

    r = r.assign(bench=r["condition"].where(r["condition"] != "", r["group"]))
    panels = list(dict.fromkeys(zip(r["bench"], r["metric"])))
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[f"{b} · {m}" for b, m in panels],
                        horizontal_spacing=0.08)
    for j, (bench, metric) in enumerate(panels, start=1):
        d = r[(r["bench"] == bench) & (r["metric"] == metric)]
        fig.add_trace(graph_objects().Bar(
            x=list(d["system"]), y=d["value"].to_numpy(float), marker_color=_REPORTED_COLOUR, name="reported (papers)",
            legendgroup="reported", showlegend=j == 1, text=[f"{v:.3f}" for v in d["value"]], textposition="outside",
            hovertext=list(d["note"]), hovertemplate="%{x}: %{y:.3f}<br>%{hovertext}<extra>reported</extra>"),
            row=1, col=j)
    fig.update_layout(title=title + " — other models on other benchmarks; not comparable to the measured grid",
                      height=420, **LAYOUT)
    return fig


def compare_bars(compare, *, metric: str | None = None, group: str = "all", title: str | None = None):
    """One measured ``metric`` (``group``) as the systems x organisms grid: a panel per
    condition, organisms on x, a bar per system with its 95% CI.  Reported rows are left out
    (:func:`reported_figure` draws them)."""
    m = _measured(compare)
    title = title or f"Steering vs fine-tuning: {metric or 'accuracy'}"
    if m is None or m.empty:
        return empty_figure(title, "no measured compare rows")
    metric = metric or ("accuracy" if (m["metric"] == "accuracy").any() else str(m["metric"].iloc[0]))
    d = m[(m["metric"] == metric) & (m["group"] == group)]
    if d.empty:
        d = m[m["metric"] == metric]
        if d.empty:
            return empty_figure(title, f"no measured rows for metric {metric!r}")
        group = str(d["group"].iloc[0])
        d = d[d["group"] == group]
    from plotly.subplots import make_subplots

    conds = _conditions(d) or [""]
    labels = _condition_labels(conds)
    fig = make_subplots(rows=1, cols=len(conds), shared_yaxes=True,
                        subplot_titles=[labels[c] if c else "" for c in conds])
    systems, shown = _systems(d), set()
    for j, c in enumerate(conds, start=1):
        dc = d[d["condition"] == c]
        orgs = _organisms(d)
        for name, system, s in _series(dc, systems):
            _bars(fig, s, orgs, orgs, index=["organism"], name=name, colour=_colour(system, systems),
                  showlegend=name not in shown, legendgroup=name, row=1, col=j,
                  fmt=".3g" if metric in _TRAINING_COST + _INFERENCE_COST else ".3f")
            shown.add(name)
        if metric.startswith("gain"):
            fig.add_hline(y=0, line=dict(color="#999", width=1), row=1, col=j)
    if metric == "accuracy" or metric.endswith("_accuracy") or metric == "error_share":
        fig.update_yaxes(range=[0, 1.05])
    fig.update_layout(title=title if group == "all" else f"{title} ({group})", barmode="group", yaxis_title=metric,
                      **LAYOUT)
    return fig


class _Grid:
    """What every panel of :func:`compare_figure` draws from: the measured rows ``m``, the
    systems, organisms and conditions present, the condition labels, the figure and the legend
    entries already shown (each system / cause once)."""

    def __init__(self, m, fig):
        self.m, self.fig = m, fig
        self.systems, self.orgs, self.conds = _systems(m), _organisms(m), _conditions(m)
        self.labels = _condition_labels(self.conds)
        self.multi_cond = len(self.conds) > 1
        self.shown: set[str] = set()

    def legend(self, name: str) -> bool:
        """Whether ``name`` gets its legend entry here (the first time it is drawn)."""
        first = name not in self.shown
        self.shown.add(name)
        return first


def _compare_parts(m, labels) -> tuple[list[tuple[str, list[tuple[str, object]]]], int]:
    """The rows of panels of :func:`compare_figure` (``(kind, [(subplot title, key)])``) and the
    number of columns; the cost cells wrap to the width of the other rows."""
    is_ = m["metric"]
    parts: list[tuple[str, list[tuple[str, object]]]] = []
    acc = m[(is_ == "accuracy") & (m["group"] == "all")]
    if len(acc):
        parts.append(("accuracy", [(f"accuracy · {labels[c]}", c) for c in _conditions(acc)]))
    gain = m[(is_ == "gain_vs_base") & (m["group"] == "all")]
    if len(gain):
        parts.append(("gain", [(f"gain vs base · {labels[c]}", c) for c in _conditions(gain)]))
    claims = m[(is_ == "claim_accuracy") & m["group"].str.startswith("step=")]
    for o in _organisms(claims):
        co = claims[claims["organism"] == o]
        parts.append(("claims", [(f"claims by step · {o} · {labels[c]}", (o, c)) for c in _conditions(co)]))
    errors = m[is_ == "error_share"]
    if len(errors):
        parts.append(("errors", [(f"wrong answers by cause · {o}", o) for o in _organisms(errors)]))
    cost_cells = []
    if (is_ == "training_minutes").any():
        cost_cells.append(("training minutes", "training_minutes"))
    if is_.isin(["training_flops", "steering_fit_flops"]).any():
        cost_cells.append(("training + steering-fit FLOPs (log)", "flops"))
    for metric, label in (("forwards_per_item", "forwards per item"), ("pauses_per_item", "PAUSE tokens per item"),
                          ("generated_tokens", "generated tokens per item")):
        d = m[is_ == metric]
        if len(d) and not (metric == "pauses_per_item" and not np.nan_to_num(d["value"].to_numpy(float)).any()):
            cost_cells.append((label, metric))
    ncols = max([3] + [len(cells) for _, cells in parts])
    for i in range(0, len(cost_cells), ncols):  # wrapped to the width of the other rows
        parts.append(("cost", cost_cells[i:i + ncols]))
    return parts, ncols


def _panel_bars(g: _Grid, kind: str, cond, r: int, c: int) -> None:
    """Accuracy or gain over base at one condition: organisms on x, a bar per system."""
    m = g.m
    d = m[(m["metric"] == ("accuracy" if kind == "accuracy" else "gain_vs_base")) & (m["group"] == "all")]
    d = d[d["condition"] == cond]
    for name, system, s in _series(d, g.systems):
        _bars(g.fig, s, g.orgs, g.orgs, index=["organism"], name=name, colour=_colour(system, g.systems),
              showlegend=g.legend(name), legendgroup=name, row=r, col=c)
    if kind == "gain":
        g.fig.add_hline(y=0, line=dict(color="#999", width=1), row=r, col=c)


def _panel_claims(g: _Grid, key, r: int, c: int) -> None:
    """Perceptual-claim accuracy by reasoning step of one (organism, condition), a line per system."""
    m, (org, cond) = g.m, key
    claims = m[(m["metric"] == "claim_accuracy") & m["group"].str.startswith("step=")]
    d = claims[(claims["organism"] == org) & (claims["condition"] == cond)]
    for name, system, s in _series(d, g.systems):
        s = s.assign(step=s["group"].str.removeprefix("step=").astype(int)).sort_values("step")
        line_with_band(g.fig, s["step"], s["value"], s["ci_low"], s["ci_high"], name=name,
                       colour=_colour(system, g.systems), legendgroup=name, showlegend=g.legend(name),
                       row=r, col=c, n=s["n"], n_unit="claims", proportion=True)


def _panel_errors(g: _Grid, org, r: int, c: int) -> None:
    """The shares of one organism's wrong answers by cause, stacked per (condition, system)."""
    go = graph_objects()
    m = g.m
    d = m[(m["metric"] == "error_share") & (m["organism"] == org)]
    cats = [(cond, system) for cond in g.conds for system in g.systems
            if ((d["condition"] == cond) & (d["system"] == system)).any()]
    x = [[g.labels[cd] for cd, _ in cats], [sy for _, sy in cats]] if g.multi_cond else [sy for _, sy in cats]
    order = [e for e in _ERROR_COLOURS if (d["group"] == e).any()] + \
            [e for e in dict.fromkeys(d["group"]) if e not in _ERROR_COLOURS]
    base = np.zeros(len(cats))
    for k, et in enumerate(order):
        # stacked (one offset group, each cause on the ones before); one answer
        # format per (condition, system): the first; the CI is in the hover
        e = d[d["group"] == et].drop_duplicates(["condition", "system"]).set_index(["condition", "system"])
        e = e.reindex(cats)
        v = e["value"].to_numpy(float)
        custom = np.stack([e["ci_low"].to_numpy(float), e["ci_high"].to_numpy(float),
                           e["n"].to_numpy(float)], -1)
        g.fig.add_trace(go.Bar(
            x=x, y=v, base=base.copy(), offsetgroup="errors", name=et, legendgroup=f"error: {et}",
            showlegend=g.legend(f"error: {et}"), marker_color=_ERROR_COLOURS.get(et, PALETTE[(k + 5) % 10]),
            customdata=custom,
            hovertemplate=f"{et}<br>%{{x}}: %{{y:.3f}} of the wrong answers<br>95% CI "
                          f"[%{{customdata[0]:.3f}}, %{{customdata[1]:.3f}}]<br>n wrong=%{{customdata[2]:.0f}}"
                          "<extra></extra>"), row=r, col=c)
        base = base + np.nan_to_num(v)


def _panel_cost(g: _Grid, key: str, r: int, c: int) -> None:
    """One cost metric (``flops``: training + steering-fit FLOPs summed, log axis), a bar per system."""
    m, orgs = g.m, g.orgs
    is_ = m["metric"]
    if key == "flops":
        d = m[is_.isin(["training_flops", "steering_fit_flops"])]
        d = d.groupby(["organism", "system"], as_index=False, sort=False).agg(value=("value", "sum"))
        d = d.assign(ci_low=np.nan, ci_high=np.nan, n=0, format="")
        d.loc[d["value"] <= 0, "value"] = np.nan  # nothing trained: no bar on a log axis
        xkeys, x, index = orgs, orgs, ["organism"]
    elif key == "training_minutes":
        d = m[is_ == key].assign(format="")
        xkeys, x, index = orgs, orgs, ["organism"]
    else:
        d = m[is_ == key].assign(format="")
        if g.multi_cond:
            xkeys = [(o, cd) for o in orgs for cd in g.conds
                     if ((d["organism"] == o) & (d["condition"] == cd)).any()]
            x, index = [[o for o, _ in xkeys], [g.labels[cd] for _, cd in xkeys]], ["organism", "condition"]
        else:
            xkeys, x, index = orgs, orgs, ["organism"]
    for name, system, s in _series(d, g.systems):
        _bars(g.fig, s, xkeys, x, index=index, name=name, colour=_colour(system, g.systems),
              showlegend=g.legend(name), legendgroup=name, row=r, col=c, fmt=".3g")
    if key == "flops":
        g.fig.update_yaxes(type="log", row=r, col=c)


def _format_row(fig, kind: str, n_cells: int, r: int) -> None:
    """The y ranges, step axes and the row's y title of one row of :func:`compare_figure`."""
    if kind == "accuracy":
        fig.update_yaxes(range=[0, 1.05], row=r, col=1)
    for c in range(1, n_cells + 1):
        if kind in ("accuracy", "claims", "errors"):
            fig.update_yaxes(range=[0, 1.05], row=r, col=c)
        if kind == "claims":
            fig.update_xaxes(title_text="reasoning step", dtick=1, row=r, col=c)
    fig.update_yaxes(title_text={"accuracy": "accuracy", "gain": "Δ accuracy", "claims": "claim accuracy",
                                 "errors": "share of wrong", "cost": ""}[kind], row=r, col=1)


def compare_figure(table):
    """The measured grid of ``compare.parquet`` in one figure, a row of panels per part present:

    1. accuracy (95% CI) per condition: organisms on x, a bar per system;
    2. gain over base per condition (paired-bootstrap 95% CI);
    3. perceptual-claim accuracy by reasoning step (95% CI bands), a row per organism, a panel
       per condition, a line per system;
    4. shares of the wrong answers by cause (perception / reasoning / unverifiable, stacked; CIs
       in the hover), a panel per organism;
    5. cost: training minutes, training + steering-fit FLOPs (log), and per condition the
       forwards, PAUSE tokens and generated tokens per item.

    Any subset of systems, organisms and conditions draws (a missing part is left out).  The
    papers' reported numbers are not drawn here: :func:`reported_figure`."""
    title = "Steering vs fine-tuning on the model organisms (measured, 95% CIs)"
    m = _measured(table)
    if m is None or m.empty:
        return empty_figure(title, "no measured compare rows")
    from plotly.subplots import make_subplots

    parts, ncols = _compare_parts(m, _condition_labels(_conditions(m)))
    if not parts:
        return empty_figure(title, "no accuracy, gain, claim, error-share or cost rows")
    specs = [[{} if j < len(cells) else None for j in range(ncols)] for _, cells in parts]
    fig = make_subplots(rows=len(parts), cols=ncols, specs=specs, vertical_spacing=min(0.12, 0.5 / len(parts)),
                        horizontal_spacing=min(0.08, 0.3 / ncols),
                        subplot_titles=[t for _, cells in parts for t, _ in cells])
    g = _Grid(m, fig)
    for r, (kind, cells) in enumerate(parts, start=1):
        for c, (_, key) in enumerate(cells, start=1):
            if kind in ("accuracy", "gain"):
                _panel_bars(g, kind, key, r, c)
            elif kind == "claims":
                _panel_claims(g, key, r, c)
            elif kind == "errors":
                _panel_errors(g, key, r, c)
            else:
                _panel_cost(g, key, r, c)
        _format_row(fig, kind, len(cells), r)
    fig.update_layout(title=title, barmode="group", height=300 * len(parts) + 140,
                      legend=dict(orientation="h", yanchor="top", y=-0.25 / len(parts)), **LAYOUT)
    return fig
