"""The auralens dashboard (Streamlit).  Start it with ``auralens dashboard RUN [RUN ...]`` or

    streamlit run dashboards/app.py -- --run runs/demo [--run OTHER] [--live-model micro]

Pages read run folders only; see :mod:`auralens.dashboards.data` for what they read.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # `streamlit run dashboards/app.py` from a source checkout
    sys.path.insert(0, str(_ROOT))

import streamlit as st  # noqa: E402

from auralens.dashboards import ui  # noqa: E402
from auralens.interp.errors import AuralensError  # noqa: E402

st.set_page_config(page_title="auralens", page_icon=":material/hearing:", layout="wide")

_VIEWS = Path(__file__).resolve().parent / "views"
ctx = ui.sidebar()
pages = [
    st.Page(_VIEWS / "overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page(_VIEWS / "heads.py", title="Attention heatmap", icon=":material/grid_on:"),
    st.Page(_VIEWS / "decay.py", title="Perception decay", icon=":material/trending_down:"),
    st.Page(_VIEWS / "tokens.py", title="Tokens & audio", icon=":material/graphic_eq:"),
    st.Page(_VIEWS / "probes.py", title="Probes", icon=":material/science:"),
    st.Page(_VIEWS / "steering.py", title="Steering", icon=":material/tune:"),
    st.Page(_VIEWS / "compare.py", title="Steering vs fine-tuning", icon=":material/balance:"),
]
if ctx.live_model:
    pages.append(st.Page(_VIEWS / "live.py", title="Live model", icon=":material/bolt:"))
page = st.navigation(pages)
try:
    page.run()
except AuralensError as exc:  # a damaged or missing file: say which, the app goes on
    st.error(str(exc))
