"""Streamlit glue shared by the app's pages: which runs to show, cached readers, the sidebar's
run and item pickers, and the "stage not run" message.  Imported only inside a Streamlit script.

Runs come from the command line after ``--`` (``--run PATH`` repeated, ``--live-model NAME``),
else from the environment (``AURALENS_RUNS``, paths separated by ``os.pathsep``, and
``AURALENS_LIVE_MODEL``), else from the run folders found under ``./runs``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

from auralens.dashboards import data
from auralens.interp.loading import load_model

CTX_KEY = "_auralens_ctx"


# ------------------------------------------------------------------------------ arguments
def _argv_values(flag: str) -> list[str]:
    args = sys.argv[1:]
    out = []
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            out.append(args[i + 1])
        elif a.startswith(flag + "="):
            out.append(a.split("=", 1)[1])
    return out


def run_paths() -> list[Path]:
    """The runs to pick from: each given folder, and the runs under its ``organisms/`` folder
    (the demo's healthy-vs-organism record runs), so the picker switches between models."""
    paths = _argv_values("--run")
    if not paths and os.environ.get("AURALENS_RUNS"):
        paths = [p for p in os.environ["AURALENS_RUNS"].split(os.pathsep) if p]
    if not paths:
        return data.find_runs(Path("runs"))
    out: list[Path] = []
    for p in map(Path, paths):
        out.append(p)
        org = p / "organisms"
        if org.is_dir():
            out += [q for q in sorted(org.iterdir()) if q.is_dir() and data.is_run(q) and q not in out]
    return out


def live_model_name() -> str | None:
    vals = _argv_values("--live-model")
    return vals[-1] if vals else (os.environ.get("AURALENS_LIVE_MODEL") or None)


# --------------------------------------------------------------------------------- caching
def _stamp(path: Path) -> float:
    """Modification time, so a re-written file invalidates its cache entry."""
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


@st.cache_data(show_spinner=False, max_entries=16)
def _open_run(path: str, stamp: float) -> data.Run:
    return data.open_run(path)


def open_run(path: Path) -> data.Run:
    """The run (cached until a manifest.json at most two folders down changes)."""
    stamps = [0.0]
    if path.is_dir():
        stamps += [_stamp(m) for pattern in ("manifest.json", "*/manifest.json", "*/*/manifest.json")
                   for m in path.glob(pattern)]
        stamps += [_stamp(q) for q in path.iterdir() if q.is_dir()]  # a stage folder added or removed
    return _open_run(str(path), max(stamps))


@st.cache_data(show_spinner=False, max_entries=64)
def _table(folder: str, name: str, stamp: float):
    return data.read_table(folder, name)


def table(run: data.Run, stage: str, name: str):
    """A stage's parquet table (cached; None when the stage or the file is missing)."""
    if not run.has(stage):
        return None
    folder = run.folder(stage)
    return _table(str(folder), name, _stamp(folder / name))


@st.cache_data(show_spinner=False, max_entries=8)
def _item(record_dir: str, item_index: int, stamp: float) -> data.ItemArrays:
    return data.read_item(record_dir, item_index)


def item(run: data.Run, item_index: int) -> data.ItemArrays:
    """One item's arrays, read lazily (only this item's file) and cached."""
    rd = run.folder("record")
    return _item(str(rd), int(item_index), _stamp(data.item_file(rd, item_index)))


@st.cache_data(show_spinner=False, max_entries=32)
def _time_bins(record_dir: str, item_index: int, layer: int, head: int, stamp: float):
    return data.read_time_bins(record_dir, item_index, layer, head)


def time_bins(run: data.Run, item_index: int, layer: int, head: int) -> np.ndarray | None:
    rd = run.folder("record")
    return _time_bins(str(rd), int(item_index), int(layer), int(head), _stamp(data.item_file(rd, item_index)))


@st.cache_data(show_spinner=False, max_entries=4)
def _prompt_mean(record_dir: str, stamp: float):
    return data.mean_prompt_yield(record_dir)


def prompt_mean(run: data.Run):
    rd = run.folder("record")
    return _prompt_mean(str(rd), _stamp(rd / "yields"))


@st.cache_resource(max_entries=1, show_spinner="Loading the live model…")
def live_model(name: str):
    """The one model of live mode (loaded on demand, one at a time)."""

    return load_model(name)


# -------------------------------------------------------------------------------- context
@dataclass
class Context:
    run: data.Run | None
    runs: list[Path]
    item_index: int | None = None
    live_model: str | None = None


def sidebar() -> Context:
    """Run and item pickers (in the main script, so they persist across pages)."""
    runs = run_paths()
    live = live_model_name()
    st.sidebar.title("auralens")
    if not runs:
        st.sidebar.warning("No run folder given.")
        ctx = Context(run=None, runs=[], live_model=live)
        st.session_state[CTX_KEY] = ctx
        return ctx
    labels = {str(p): p for p in runs}
    choice = st.sidebar.selectbox("Run", list(labels), key="run", help="A run folder, or a parent folder of stage folders",
                                  format_func=lambda p: f"{Path(p).name}  ({Path(p).parent})")
    try:
        run = open_run(labels[choice])
    except Exception as exc:  # noqa: BLE001 - shown to the user, the app goes on
        st.sidebar.error(str(exc))
        ctx = Context(run=None, runs=runs, live_model=live)
        st.session_state[CTX_KEY] = ctx
        return ctx
    st.sidebar.caption(
        "stages: " + " · ".join(f"{'✓' if run.has(s) else '✗'} {s}" for s in data.STAGES)
    )
    for problem in run.problems:  # damaged files: on every page, above its content
        st.error(problem)
    item_index = None
    if run.has("record"):
        try:
            items = table(run, "record", "items.parquet")
            if items is None or items.empty:
                items = data.list_items(run.folder("record"))
        except data.RunFolderError as exc:  # a damaged items.parquet: pick items by their yields files
            st.error(str(exc))
            items = data.list_items_from_files(run.folder("record"))
        if len(items):
            rows = items.set_index("item_index", drop=False)

            def fmt(i: int) -> str:
                r = rows.loc[i]
                extra = " · ".join(str(r[c]) for c in ("tier", "format", "error_type") if c in r and r[c] is not None)
                n = f" · {int(r['n_tokens'])} tok" if "n_tokens" in r and r["n_tokens"] == r["n_tokens"] else ""
                return f"#{i} {r.get('item_id', '')} ({extra}{n})"

            item_index = st.sidebar.selectbox("Item", [int(i) for i in rows.index], format_func=fmt, key="item")
    if live:
        st.sidebar.caption(f"live model: `{live}`")
    ctx = Context(run=run, runs=runs, item_index=item_index, live_model=live)
    st.session_state[CTX_KEY] = ctx
    return ctx


def context() -> Context:
    ctx = st.session_state.get(CTX_KEY)
    if ctx is None:  # a page run on its own (not through app.py)
        ctx = sidebar()
    return ctx


def require(ctx: Context, stage: str) -> data.Run:
    """The run, or a clear message and stop when the stage has not run for it."""
    if ctx.run is None:
        st.info("No run folder to show. Start the dashboard with `auralens dashboard RUN_FOLDER`, "
                "or produce one with `auralens demo`.")
        st.stop()
    if not ctx.run.has(stage):
        st.info(f"The **{stage}** stage has not run for `{ctx.run.path}`: {data.STAGE_LABELS[stage]} "
                f"has no folder here. Run `auralens {stage} ...` (or `auralens demo`) to produce it.")
        st.stop()
    return ctx.run


def require_item(ctx: Context) -> data.ItemArrays:
    run = require(ctx, "record")
    if ctx.item_index is None:
        st.info(f"The record stage of `{run.path}` has no items with yields yet.")
        st.stop()
    try:
        return item(run, ctx.item_index)
    except Exception as exc:  # noqa: BLE001
        st.error(f"Cannot read item {ctx.item_index}: {exc}")
        st.stop()


def specialists(run: data.Run, k: int) -> list[tuple[int, int]]:
    """The top-k heads of ``heads.parquet`` (by ``rank``), [] when the run has none."""
    heads = table(run, "record", "heads.parquet")
    if heads is None or heads.empty or k <= 0:
        return []
    col = "rank" if "rank" in heads else next((c for c in heads if c.endswith("_rank")), None)
    if col is None:
        return []
    return [(int(r.layer), int(r.head)) for r in heads.nsmallest(k, col).itertuples()]


def query_slider(item: data.ItemArrays, key: str) -> str | int:
    """Where to read the yield: the last prompt token, or a reasoning step (a slider)."""
    options: list[str | int] = ["prompt", *item.step_ids]
    return st.select_slider(
        "Query position: last prompt token, or reasoning step",
        options=options, value="prompt", key=key,
        format_func=lambda o: "last prompt token" if o == "prompt" else f"step {o}",
    )


def head_picker(item: data.ItemArrays, run: data.Run, key: str) -> tuple[int, int]:
    top = specialists(run, 1)
    d_layer, d_head = top[0] if top else (item.n_layers - 1, 0)
    c1, c2 = st.columns(2)
    layer = c1.number_input("Layer", 0, item.n_layers - 1, min(d_layer, item.n_layers - 1), key=f"{key}_layer")
    head = c2.number_input("Head", 0, item.n_heads - 1, min(d_head, item.n_heads - 1), key=f"{key}_head")
    return int(layer), int(head)
