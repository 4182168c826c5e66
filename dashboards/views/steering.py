"""Steering: accuracy (or gain) against the strength β, per vector, method, layer and positions (a run
written with the former column name ``alpha`` reads as β)."""

import streamlit as st

from auralens.dashboards import ui
from auralens.steering.figures import steering_sweep

ctx = ui.context()
st.title("Steering")
run = ui.require(ctx, "steer")
steer = ui.table(run, "steer", "steering.parquet")
if steer is None or steer.empty:
    st.info("The steer stage has not written steering.parquet yet.")
    st.stop()
if "beta" not in steer and "alpha" in steer:
    steer = steer.rename(columns={"alpha": "beta"})
c1, c2, c3 = st.columns(3)
cats = sorted(steer["category"].astype(str).unique(), key=lambda c: (c != "all", c))
category = c1.selectbox("Category", cats, key="steer_cat")
y = c2.radio("Show", ["accuracy", "delta"], key="steer_y", format_func=lambda v: "accuracy" if v == "accuracy" else "gain vs β=0")
layers = sorted(int(v) for v in steer["layer"].unique())
chosen_layers = c3.multiselect("Layers", layers, default=layers, key="steer_layers")
vectors = list(dict.fromkeys(steer["vector"]))
chosen = st.multiselect("Vectors", vectors, default=vectors, key="steer_vectors")
st.plotly_chart(steering_sweep(steer, category=category, y=y, vectors=chosen, layers=chosen_layers), key="steer_sweep")
d = steer[steer["category"].astype(str) == category]
best = d.loc[d.groupby([c for c in ("vector", "method", "layer", "positions", "format") if c in d], dropna=False)["delta"].idxmax()]
st.markdown("**Best β per vector** (largest gain over β=0)")
st.dataframe(best.sort_values("delta", ascending=False), hide_index=True)
