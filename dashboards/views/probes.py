"""Probe accuracy by layer, one small panel per attribute (with control task and chance), and by step;
the held-out (report-split) scores where the run has them, n in every hover."""

import streamlit as st

from auralens.dashboards import ui
from auralens.interp.plotting import MIN_N_NOTE
from auralens.probes.figures import accuracy_by_layer, accuracy_by_step, step_label

ctx = ui.context()
st.title("Probes")
run = ui.require(ctx, "probe")
probes = ui.table(run, "probe", "probes.parquet")
if probes is None or probes.empty:
    st.info("The probe stage has not written probes.parquet yet.")
    st.stop()
if "split" in probes and {"select", "report"} <= set(probes["split"].astype(str)):
    st.markdown("**Held-out scores:** every figure draws the *report* split (items disjoint from the *select* split "
                "that chose each attribute's best layer and position); the select split's scores are in the table only.")
st.caption("One small panel per attribute (solid: probe score in its 95% CI band; dashed: control task; dotted: "
           "chance). " + MIN_N_NOTE)
c1, c2, c3, c4 = st.columns(4)
site = c1.selectbox("Site", sorted(probes["site"].astype(str).unique()), key="probe_site")
d = probes[probes["site"].astype(str) == site]
position = c2.selectbox("Position", sorted(d["position"].astype(str).unique()), key="probe_pos")
d = d[d["position"].astype(str) == position]
# the picker shows labels ("—" for no step); the figure is given the step itself
by_label = {step_label(v): v for v in d["step"].astype(object).unique()}
label = c3.selectbox("Reasoning step", sorted(by_label, key=lambda s: (s != "—", s.zfill(6))), key="probe_step")
step = None if label == "—" else by_label[label]
metric = c4.radio("Metric", ["accuracy", "selectivity"], key="probe_metric")
attrs = st.multiselect("Attributes", list(dict.fromkeys(d["attribute"])), default=list(dict.fromkeys(d["attribute"])),
                       key="probe_attrs")
st.plotly_chart(accuracy_by_layer(d, step=step, attributes=attrs, metric=metric), key="probe_layer")
stepped = probes[probes["step"].notna() & (probes["site"].astype(str) == site)]
step_positions = sorted(stepped["position"].astype(str).unique())
if step_positions:
    st.plotly_chart(accuracy_by_step(stepped[stepped["position"].astype(str) == step_positions[0]],
                                     title=f"Probe accuracy by reasoning step at {step_positions[0]} (best layer per attribute)"),
                    key="probe_step_fig")
else:
    st.caption("This run has no probes by reasoning step.")
with st.expander("Most selective probes"):
    st.dataframe(d.sort_values("selectivity", ascending=False).head(30), hide_index=True)
