"""Steering vs fine-tuning (MPAR²-style): the compare table and its bars."""

import streamlit as st

from dashboards import ui
from steering.figures import compare_bars, compare_table

ctx = ui.context()
st.title("Steering vs fine-tuning")
run = ui.require(ctx, "compare")
comp = ui.table(run, "compare", "compare.parquet")
if comp is None or comp.empty:
    st.info("The compare stage has not written compare.parquet yet.")
    st.stop()
st.dataframe(compare_table(comp), hide_index=True, width="stretch")
metric = st.selectbox("Metric", list(dict.fromkeys(comp["metric"])), key="cmp_metric")
st.plotly_chart(compare_bars(comp, metric=metric), key="cmp_bars")
if "source" in comp and (comp["source"] == "reported").any():
    st.caption("Hatched bars are numbers reported in papers (other models and benchmarks), not measured in this run.")
