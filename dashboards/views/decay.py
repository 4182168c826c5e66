"""Perception decay: yield by reasoning step with CIs (all heads vs the specialist heads), the
outcome view (claim accuracy by step, on class claims by default: step 0's count claim left out)
and the chosen item's own curve.  Every point's n is in its hover; the minimum-n rule of
:mod:`auralens.interp.plotting` is said on the page."""

import streamlit as st

from auralens.dashboards import ui
from auralens.dashboards.summaries import CLAIM_KINDS, CLAIM_KINDS_NOTE, claim_accuracy_view
from auralens.interp import figures
from auralens.interp.plotting import MIN_N_NOTE

ctx = ui.context()
st.title("Perception decay")
run = ui.require(ctx, "record")
st.caption(MIN_N_NOTE)
decay = ui.table(run, "record", "decay.parquet")
heads = ui.table(run, "record", "heads.parquet")
if decay is None:
    st.info("The record stage has not written decay.parquet yet.")
else:
    axes = [a for a in ("step", "token_bin") if a in set(decay["axis"])]
    c1, c2 = st.columns([1, 3])
    axis = c1.radio("Axis", axes, key="decay_axis",
                    format_func=lambda a: "reasoning step" if a == "step" else "generated-token bin")
    per_head = decay[(decay["group"] == "head") & (decay["axis"] == axis)][["layer", "head"]].drop_duplicates()
    options = [(int(r.layer), int(r.head)) for r in per_head.itertuples()]
    default = [h for h in ui.specialists(run, 2) if h in options]
    chosen = c2.multiselect("Also show single heads", options, default=default, key="decay_heads",
                            format_func=lambda h: f"L{h[0]}H{h[1]}")
    subsets = {"all items, every step": "", "claim steps only": ":claim", "reasoning steps only": ":reasoning",
               "items reaching the last step": ":reach_last"}
    present = {k: v for k, v in subsets.items() if not v or f"all{v}" in set(decay["group"])}
    subset = present[st.selectbox("Subset", list(present), key="decay_subset")] if axis == "step" else ""
    st.plotly_chart(figures.decay_curves(decay, axis=axis, heads=chosen, groups=(f"all{subset}", f"topk{subset}")),
                    key="decay_curves")
    summ = ui.table(run, "record", "decay_summary.parquet")
    if summ is not None:
        st.markdown("**Decay summary** (slope of mean yield per step; last/first ratio; item-bootstrap 95% CIs)")
        s = summ[summ["axis"] == axis] if "axis" in summ else summ
        # the table's placeholders stay out of sight: group rows have no layer/head (-1), per-head
        # rows no bootstrap (n_items -1, CIs empty)
        groups = s[s["group"] != "head"].drop(columns=[c for c in ("layer", "head") if c in s])
        st.dataframe(groups, hide_index=True, key="decay_summary_groups")
        per_head = s[s["group"] == "head"]
        per_head = per_head.drop(columns=[c for c in per_head if c == "n_items" or (c.endswith(("_ci_low", "_ci_high"))
                                                                                   and per_head[c].isna().all())])
        with st.expander("Per-head slopes (steepest decay first; point estimates, no CIs)"):
            st.dataframe(per_head.sort_values("slope"), hide_index=True, key="decay_summary_heads")

st.subheader("Outcome view")
claims = ui.table(run, "record", "claims.parquet")
if claims is not None and "kind" in claims:
    label = st.radio("Claims counted", list(CLAIM_KINDS), key="claim_kinds", index=0, horizontal=True)
    ca = claim_accuracy_view(claims, CLAIM_KINDS[label])
    st.plotly_chart(figures.claim_accuracy_curve(ca, title=f"Outcome view: accuracy of perceptual claims by step ({label})",
                                                 name=f"claim accuracy: {label.split(' (')[0]}"), key="claim_acc")
    st.caption(CLAIM_KINDS_NOTE)
else:  # a run without claims.parquet: the stage's table, which counts every claim
    ca = ui.table(run, "record", "claim_accuracy.parquet")
    st.plotly_chart(figures.claim_accuracy_curve(ca), key="claim_acc")
    if ca is not None and len(ca):
        st.warning("This run has no claims.parquet: the curve is claim_accuracy.parquet's, which counts every claim "
                   "kind, step 0's count claim included (nearly always right: the curve falls after step 0 whatever "
                   "the model does).")

if ctx.item_index is not None:
    st.subheader("This item")
    item = ui.require_item(ctx)
    layer, head = ui.head_picker(item, run, key="decay_item")
    st.plotly_chart(figures.item_step_curve(item.yields, item.steps, heads=ui.specialists(run, 8), chosen=(layer, head),
                                            title=f"{item.item_id}: yield by reasoning step"), key="item_curve")
