"""The figures and tables of ``compare.parquet`` (:mod:`auralens.steering.figures`): the measured systems
x organisms x conditions grid for any subset of it, and the papers' reported numbers kept out of
it (drawn only by :func:`reported_figure` / :func:`reported_table`).  Tables from
:func:`auralens.dashboards.synthetic.write_synthetic_run` (the :data:`auralens.interp.schemas.COMPARE` schema)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("plotly")

from auralens.dashboards.synthetic import write_synthetic_run  # noqa: E402
from auralens.interp.papers import REPORTED  # noqa: E402
from auralens.interp.schemas import COMPARE, SYSTEMS  # noqa: E402
from auralens.steering.figures import (  # noqa: E402
    compare_bars,
    compare_figure,
    compare_grid,
    compare_table,
    condition_label,
    cost_table,
    reported_figure,
    reported_table,
)

CONDITIONS = ("cafe-neutral:test", "cafe-congruent:test", "cafe-conflict:test")


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> pd.DataFrame:
    run = write_synthetic_run(tmp_path_factory.mktemp("cmp") / "syn", stages=("compare",))
    t = pd.read_parquet(run / "compare" / "compare.parquet")
    COMPARE.check(t)
    assert json.loads((run / "compare" / "summary.json").read_text())["organisms"]
    return t


def _strings(fig) -> str:
    """Every name, x label, hover text and title of ``fig`` as one string."""
    return json.dumps(fig.to_plotly_json(), default=str)


def _reported_words() -> set[str]:
    return {r.system for r in REPORTED} | {r.group for r in REPORTED}


def test_synthetic_table_is_the_new_grid(table):
    m = table[table["source"] == "measured"]
    assert tuple(dict.fromkeys(m["system"])) == SYSTEMS
    assert set(m["organism"]) == {"micro", "micro-decay"}
    assert set(m["condition"]) == {*CONDITIONS, ""}
    cost = m[m["condition"] == ""]
    assert set(cost["metric"]) == {"training_flops", "training_minutes", "steering_fit_flops", "steering_minutes"}
    assert set(cost["format"]) == {""}
    assert {"accuracy", "gain_vs_base", "gain_vs_unsteered", "claim_accuracy", "claim_onset", "claim_gap",
            "error_share", "specialist_yield", "yield_slope_specialists", "yield_slope_all_heads",
            "generated_tokens", "forwards_per_item", "pauses_per_item"} <= set(m["metric"])
    r = table[table["source"] == "reported"]
    assert len(r) == len(REPORTED) and set(r["organism"]) == {""} and set(r["format"]) == {""}


def test_full_grid_figure_has_every_part_and_no_reported_row(table):
    fig = compare_figure(table)
    titles = [a.text for a in fig.layout.annotations]
    for label in ("neutral", "congruent", "conflict"):
        assert f"accuracy · {label}" in titles and f"gain vs base · {label}" in titles
        assert f"claims by step · micro-decay · {label}" in titles
    assert {"wrong answers by cause · micro", "training minutes", "forwards per item"} <= set(titles)
    # one legend entry per system, coloured the same in every panel
    legend = [t.name for t in fig.data if t.showlegend is not False and t.type == "bar" and t.name in SYSTEMS]
    assert legend == list(SYSTEMS)
    # the accuracy bars are the table's values with their CIs, organisms on x
    acc = table[(table["metric"] == "accuracy") & (table["group"] == "all") & (table["condition"] == CONDITIONS[2])]
    bars = [t for t in fig.data if t.type == "bar" and t.xaxis == "x3"]
    assert [b.name for b in bars] == list(SYSTEMS)
    for b in bars:
        want = acc[acc["system"] == b.name].set_index("organism").loc[list(b.x)]
        np.testing.assert_allclose(b.y, want["value"])
        np.testing.assert_allclose(np.asarray(b.error_y.array) + b.y, want["ci_high"])
    text = _strings(fig)
    for word in _reported_words():
        assert word not in text, word


def test_subset_one_organism_two_systems_one_condition(table):
    sub = table[(table["organism"].isin(["micro", ""])) & table["system"].isin(["base", "mpar2"])
                & table["condition"].isin(["cafe-conflict:test", ""])]
    fig = compare_figure(sub)
    titles = [a.text for a in fig.layout.annotations]
    assert "accuracy · conflict" in titles and "gain vs base · conflict" in titles
    assert not any("neutral" in t or "micro-decay" in t for t in titles)
    names = {t.name for t in fig.data if t.type == "bar"}
    assert {"base", "mpar2"} <= names and not names & {"base+steering", "mpar2+steering", "hyper"}
    # only accuracy: one row; no steering, no claims (direct answers), no cost
    only = sub[(sub["metric"] == "accuracy") & (sub["source"] == "measured")]
    fig = compare_figure(only)
    assert [a.text for a in fig.layout.annotations] == ["accuracy · conflict"]
    direct = sub[~sub["metric"].isin(["claim_accuracy", "claim_onset", "claim_gap"]) & (sub["source"] == "measured")]
    assert not any("claims" in a.text for a in compare_figure(direct).layout.annotations)


def test_other_condition_names_and_models(table):
    """An MMAU run: a file condition and an HF id as the organism, one system pair, no scenes."""
    m = table[(table["source"] == "measured") & (table["organism"] == "micro")
              & (table["condition"] == "cafe-neutral:test") & table["metric"].isin(["accuracy", "gain_vs_base"])
              & table["system"].isin(["base", "base+steering"])]
    mmau = m.assign(organism="Qwen/Qwen2-Audio-7B-Instruct", condition="/data/mmau-test-mini.json:test@3")
    fig = compare_figure(pd.concat([mmau, table[table["source"] == "reported"]]))
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["accuracy · mmau-test-mini", "gain vs base · mmau-test-mini"]
    assert list(fig.data[0].x) == ["Qwen/Qwen2-Audio-7B-Instruct"]
    assert "Qwen2.5-Omni-7B" not in _strings(fig)
    assert condition_label("cafe-conflict:test") == "conflict" and condition_label("MMAU") == "MMAU"
    assert condition_label("") == "—"


def test_empty_and_reported_only_tables_give_empty_state_figures(table):
    for t in (None, table.iloc[:0], table[table["source"] == "reported"]):
        fig = compare_figure(t)
        assert fig.layout.annotations and not fig.data
    assert compare_grid(table[table["source"] == "reported"]).empty
    assert reported_figure(table[table["source"] == "measured"]).layout.annotations


def test_tables_keep_measured_and_reported_apart(table):
    grid = compare_grid(table)
    assert list(grid.columns) == ["organism", "system", "format", "neutral", "congruent", "conflict"]
    assert len(grid) == 2 * len(SYSTEMS)
    cell = grid.iloc[0]["conflict"]
    assert cell.count("[") == 1 and cell.endswith("]")
    gains = compare_grid(table, metric="gain_vs_base")
    assert "base" not in set(gains["system"])
    cost = cost_table(table)
    assert {"training_minutes", "training_flops", "steering_fit_flops", "forwards_per_item · conflict"} <= set(cost)
    assert len(cost) == 2 * len(SYSTEMS)
    rep = reported_table(table)
    assert len(rep) == len(REPORTED) and set(rep["benchmark"]) == {"MMAU", "CAFE perception"}
    rep_fig = reported_figure(table)
    assert {t.name for t in rep_fig.data} == {"reported (papers)"}
    assert all(t.marker.color == "#888888" for t in rep_fig.data)
    assert "micro" not in {x for t in rep_fig.data for x in t.x}
    full = compare_table(table)
    assert list(full["source"]) == ["measured"] * (len(full) - len(REPORTED)) + ["reported"] * len(REPORTED)
    bars = compare_bars(table, metric="accuracy")
    assert all(set(t.x) <= {"micro", "micro-decay"} for t in bars.data)


def test_a_format_per_organism_stays_one_series_two_formats_split(table):
    """Each base model answers in its own format (micro direct, micro-decay cot): still one
    ``base`` series; one system in two formats on the same organism: a series per format."""
    m = table[(table["source"] == "measured") & (table["metric"] == "accuracy") & (table["group"] == "all")
              & table["system"].isin(["base", "mpar2"])].copy()
    m.loc[(m["system"] == "base") & (m["organism"] == "micro"), "format"] = "direct"
    fig = compare_figure(m)
    assert [t.name for t in fig.data if t.xaxis == "x"] == ["base", "mpar2"]
    grid = compare_grid(m)
    assert list(grid.loc[grid["system"] == "base", "format"]) == ["direct", "cot"]
    both = pd.concat([m, m[m["system"] == "mpar2"].assign(format="direct", value=0.1)])
    names = [t.name for t in compare_figure(both).data if t.xaxis == "x"]
    assert names == ["base", "mpar2 · structured", "mpar2 · direct"]
