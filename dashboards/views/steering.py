"""Steering: the held-out result first — from the steer run's ``summary.json``: whether the
dev/test protocol steered or declined, the setting chosen on the dev split, its gain on the test
split with its CI and n, beside the controls (random direction, random heads, the random-direction
null's percentile, the model without the deficit) — then, labelled "dev" and second, the sweep
the choice was made on: accuracy (or gain) against the strength β, per vector, method, layer and
positions (a run written with the former column name ``alpha`` reads as β)."""

import streamlit as st

from auralens.dashboards import data, ui
from auralens.dashboards.summaries import steer_headline
from auralens.interp.plotting import MIN_N_NOTE
from auralens.steering.figures import steering_sweep

ctx = ui.context()
st.title("Steering")
run = ui.require(ctx, "steer")
st.caption(MIN_N_NOTE)
steer = ui.table(run, "steer", "steering.parquet")
if steer is None or steer.empty:
    st.info("The steer stage has not written steering.parquet yet.")
    st.stop()
if "beta" not in steer and "alpha" in steer:
    steer = steer.rename(columns={"alpha": "beta"})
head = steer_headline(data.read_summary(run.folder("steer")))
if head.held_out:
    st.subheader("Held-out test result")
    (st.warning if head.decision == "decline" else st.markdown)(head.setting)
    st.markdown(head.headline)
    st.dataframe(head.rows, hide_index=True, key="steer_held_out")
    for line in (head.random, head.cost):
        if line:
            st.markdown(line)
    if head.dev:
        st.caption(head.dev)
    st.subheader("Dev-split sweep (the selection, not the result)")
    split = "dev"
else:
    for note in head.notes[:1]:
        st.warning(note)
    split = ""
c1, c2, c3 = st.columns(3)
cats = sorted(steer["category"].astype(str).unique(), key=lambda c: (c != "all", c))
category = c1.selectbox("Category", cats, key="steer_cat")
y = c2.radio("Show", ["accuracy", "delta"], key="steer_y", format_func=lambda v: "accuracy" if v == "accuracy" else "gain vs β=0")
layers = sorted(int(v) for v in steer["layer"].unique())
chosen_layers = c3.multiselect("Layers", layers, default=layers, key="steer_layers")
vectors = list(dict.fromkeys(steer["vector"]))
chosen = st.multiselect("Vectors", vectors, default=vectors, key="steer_vectors")
what = "accuracy vs β" if y == "accuracy" else "gain over β=0 vs β"
title = f"Dev split (selection only): {what}" if split else f"Steering (in-sample): {what}"
st.plotly_chart(steering_sweep(steer, category=category, y=y, vectors=chosen, layers=chosen_layers, title=title),
                key="steer_sweep")
d = steer[steer["category"].astype(str) == category]
best = d.loc[d.groupby([c for c in ("vector", "method", "layer", "positions", "format") if c in d], dropna=False)["delta"].idxmax()]
st.markdown("**Best β per vector on the dev split** (largest dev gain over β=0; the selection, not the result)"
            if split else "**Best β per vector** (largest gain over β=0, chosen on these same items: optimistic)")
st.dataframe(best.sort_values("delta", ascending=False), hide_index=True)
