"""Steering: the held-out result first (the setting chosen on the dev split, its gain on the test
split with its CI, beside the controls), then the sweep the choice was made on: accuracy (or gain)
against the strength β, per vector, method, layer and positions (a run written with the former
column name ``alpha`` reads as β)."""

import streamlit as st

from auralens.dashboards import data, ui
from auralens.steering.figures import steering_sweep


def _ci(ci) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci and len(ci) == 2 and None not in ci else "[n/a]"


def held_out(summary: dict) -> None:
    """The dev/test protocol's reported result: what was chosen on dev, what it did on test."""
    sel, test = summary.get("selected") or {}, summary.get("test") or {}
    st.subheader("Held-out test result")
    st.markdown(
        f"**Chosen on the dev split:** {sel.get('vector')} ({sel.get('mode', '')}), layer {sel.get('layer')}, "
        f"β = {sel.get('beta')}, positions {sel.get('positions')}.  "
        f"**On the test split** (n = {test.get('n')}): accuracy {test.get('base', float('nan')):.3f} → "
        f"{test.get('steered', float('nan')):.3f}, gain **{test.get('gain', float('nan')):+.3f}** "
        f"95% CI {_ci(test.get('ci'))}."
    )
    rows = [{"system": "vector (chosen on dev)", "gain on test": test.get("gain"), "95% CI": _ci(test.get("ci")),
             "vector − control": None, "vector − control 95% CI": ""}]
    for name, c in (summary.get("controls") or {}).items():
        if "skipped" in c:
            rows.append({"system": f"control: {name}", "gain on test": None, "95% CI": f"skipped: {c['skipped']}",
                         "vector − control": None, "vector − control 95% CI": ""})
            continue
        rows.append({"system": f"control: {name}", "gain on test": c.get("gain"), "95% CI": _ci(c.get("ci")),
                     "vector − control": c.get("vector_minus_control"),
                     "vector − control 95% CI": _ci(c.get("vector_minus_control_ci"))})
    st.dataframe(rows, hide_index=True, key="steer_held_out")
    dev = sel.get("dev") or {}
    if dev:
        st.caption(f"The dev split's gain of this setting, {dev.get('gain', float('nan')):+.3f} {_ci(dev.get('ci'))} "
                   f"(n = {dev.get('n')}), is what chose it; it is not the result.")

ctx = ui.context()
st.title("Steering")
run = ui.require(ctx, "steer")
steer = ui.table(run, "steer", "steering.parquet")
if steer is None or steer.empty:
    st.info("The steer stage has not written steering.parquet yet.")
    st.stop()
if "beta" not in steer and "alpha" in steer:
    steer = steer.rename(columns={"alpha": "beta"})
summary = data.read_summary(run.folder("steer"))
if summary.get("test"):
    held_out(summary)
    st.subheader("Dev-split sweep (the selection, not the result)")
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
st.markdown("**Best β per vector** (largest gain over β=0" + (", on the dev split)" if summary.get("test") else ")"))
st.dataframe(best.sort_values("delta", ascending=False), hide_index=True)
