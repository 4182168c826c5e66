"""The probe stage's pages and summary: ``probes_by_layer.html``, ``probes_by_step.html``
(:func:`probe_figures`) and the ``attributes`` of ``probe_summary.json`` (:func:`probe_summary`)."""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from auralens.probes.collect import LM_SITE
from auralens.probes.figures import accuracy_by_layer, accuracy_by_step, best_layers

__all__ = ["html_page", "probe_figures", "probe_scores", "probe_summary"]


def html_page(title: str, panels: list[tuple[str, Any]], note: str = "") -> str:
    """One self-contained HTML page: ``title``, an optional ``note``, and one heading + plotly
    figure per panel (plotly.js embedded once, in the first: the page works offline)."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title></head><body style='font-family:sans-serif'>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if note:
        parts.append(f"<p>{html.escape(note)}</p>")
    for i, (heading, fig) in enumerate(panels):
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        # plotly.js embedded once (first panel): the page works offline
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    parts.append("</body></html>")
    return "\n".join(parts)


def probe_figures(table) -> tuple[str, str]:
    """The two pages of a probe run, ``(probes_by_layer.html, probes_by_step.html)``: score by layer per
    (site, position), and score by reasoning step at each attribute's best layer."""
    shown = table[table["split"] == "report"] if (table["split"] == "report").any() else table  # the plotted split
    prompt = table[table["step"].isna()]
    layer_panels = []
    for (site, position), _ in shown[shown["step"].isna()].groupby(["site", "position"], sort=False):
        fig = accuracy_by_layer(prompt, site=site, position=position)
        layer_panels.append((f"{site} · {position}", fig))
    stepped = table[table["step"].notna()]
    step_panels = []
    for (site, position), _ in shown[shown["step"].notna()].groupby(["site", "position"], sort=False):
        fig = accuracy_by_step(stepped, site=site, position=position)
        step_panels.append((f"{site} · {position}", fig))
    by_layer = html_page(
        "Probe score by layer", layer_panels,
        "" if layer_panels else "No prompt-position probes could be fitted (see probe_summary.json).",
    )
    by_step = html_page(
        "Probe score by reasoning step", step_panels,
        "Report split; each attribute at its best layer (mean accuracy over steps on the select split); dashed: control task, dotted: chance."
        if step_panels else
        "No reasoning-step probes: step_mean was not collected, or no step had enough items "
        "(see probe_summary.json, 'skipped' and 'skipped_steps').",
    )
    return by_layer, by_step


def probe_scores(r) -> dict[str, Any]:
    """A probe result's scores as JSON: accuracy, control accuracy, selectivity, chance, CI and n."""
    return {"accuracy": float(r.accuracy), "control_accuracy": float(r.control_accuracy),
            "selectivity": float(r.selectivity), "chance": float(r.chance),
            "ci": [float(r.ci_low), float(r.ci_high)], "n": int(r.n)}


def probe_summary(table, best: dict[str, Any], notes: dict[str, Any]) -> dict[str, Any]:
    """``probe_summary.json``'s ``attributes`` (per attribute: ``best``, the report split's scores
    at the location the select split chose; ``selection``, the select split's own; ``decay`` over
    reasoning steps at the select split's best layer, with the report split's curve) plus ``notes``."""
    out: dict[str, Any] = {}
    stepped = table[table["step"].notna()]
    splits = set(table["split"].astype(str))
    choose_on, report_on = ("select", "report") if "select" in splits else ("all", "all")
    for attribute, (row, reported) in best.items():
        loc = {"site": row.site, "layer": int(row.layer), "position": row.position}
        entry: dict[str, Any] = {
            # the report split's scores at the location the select split chose
            "best": {**loc, **(probe_scores(reported.result) if reported is not None else
                               {"accuracy": None, "control_accuracy": None, "selectivity": None})},
            "selection": {**loc, **probe_scores(row.result)},
            "decay": None,
        }
        mine = stepped[(stepped["attribute"] == attribute) & (stepped["site"] == LM_SITE)]
        for position, sub in mine.groupby("position", sort=False):
            chooser, shown = sub[sub["split"] == choose_on], sub[sub["split"] == report_on]
            if chooser.empty or shown.empty:
                continue
            layer = best_layers(chooser, site=LM_SITE, position=position)[attribute]
            at = shown[shown["layer"] == layer].sort_values("step")
            if at.empty:
                continue
            steps = [int(s) for s in at["step"]]
            acc = [float(a) for a in at["accuracy"]]
            decay = {"position": position, "layer": int(layer), "steps": steps, "accuracy": acc,
                     "selectivity": [float(s) for s in at["selectivity"]]}
            if len(steps) >= 2:
                slope = float(np.polyfit(steps, acc, 1)[0])
                decay.update(slope_per_step=slope, first_minus_last=acc[0] - acc[-1], falls=bool(slope < 0))
            else:
                decay.update(slope_per_step=None, first_minus_last=None, falls=None)
            entry.setdefault("decay_by_position", {})[position] = decay
        by_pos = entry.pop("decay_by_position", {})
        if by_pos:
            entry["decay"] = next(iter(by_pos.values()))  # the (first format's) step position
            if len(by_pos) > 1:
                entry["decay_by_position"] = by_pos
        out[attribute] = entry
    return {"attributes": out, **notes}
