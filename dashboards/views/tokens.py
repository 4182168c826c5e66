"""The generated text coloured by the yield of one head, the audio clip, and the head's
yield over the clip's time bins."""

import numpy as np
import streamlit as st

from auralens.dashboards import data, ui
from auralens.interp import figures

ctx = ui.context()
st.title("Tokens & audio")
item = ui.require_item(ctx)
run = ctx.run

c1, c2 = st.columns([2, 1])
with c1:
    layer, head = ui.head_picker(item, run, key="tok")
with c2:
    series = st.radio("Colour by", ["chosen head", "specialist heads (mean)", "all heads (mean)"], key="tok_series")
if series == "chosen head":
    values, label = item.yields[:, layer, head], f"L{layer}H{head}"
elif series == "specialist heads (mean)" and ui.specialists(run, 8):
    idx = np.array(ui.specialists(run, 8))
    values, label = item.yields[:, idx[:, 0], idx[:, 1]].mean(1), "specialist heads"
else:
    values, label = item.yields.reshape(item.n_tokens, -1).mean(1), "all heads"

limit = 2000
st.markdown(f"**{item.item_id}** — {item.n_tokens} tokens; hover a token for its yield ({label}). "
            "Token t is coloured by the yield while producing it (token 0: at the last prompt token).")
st.html(figures.token_html(item.pieces, values, steps=item.steps, max_tokens=limit, caption=f"yield of {label}"))
st.plotly_chart(figures.token_yield_line(values, item.steps, name=label, title=f"Yield of {label} per generated token"),
                key="tok_line")

st.subheader("Audio")
items = ui.table(run, "record", "items.parquet")
row = items[items["item_index"] == item.item_index] if items is not None and "item_index" in items else None
wav, duration, refusal = None, None, "No audio file for this item in the run folder."
if row is not None and len(row):
    r = row.iloc[0]
    if "question" in r:
        st.markdown(f"**Question:** {r['question']}")
    st.markdown(" · ".join(f"**{c}:** {r[c]}" for c in ("answer", "prediction", "correct", "error_type") if c in r))
    wav = data.audio_file(run.folder("record"), r.get("audio_path"))
    refusal = data.audio_refusal(run.folder("record"), r.get("audio_path")) or refusal
if wav is not None:
    st.audio(str(wav))
    duration = data.audio_duration(wav)
else:  # audio is served only from the run folder or its recorded dataset root: the page says why not
    st.info(refusal)

if item.has_time_bins:
    tb = ui.time_bins(run, item.item_index, layer, head)
    where = ui.query_slider(item, key="tok_where")
    strip = tb[data.token_mask(item, where)].mean(0)
    at = "last prompt token" if where == "prompt" else f"step {where}"
    st.plotly_chart(figures.time_bins_strip(strip, duration=duration, title=f"L{layer}H{head}: yield over the clip at the {at}"),
                    key="tb_strip")
    st.plotly_chart(figures.time_bins_by_step(tb, item.steps, duration=duration,
                                              title=f"L{layer}H{head}: where in the clip each step listens"), key="tb_steps")
else:
    st.info("This run did not record time bins (record with time bins to see where in the clip each head listens).")
