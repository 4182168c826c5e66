"""Layer x head heatmap of audio attention yield for one item, at the last prompt token or at a
reasoning step, and the listening-signal ranking of heads."""

import streamlit as st

from auralens.dashboards import data, ui
from auralens.interp import figures

ctx = ui.context()
st.title("Attention heatmap")
item = ui.require_item(ctx)
run = ctx.run
k = st.sidebar.number_input("Specialist heads (top-k)", 0, item.n_layers * item.n_heads, min(8, item.n_layers * item.n_heads), key="topk")
top = ui.specialists(run, int(k))

c1, c2 = st.columns([3, 1])
with c2:
    view = st.radio("Show", ["this item", "mean over items (last prompt token)"], key="heat_view")
with c1:
    where = ui.query_slider(item, key="heat_where")
if view == "this item":
    z = data.yield_at(item, where)
    label = "the last prompt token" if where == "prompt" else f"reasoning step {where}"
    title = f"{item.item_id}: audio yield at {label}"
    n_label = "one item" + ("" if where == "prompt" else f", n={int((item.steps == where).sum())} tokens of the step")
else:
    res = ui.prompt_mean(run)
    if res is None:
        st.info("No yields recorded in this run.")
        st.stop()
    z, n = res
    title = f"Mean audio yield at the last prompt token over {n} items"
    n_label = f"mean over n={n} items"
st.plotly_chart(figures.yield_heatmap(z, title=title, highlight=top, n=n_label), key="yield_heatmap")
st.caption(f"{item.n_tokens} generated tokens · {len(item.step_ids)} reasoning steps · "
           f"{item.n_layers} layers × {item.n_heads} heads. Rings: the top-{k} specialist heads.")

st.subheader("Listening signal (audio-specialist heads)")
heads = ui.table(run, "record", "heads.parquet")
if heads is None:
    st.info("This run has no heads.parquet (the listening-signal ranking was not computed).")
else:
    cols = [c for c in ("rank", "corr", "contrast", "contrast_dz", "corr_rank", "contrast_rank") if c in heads]
    col = st.selectbox("Score", cols, key="heads_col")
    st.plotly_chart(figures.heads_score_heatmap(heads, col, top=int(k)), key="heads_heatmap")
    st.dataframe(heads.sort_values("rank" if "rank" in heads else cols[0]).head(max(int(k), 10)), hide_index=True)
