"""The figure rules of issue 25 on the figure builders themselves (no app): n in the hover, the
minimum-n rule, no zero-width interval under n = 30 (an accuracy gets Wilson's), faceted probe
panels, readable token colours.  The same rules on the demo's real run folders, through the
Streamlit pages, are in test_dashboard.py (the tests on ``demo_run``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from auralens.interp import figures
from auralens.interp.plotting import GREY, MIN_N, ZERO_WIDTH_N, honest_interval
from auralens.probes.figures import accuracy_by_layer
from auralens.steering.figures import compare_figure


def _line(fig, name: str):
    return next(t for t in fig.data if t.name == name)


def test_five_of_five_right_is_wilson_not_certainty():
    # an old run folder (percentile bootstrap) wrote [1, 1] for 5 of 5 right
    lo, hi = honest_interval([1.0, 0.5], [1.0, 0.2], [1.0, 0.8], [5, 12], proportion=True)
    assert lo[0] == pytest.approx(0.5655, abs=1e-3) and hi[0] == 1.0 and lo[0] < 0.6
    assert (lo[1], hi[1]) == (0.2, 0.8)  # a real interval is kept
    # not an accuracy: no band rather than a zero-width one; at n >= 30 the table's own interval stands
    lo, hi = honest_interval([0.3, 0.3], [0.3, 0.3], [0.3, 0.3], [5, ZERO_WIDTH_N])
    assert np.isnan(lo[0]) and np.isnan(hi[0]) and lo[1] == hi[1] == 0.3


def test_claim_curve_hover_has_n_and_wilson_and_greys_small_steps():
    table = pd.DataFrame({"step": [0, 1, 2], "accuracy": [0.8, 1.0, 0.5], "ci_low": [0.7, 1.0, 0.4],
                          "ci_high": [0.9, 1.0, 0.6], "n_claims": [60, 5, 40], "n_items": [40, 5, 40]})
    fig = figures.claim_accuracy_curve(table)
    line = _line(fig, "claim accuracy")
    ci, n = zip(*line.customdata)
    assert n[1] == f"n=5 items · 5 claims (below the minimum n of {MIN_N}: grey)" and n[0] == "n=40 items · 60 claims"
    assert ci[1] == "95% CI [0.566, 1.000]"
    assert list(line.marker.symbol) == ["circle", "circle-open", "circle"] and line.marker.color[1] == GREY
    band = _line(fig, "claim accuracy 95% CI")
    # the grey step gets no band: two pieces (steps 0 and 2), never across the gap
    assert list(band.x) == [0.0, 0.0, None, 2.0, 2.0]


def test_compare_claims_from_one_claim_are_grey():
    """The compare page's claims-by-step panel: the HyPeR arm at 0.0 from one claim per step is
    drawn grey, with n in the hover, and no zero-width band."""
    rows = []
    for step, (v, n) in enumerate([(0.6, 40), (0.0, 1), (0.0, 1)]):
        rows.append({"organism": "micro", "system": "hyper", "condition": "cafe-conflict:test", "format": "cot",
                     "metric": "claim_accuracy", "group": f"step={step}", "value": v, "ci_low": v - 0.15 * (n > 1),
                     "ci_high": v + 0.15 * (n > 1),
                     "n": n, "source": "measured", "note": ""})
    fig = compare_figure(pd.DataFrame(rows))
    line = _line(fig, "hyper")
    assert [c[1] for c in line.customdata][1].startswith("n=1 claims (below the minimum")
    assert [c[0] for c in line.customdata][1] == "95% CI [0.000, 0.793]"  # Wilson of 0 of 1
    assert list(line.marker.symbol) == ["circle", "circle-open", "circle-open"]
    band = _line(fig, "hyper 95% CI")  # the band covers step 0 only (40 claims), not the grey steps
    assert list(band.x) == [0.0, 0.0] and list(band.y) == pytest.approx([0.75, 0.45])


def test_probe_figures_are_faceted_one_panel_per_attribute():
    attrs = [f"attr{i}" for i in range(7)]
    rows = [dict(site="s", layer=layer, position="last", step=None, attribute=a, accuracy=0.5 + 0.05 * layer,
                 control_accuracy=0.4, selectivity=0.1, chance=0.33, ci_low=0.4, ci_high=0.7, n=12 if a != "attr6" else 4,
                 split="all") for a in attrs for layer in range(4)]
    fig = accuracy_by_layer(pd.DataFrame(rows))
    assert fig.layout.showlegend is False
    axes = {t.name.split(" ")[0]: t.xaxis for t in fig.data}
    assert len(set(axes.values())) == 7 and [a.text for a in fig.layout.annotations][:7] == attrs
    small = _line(fig, "attr6")
    assert set(small.marker.symbol) == {"circle-open"} and "n=4 items" in small.customdata[0][1]
    assert not [t for t in fig.data if t.name == "attr6 95% CI"]
    assert all(fig.layout[k].dtick == 1 for k in fig.layout if k.startswith("xaxis"))


@pytest.mark.parametrize("v", np.linspace(0, 1, 21))
def test_token_text_contrast_is_readable_on_every_cell(v):
    html = figures.token_html(["a", "b"], [v, 1.0])
    bg = tuple(int(c) for c in html.split("background:rgb(")[1].split(")")[0].split(","))
    fg = html.split(";color:")[1].split(";")[0]
    assert figures.contrast_ratio(bg, (255, 255, 255) if fg == "white" else (0, 0, 0)) >= 4.5
    if v == 1.0:
        assert fg == "white"
