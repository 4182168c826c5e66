"""Overview: the run's manifest, which stages ran, accuracy and error attribution."""

import pandas as pd
import streamlit as st

from auralens.dashboards import data, ui
from auralens.interp import figures
from auralens.interp.plotting import MIN_N_NOTE

ctx = ui.context()
st.title("Overview")
if ctx.run is None:
    ui.require(ctx, "eval")
run = ctx.run
m = run.manifest
st.markdown(f"**Run** `{run.path}` · model `{m.get('model', '?')}` · data `{m.get('data', '?')}` · "
            f"seed {m.get('seed', '?')} · n {m.get('n', '?')}")
rows = []
for s in data.STAGES:
    if run.has(s):
        try:
            sm = run.stage_manifest(s)
        except data.RunFolderError:  # shown above the page by the sidebar (run.problems)
            sm = {"status": "damaged manifest.json"}
        rows.append({"stage": s, "what": data.STAGE_LABELS[s], "status": sm.get("status", "?"),
                     "command": sm.get("command", ""), "created_at": sm.get("created_at", ""),
                     "folder": str(run.folder(s))})
    else:
        rows.append({"stage": s, "what": data.STAGE_LABELS[s], "status": "not run", "command": "", "created_at": "", "folder": ""})
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
with st.expander("manifest.json"):
    st.json(m, expanded=False)

st.subheader("Accuracy")
if run.has("eval"):
    acc = ui.table(run, "eval", "accuracy.parquet")
    if acc is None:
        st.info("The eval stage has not written accuracy.parquet yet (still running?).")
    else:
        st.plotly_chart(figures.accuracy_bars(acc), key="acc_bars")
        st.caption("Accuracy with Wilson 95% intervals. " + MIN_N_NOTE)
        st.dataframe(acc, hide_index=True)
else:
    st.info("The **eval** stage has not run for this run folder (`auralens eval`).")

st.subheader("Error attribution")
if run.has("record"):
    items = ui.table(run, "record", "items.parquet")
    st.plotly_chart(figures.error_types_bar(items), key="err_types")
else:
    st.info("The **record** stage has not run for this run folder: no error attribution (`auralens record`).")
