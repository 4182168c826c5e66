"""Steering vs fine-tuning on the model organisms: the measured systems x organisms grid
(accuracy per cue condition with 95% CIs, gains over base with paired CIs), claims, error
shares and cost, from ``compare/compare.parquet``; the papers' reported numbers in their own
panel, never on an axis with the measured ones."""

import streamlit as st

from auralens.dashboards import ui
from auralens.interp.plotting import MIN_N_NOTE
from auralens.steering.figures import (
    compare_bars,
    compare_figure,
    compare_grid,
    compare_table,
    cost_table,
    reported_figure,
    reported_table,
)

ctx = ui.context()
st.title("Steering vs fine-tuning")
run = ui.require(ctx, "compare")
comp = ui.table(run, "compare", "compare.parquet")
if comp is None or comp.empty:
    st.info("The compare stage has not written compare.parquet yet.")
    st.stop()
source = comp["source"].astype(str) if "source" in comp else None
measured = comp if source is None else comp[source != "reported"]
reported = comp.iloc[:0] if source is None else comp[source == "reported"]

st.header("Measured: systems × organisms")
if measured.empty:
    st.caption("This compare run has no measured rows.")
else:
    st.caption("Each cell: value [95% CI] on the held-out test items of that condition; gains are paired bootstraps "
               "against base on the same items. " + MIN_N_NOTE)
    st.subheader("Accuracy")
    st.dataframe(compare_grid(measured, metric="accuracy"), hide_index=True, width="stretch")
    gains = compare_grid(measured, metric="gain_vs_base")
    if len(gains):
        st.subheader("Gain over base (paired)")
        st.dataframe(gains, hide_index=True, width="stretch")
    st.plotly_chart(compare_figure(measured), key="cmp_grid")
    metrics = [m for m in dict.fromkeys(measured["metric"])]
    metric = st.selectbox("One metric as the grid", metrics, key="cmp_metric",
                          index=metrics.index("accuracy") if "accuracy" in metrics else 0)
    groups = list(dict.fromkeys(measured.loc[measured["metric"] == metric, "group"]))
    group = st.selectbox("Group", groups, key="cmp_group", index=groups.index("all") if "all" in groups else 0)
    st.plotly_chart(compare_bars(measured, metric=metric, group=group), key="cmp_bars")
    cost = cost_table(measured)
    if len(cost):
        st.subheader("Cost")
        st.caption("Training minutes and FLOPs (0: nothing trained), the steering vector's fit FLOPs, and per "
                   "condition the forward passes, PAUSE tokens and generated tokens per item.")
        st.dataframe(cost, hide_index=True, width="stretch")
    with st.expander("Every measured number"):
        st.dataframe(compare_table(measured), hide_index=True, width="stretch")

st.header("Quoted from the papers (not measured here)")
if reported.empty:
    st.caption("No reported rows in this run.")
else:
    st.caption("Other models on other benchmarks (MMAU, CAFE perception), as the papers state them: different "
               "quantities from the measured cafe accuracies above, so never drawn on the same axis.")
    st.dataframe(reported_table(reported), hide_index=True, width="stretch")
    st.plotly_chart(reported_figure(reported), key="cmp_reported")
