"""Live mode: the model named by --live-model, loaded once (st.cache_resource) to decode the
chosen item's token ids and describe the architecture.  Nothing here runs an experiment."""

import streamlit as st

from auralens.dashboards import ui

ctx = ui.context()
st.title("Live model")
if not ctx.live_model:
    st.info("Start the dashboard with `--live-model NAME` to load a model here.")
    st.stop()
if not st.toggle(f"Load `{ctx.live_model}`", key="live_load"):
    st.caption("The model is loaded only when asked (one model at a time).")
    st.stop()
try:
    lm = ui.live_model(ctx.live_model)
except Exception as exc:  # noqa: BLE001
    st.error(f"Cannot load {ctx.live_model!r}: {exc}")
    st.stop()
st.markdown(f"**{lm.model_id}** from `{lm.source}` on `{lm.device}`")
st.json({k: str(v) for k, v in vars(lm.arch).items()} if hasattr(lm.arch, "__dict__") else {"arch": str(lm.arch)},
        expanded=False)
if ctx.run is not None and ctx.run.has("record") and ctx.item_index is not None:
    item = ui.item(ctx.run, ctx.item_index)
    ids = [int(i) for i in item.token_ids if i >= 0]
    if ids:
        st.markdown("**Decoded token ids of the chosen item** (checks the recorded tokens against this tokenizer)")
        try:
            st.code(lm.tokenizer.decode(ids, skip_special_tokens=False))
        except Exception as exc:  # noqa: BLE001 - ids from another tokenizer
            st.warning(f"This tokenizer cannot decode the recorded ids: {exc}")
