"""The Streamlit dashboard through streamlit.testing's AppTest: every view on a synthetic run
folder with every stage's schema (and on runs/demo when it exists), run-folder reading, the
figure builders, and the launch command line."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from auralens import dashboards  # noqa: E402
from auralens.dashboards import data  # noqa: E402
from auralens.dashboards.synthetic import write_synthetic_run  # noqa: E402
from auralens.interp import figures  # noqa: E402
from auralens.interp.errors import RunFolderError  # noqa: E402
from auralens.interp.papers import REPORTED  # noqa: E402
from auralens.interp.schemas import SYSTEMS  # noqa: E402
from auralens.probes.figures import accuracy_by_layer  # noqa: E402
from auralens.steering.figures import compare_table, steering_sweep  # noqa: E402

APP = Path(dashboards.__file__).resolve().parent / "app.py"
VIEWS = ("overview", "heads", "decay", "tokens", "probes", "steering", "compare")
LONG = 5  # index of the synthetic run's 1,000-token item (the last of 6)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    return write_synthetic_run(tmp_path_factory.mktemp("runs") / "synthetic", n_items=6, long_item_tokens=1000)


def _app(monkeypatch, *runs: Path, check: bool = True) -> AppTest:
    monkeypatch.setenv("AURALENS_RUNS", os.pathsep.join(str(r) for r in runs))
    monkeypatch.delenv("AURALENS_LIVE_MODEL", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    if check:
        _ok(at)
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _goto(at: AppTest, view: str) -> AppTest:
    at.switch_page(f"views/{view}.py").run()
    _ok(at)
    return at


def _figs(at: AppTest) -> list[dict]:
    return [json.loads(e.proto.spec) for e in at.get("plotly_chart")]


def _arr(v) -> np.ndarray:
    """A plotly JSON array: a list, or a typed array {"dtype", "bdata", "shape"} (plotly >= 6)."""
    import base64

    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        shape = v.get("shape")
        return a.reshape([int(x) for x in str(shape).split(",")]) if shape else a
    return np.array(v, dtype=float)


def _title(fig: dict) -> str:
    t = fig["layout"].get("title", "")
    return t.get("text", "") if isinstance(t, dict) else str(t)


# ------------------------------------------------------------------------------- views
def test_every_view_renders_its_figures(full_run, monkeypatch):
    at = _app(monkeypatch, full_run)
    assert [w.key for w in at.sidebar.selectbox] == ["run", "item"]
    expected = {"overview": 2, "heads": 2, "decay": 3, "tokens": 3, "probes": 2, "steering": 1, "compare": 1}
    for view in VIEWS:
        _goto(at, view)
        figs = _figs(at)
        assert len(figs) >= expected[view], (view, [_title(f) for f in figs])
        assert not at.info, (view, [i.value for i in at.info])
    _goto(at, "tokens")
    assert len(at.get("html")) == 1 and len(at.get("audio")) == 1


def test_compare_view_shows_the_grid_and_keeps_reported_numbers_apart(full_run, monkeypatch):
    at = _goto(_app(monkeypatch, full_run), "compare")
    figs = _figs(at)
    reported = [f for f in figs if "Quoted from the papers" in _title(f)]
    measured = [f for f in figs if f not in reported]
    assert len(reported) == 1 and len(measured) == 2, [_title(f) for f in figs]
    names = {r.system for r in REPORTED}
    for f in measured:  # no paper's model on a measured axis
        assert not names & {t.get("name") for t in f["data"]}
        assert not names & {x for t in f["data"] for x in (t.get("x") or []) if isinstance(x, str)}
    assert {t["name"] for t in reported[0]["data"]} == {"reported (papers)"}
    headers = [h.value for h in at.header]
    assert headers == ["Measured: systems × organisms", "Quoted from the papers (not measured here)"]
    grid = at.dataframe[0].value
    assert list(grid.columns) == ["organism", "system", "format", "neutral", "congruent", "conflict"]
    assert set(grid["organism"]) == {"micro", "micro-decay"}


def test_heatmap_follows_the_step_slider(full_run, monkeypatch):
    at = _app(monkeypatch, full_run)
    at.sidebar.selectbox(key="item").set_value(LONG).run()
    _goto(at, "heads")
    item = data.read_item(full_run / "record", LONG)
    heat = _figs(at)[0]
    assert "last prompt token" in _title(heat)
    np.testing.assert_allclose(_arr(heat["data"][0]["z"]), item.yields[0], atol=1e-6)
    at.select_slider(key="heat_where").set_value(2).run()
    _ok(at)
    heat = _figs(at)[0]
    assert "reasoning step 2" in _title(heat)
    np.testing.assert_allclose(_arr(heat["data"][0]["z"]), item.yields[item.steps == 2].mean(0), atol=1e-5)
    # the specialist heads are ringed: top-k of heads.parquet by rank
    rings = next(t for t in heat["data"] if t.get("name") == "specialist heads")
    heads = data.read_table(full_run / "record", "heads.parquet").nsmallest(8, "rank")
    assert sorted(zip(_arr(rings["y"]).astype(int), _arr(rings["x"]).astype(int))) == sorted(zip(heads["layer"], heads["head"]))
    at.radio(key="heat_view").set_value("mean over items (last prompt token)").run()
    _ok(at)
    assert "over 6 items" in _title(_figs(at)[0])


def test_long_item_token_view_is_lazy_and_cached(full_run, monkeypatch):
    calls = {"item": 0, "bins": 0}
    real_item, real_bins = data.read_item, data.read_time_bins

    def count_item(*a, **k):
        calls["item"] += 1
        return real_item(*a, **k)

    def count_bins(*a, **k):
        calls["bins"] += 1
        return real_bins(*a, **k)

    monkeypatch.setattr(data, "read_item", count_item)
    monkeypatch.setattr(data, "read_time_bins", count_bins)
    # a fresh copy of the run so no earlier test has warmed the cache for it
    run = write_synthetic_run(full_run.parent / "lazy", n_items=6, long_item_tokens=1000,
                              stages=("record",), seed=1)
    at = _app(monkeypatch, run)
    at.sidebar.selectbox(key="item").set_value(LONG).run()
    t0 = time.perf_counter()
    _goto(at, "tokens")
    first = time.perf_counter() - t0
    body = at.get("html")[0].proto.body
    assert body.count('class="tok"') == 1000
    assert 'title="token 999' in body
    strip = next(f for f in _figs(at) if "yield over the clip" in _title(f))
    assert _arr(strip["data"][0]["z"]).shape == (1, 16)
    assert strip["layout"]["xaxis"]["title"]["text"] == "time in clip (s)"
    n_item_reads = calls["item"]
    assert n_item_reads == 1  # only the chosen item's file was read (not the other five)
    # another head: the item comes from the cache, only that head's time-bin slice is read
    at.number_input(key="tok_head").set_value(3).run()
    _ok(at)
    assert calls["item"] == n_item_reads and calls["bins"] == 2
    t0 = time.perf_counter()
    at.number_input(key="tok_layer").set_value(1).run()
    again = time.perf_counter() - t0
    _ok(at)
    assert first < 60 and again < 30, (first, again)


def test_views_say_which_stage_has_not_run(tmp_path, monkeypatch):
    run = write_synthetic_run(tmp_path / "only-eval", stages=("eval",))
    at = _app(monkeypatch, run)
    assert len(_figs(at)) >= 1  # accuracy still shown on the overview
    assert any("record" in i.value and "has not run" in i.value for i in at.info)
    for view, stage in (("heads", "record"), ("decay", "record"), ("tokens", "record"), ("probes", "probe"),
                        ("steering", "steer"), ("compare", "compare")):
        _goto(at, view)
        assert not _figs(at), view
        assert any(f"**{stage}** stage has not run" in i.value for i in at.info), (view, [i.value for i in at.info])


def test_a_stage_folder_alone_and_two_runs(full_run, tmp_path, monkeypatch):
    other = write_synthetic_run(tmp_path / "other", stages=("probe", "steer"), layers=6)
    at = _app(monkeypatch, full_run / "record", other)
    assert [o.split()[0] for o in at.sidebar.selectbox(key="run").options] == ["record", "other"]
    _goto(at, "heads")
    assert len(_figs(at)) == 2
    at.sidebar.selectbox(key="run").set_value(str(other)).run()
    _ok(at)
    assert any("has not run" in i.value for i in at.info)
    _goto(at, "probes")
    fig = _figs(at)[0]
    assert max(_arr(t["x"]).max() for t in fig["data"]) == 5


def test_no_run_folder_is_a_message_not_a_crash(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    at = _app(monkeypatch, empty, check=False)
    assert not at.exception and at.sidebar.error and "expected a manifest.json" in at.sidebar.error[0].value
    at.switch_page("views/heads.py").run()
    assert not at.exception
    assert any("No run folder" in i.value for i in at.info)


def test_every_view_on_a_run_produced_by_micro(monkeypatch, micro_run):
    """A real run folder written by `micro` (eval + record stages), not a synthetic one."""
    at = _app(monkeypatch, micro_run)
    for view in VIEWS:
        _goto(at, view)


# ------------------------------------------------------------------------ reading runs
def test_open_run_accepts_parent_and_stage_folders(full_run, tmp_path):
    run = data.open_run(full_run)
    assert list(run.stages) == list(data.STAGES)
    assert data.open_run(full_run / "probe").stages == {"probe": full_run / "probe"}
    assert full_run in data.find_runs(full_run.parent)  # a parent counts once, not per stage
    assert not any(p.parent == full_run for p in data.find_runs(full_run.parent))
    assert data.find_runs(full_run) == [full_run]
    with pytest.raises(RunFolderError, match="expected a directory"):
        data.open_run(tmp_path / "nope")
    with pytest.raises(RunFolderError, match="expected a record stage folder"):
        data.open_run(full_run / "probe").folder("record")


def test_item_arrays_and_time_bin_slices(full_run):
    from safetensors.numpy import load_file

    rd = full_run / "record"
    item = data.read_item(rd, LONG)
    full = load_file(str(data.item_file(rd, LONG)))
    assert item.n_tokens == 1000 and item.yields.shape == full["yield"].shape and len(item.tokens) == 1000
    assert item.has_time_bins and item.n_time_bins == 16
    np.testing.assert_array_equal(data.read_time_bins(rd, LONG, 2, 3), full["time_bins"][:, 2, 3, :])
    np.testing.assert_allclose(data.yield_at(item, 1), full["yield"][full["steps"] == 1].mean(0))
    np.testing.assert_array_equal(data.yield_at(item, "prompt"), full["yield"][0])
    with pytest.raises(RunFolderError, match="expected tokens in step 99"):
        data.yield_at(item, 99)
    with pytest.raises(RunFolderError, match="expected layer < 4"):
        data.read_time_bins(rd, LONG, 7, 0)
    mean, n = data.mean_prompt_yield(rd)
    stack = [load_file(str(data.item_file(rd, i)))["yield"][0] for i in range(6)]
    assert n == 6 and np.allclose(mean, np.mean(stack, 0), atol=1e-6)
    wav = data.audio_file(rd, "audio/00000.wav")
    assert wav is not None and abs(data.audio_duration(wav) - 2.0) < 1e-3


def test_item_without_optional_tensors_or_tokens(tmp_path):
    from safetensors.numpy import save_file

    rd = tmp_path / "record"
    (rd / "yields").mkdir(parents=True)
    (rd / "manifest.json").write_text(json.dumps({"stages": {"record": {}}}))
    save_file({"yield": np.full((3, 2, 2), 0.5, np.float32), "token_ids": np.array([4, 5, 6])},
              str(rd / "yields" / "00000.safetensors"))
    item = data.read_item(rd, 0)
    assert item.tokens == ["<4>", "<5>", "<6>"] and list(item.steps) == [0, 0, 0]
    assert not item.has_time_bins and data.read_time_bins(rd, 0, 0, 0) is None
    assert list(data.list_items(rd)["item_index"]) == [0]


# ------------------------------------------------------------------------------ figures
def test_figure_builders_name_their_traces(full_run):
    rd = full_run / "record"
    decay = data.read_table(rd, "decay.parquet")
    fig = figures.decay_curves(decay.assign(n=40), axis="step", heads=[(0, 1)])
    names = [t.name for t in fig.data]
    assert names == ["all heads 95% CI", "all heads", "specialist heads 95% CI", "specialist heads", "L0H1 95% CI", "L0H1"]
    assert all(t.mode == "lines" and t.fill == "toself" for t in fig.data if t.name.endswith("95% CI"))
    # the synthetic run's 6 items are under the minimum n: grey open markers, no band
    fig = figures.decay_curves(decay, axis="step", heads=[(0, 1)])
    assert [t.name for t in fig.data] == ["all heads", "specialist heads", "L0H1"]
    assert all(set(t.marker.symbol) == {"circle-open"} and "n=6 items" in t.customdata[0][1] for t in fig.data)
    probes = data.read_table(full_run / "probe", "probes.parquet")
    fig = accuracy_by_layer(probes, step=None)
    assert {"event_count", "event_count control", "event_count chance", "event_count 95% CI"} <= {t.name for t in fig.data}
    fig = accuracy_by_layer(probes, step=None, metric="selectivity")
    assert {t.name for t in fig.data} == {"event_count", "first_event", "louder"}
    steer = data.read_table(full_run / "steer", "steering.parquet")
    assert len(steering_sweep(steer, y="delta").data) == 2 * 4  # 4 curves, each with a band
    table = compare_table(data.read_table(full_run / "compare", "compare.parquet"))
    assert list(table.columns[:5]) == ["metric", "group", "system", "source", "value"]
    assert list(table["source"]) == ["measured"] * (len(table) - len(REPORTED)) + ["reported"] * len(REPORTED)
    assert list(dict.fromkeys(table["system"][table["source"] == "measured"])) == list(SYSTEMS)
    assert set(table["organism"][table["source"] == "reported"]) == {""}
    assert figures.decay_curves(None).layout.annotations  # an empty-state figure, not an error


def test_token_html_escapes_and_shows_values_on_hover():
    html = figures.token_html(["<b>", " & ", "\n"], [0.1, 0.5, 0.0], steps=[0, 0, 1])
    assert "<b>" not in html.split('class="auralens-tokens"')[1].split("</div>")[0].replace("<br>", "")
    assert "&lt;b&gt;" in html and 'title="token 1, step 0' in html and "yield 0.5000" in html
    assert html.count('class="tok"') == 3


# ------------------------------------------------------------------------------- launch
def test_launch_command_is_local_headless_and_quiet(tmp_path):
    cmd = dashboards.streamlit_command([tmp_path], port=8765, live_model="micro")
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4] == str(APP)
    joined = " ".join(cmd)
    assert "--server.address 127.0.0.1" in joined and "--server.port 8765" in joined
    assert "--server.headless true" in joined and "--browser.gatherUsageStats false" in joined
    assert cmd[cmd.index("--") + 1:] == [f"--run={tmp_path.resolve()}", "--live-model=micro"]
    with pytest.raises(RunFolderError):
        dashboards.launch([tmp_path / "missing"])  # checked before any server starts


def test_stage_kind_from_manifest_tables_command_or_name(tmp_path):
    def folder(name, manifest, *files):
        p = tmp_path / name
        p.mkdir()
        (p / "manifest.json").write_text(json.dumps(manifest))
        for f in files:
            (p / f).write_text("")
        return p

    assert data.stage_kind(folder("a", {"stages": {"steer_eval": {}}}, "items.parquet")) == "steer"
    assert data.stage_kind(folder("b", {"stages": {}}, "probes.parquet")) == "probe"
    assert data.stage_kind(folder("c", {"command": "auralens steer eval --n 4"}, "items.parquet")) == "steer"
    assert data.stage_kind(folder("record-micro", {"command": "auralens demo"})) == "record"
    assert data.stage_kind(folder("d", {"command": "auralens eval"}, "items.parquet")) == "eval"
    assert data.stage_kind(tmp_path) is None


def test_live_mode_loads_the_model_only_when_asked(full_run, monkeypatch):
    from auralens.interp.micro import BASE_DIR

    if not (BASE_DIR / "config.json").exists():
        pytest.skip("embedded micro weights not trained yet (auralens micro train)")
    monkeypatch.setenv("AURALENS_LIVE_MODEL", "micro")
    monkeypatch.setenv("AURALENS_RUNS", str(full_run))
    at = AppTest.from_file(str(APP), default_timeout=180).run()
    _ok(at)
    _goto(at, "live")
    assert any("only when asked" in c.value for c in at.caption)
    at.toggle(key="live_load").set_value(True).run()
    _ok(at)
    assert any("**micro** from" in m.value for m in at.markdown)
    assert at.code and at.code[0].value  # the chosen item's ids decoded by micro's tokenizer


def test_display_pieces_put_back_the_text_spacing():
    # word-level tokens decode without spaces; BPE tokens carry their own; special tokens are dropped from text
    assert data.display_pieces(["<perception>", "\n", "sound", "1", ":", "tone"], "<perception>\nsound 1 : tone") == [
        "<perception>", "\n", "sound", " 1", " :", " tone"]
    assert data.display_pieces([" the", " sound", "<|im_end|>"], " the sound") == [" the", " sound", " <|im_end|>"]
    pieces = data.display_pieces(["a", "b"], "")
    assert pieces == ["a", " b"]


def test_launch_serves_on_loopback_and_stops_with_its_launcher(full_run, tmp_path):
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = f"from auralens import dashboards; import sys; sys.exit(dashboards.launch([{str(full_run)!r}], port={port}))"
    log = (tmp_path / "launch.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/_stcore/health"
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None, (tmp_path / "launch.log").read_text()
                time.sleep(0.5)
        else:
            pytest.fail("the dashboard did not answer in 120 s")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        for _ in range(40):  # the streamlit child went down with the launcher
            try:
                urllib.request.urlopen(url, timeout=1)
            except OSError:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the streamlit server outlived its launcher")
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


# ------------------------------------------------------------------- stage discovery
def test_stage_folders_are_found_by_their_manifest_not_their_name(tmp_path):
    """Any sub-folder name, and one level deeper under a folder without a manifest (the old demo
    layout ``steer/run``); a stage folder's internals (compare/base/structured) are not stages;
    an input folder (``vectors/``) is ignored."""
    def stage(rel, manifest, *files):
        p = tmp_path / "demo" / rel
        p.mkdir(parents=True)
        (p / "manifest.json").write_text(json.dumps(manifest))
        for f in files:
            (p / f).write_text("")
        return p

    a = stage("accuracy-run", {"command": "auralens eval", "stages": {}}, "items.parquet")
    r = stage("yields_2", {"command": "auralens record"})
    s = stage("steer/run", {"command": "auralens steer eval", "stages": {"steer_eval": {}}}, "items.parquet")
    c = stage("cmp", {"command": "auralens compare"})
    stage("cmp/base/structured", {"command": "auralens record"}, "decay.parquet")
    p = stage("p", {"stage": "probe"})
    (tmp_path / "demo" / "vectors").mkdir()
    (tmp_path / "demo" / "vectors" / "v.safetensors").write_text("")
    run = data.open_run(tmp_path / "demo")
    assert run.stages == {"eval": a, "record": r, "probe": p, "steer": s, "compare": c}
    assert not run.problems
    assert data.open_run(c).stages == {"compare": c}
    assert data.find_runs(tmp_path) == [tmp_path / "demo"]  # a folder of runs is not itself a run
    assert data.stage_kind(stage("x", {"command": "python -m auralens probe --n 4"})) == "probe"


# ------------------------------------------------------------------ damaged files
def _truncate(path: Path) -> Path:
    raw = path.read_bytes()
    path.write_bytes(raw[: max(1, len(raw) // 2)])
    return path


@pytest.fixture
def damaged_copy(full_run, tmp_path):
    import shutil

    def make(rel: str) -> tuple[Path, Path]:
        run = Path(shutil.copytree(full_run, tmp_path / "damaged"))
        return run, _truncate(run / rel)

    return make


@pytest.mark.parametrize("rel, view", [
    ("steer/steering.parquet", "steering"),
    ("probe/probes.parquet", "probes"),
    ("record/decay.parquet", "decay"),
    ("compare/compare.parquet", "compare"),
    ("record/yields/00000.safetensors", "heads"),
    ("record/items.parquet", "overview"),
    ("probe/manifest.json", "probes"),
])
def test_a_damaged_file_is_an_error_on_the_page_not_a_crash(damaged_copy, monkeypatch, rel, view):
    run, bad = damaged_copy(rel)
    at = _app(monkeypatch, run, check=False)
    if view != "overview":
        at.switch_page(f"views/{view}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert any(str(bad) in e and "expected" in e and "found" in e for e in errors), errors
    for other in ("overview", "steering", "heads"):  # the rest of the run still opens
        at.switch_page(f"views/{other}.py").run()
        assert not at.exception, (other, [e.value for e in at.exception])


def test_damaged_files_raise_run_folder_errors_naming_them(damaged_copy):
    run, bad = damaged_copy("record/yields/00001.safetensors")
    with pytest.raises(RunFolderError, match=r"00001\.safetensors'?: expected a safetensors file, found a file of \d+ bytes"):
        data.read_item(run / "record", 1)
    with pytest.raises(RunFolderError, match="00001.safetensors"):
        data.mean_prompt_yield(run / "record")
    _truncate(run / "eval" / "accuracy.parquet")
    with pytest.raises(RunFolderError, match=r"accuracy\.parquet'?: expected a parquet table, found a file of \d+ bytes"):
        data.read_table(run / "eval", "accuracy.parquet")
    (run / "steer" / "manifest.json").write_text("")
    with pytest.raises(RunFolderError, match=r"steer/manifest\.json'?: expected a JSON object, found an empty file"):
        data.read_manifest(run / "steer")
    opened = data.open_run(run)  # the steer stage is still told by its tables
    assert opened.has("steer") and len(opened.problems) == 1 and "steer/manifest.json" in opened.problems[0]
    with pytest.raises(RunFolderError, match="steer/manifest.json"):
        opened.check()


# ------------------------------------------------------------- the demo's real output
@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    """`auralens demo --out DEMO` on micro, as `make demo` runs it but small (6 items, fast)."""
    from auralens.interp.micro import BASE_DIR

    if not (BASE_DIR / "config.json").exists():
        pytest.skip("embedded micro weights not trained yet (auralens micro train)")
    from auralens.demo import run_demo

    out = tmp_path_factory.mktemp("demo") / "demo"
    run_demo(out=out, n=6, fast=True)
    return out


def _demo_stages() -> list[str]:
    from auralens.interp.micro import FINETUNED_DIR

    return ["eval", "record", "probe", "steer"] + (["compare"] if (FINETUNED_DIR / "config.json").exists() else [])


def test_the_demo_writes_every_stage_where_the_dashboard_finds_it(demo_run):
    run = data.open_run(demo_run)
    assert list(run.stages) == _demo_stages()
    assert all(folder == demo_run / stage for stage, folder in run.stages.items())
    assert not run.problems
    assert data.find_runs(demo_run.parent) == [demo_run]


def test_every_view_on_the_demo_output(demo_run, monkeypatch, tmp_path):
    at = _app(monkeypatch, demo_run)
    with_content = set()
    for stage, views in (("record", ("heads", "decay")), ("probe", ("probes",)), ("steer", ("steering",)),
                         ("compare", ("compare",))):
        if stage in _demo_stages():
            with_content.update(views)
    assert {"heads", "decay", "probes", "steering"} <= with_content
    for view in VIEWS:
        _goto(at, view)
        infos = [i.value for i in at.info]
        assert not any("has not run" in v or "not written" in v for v in infos), (view, infos)
        if view in with_content:
            assert _figs(at), (view, infos)
    # and the report of the same folder has every section
    from auralens.dashboards.report import write_report

    html = write_report(demo_run, tmp_path / "demo.html").read_text()
    assert "has not run" not in html or "compare" not in _demo_stages()


def test_synthetic_tables_match_the_real_writers(demo_run, full_run):
    """The synthetic run has the tables, columns and column kinds the stages write (no drift such
    as a made-up ``perception_accuracy`` metric where compare writes ``claim_accuracy``)."""
    import pandas as pd

    for stage in _demo_stages():
        real_dir, syn_dir = demo_run / stage, full_run / stage
        for syn in sorted(syn_dir.glob("*.parquet")):
            real = real_dir / syn.name
            assert real.exists(), f"synthetic {stage}/{syn.name} is not written by the {stage} stage"
            a, b = pd.read_parquet(syn), pd.read_parquet(real)
            assert sorted(a.columns) == sorted(b.columns), (stage, syn.name)
            kinds = {c: (a[c].dtype.kind, b[c].dtype.kind) for c in a.columns if len(b) and b[c].notna().any()}
            assert all(x == y or {x, y} <= {"O", "U", "T"} for x, y in kinds.values()), (stage, syn.name, kinds)
    if "compare" in _demo_stages():
        real = pd.read_parquet(demo_run / "compare" / "compare.parquet")
        syn = pd.read_parquet(full_run / "compare" / "compare.parquet")
        # every metric compare writes is in the synthetic table; the synthetic one has no other
        # metric than those compare leaves out on a small run (no onset found: no claim_gap)
        assert set(real["metric"]) <= set(syn["metric"])
        assert set(syn["metric"]) - set(real["metric"]) <= {"claim_gap", "claim_onset"}
        assert "perception_accuracy" not in set(syn["metric"])
        assert set(syn.loc[syn["source"] == "measured", "system"]) >= set(real.loc[real["source"] == "measured", "system"])
    with __import__("safetensors").safe_open(str(next((demo_run / "record" / "yields").glob("*.safetensors"))), "numpy") as f:
        real_keys = set(f.keys())
    with __import__("safetensors").safe_open(str(full_run / "record" / "yields" / "00000.safetensors"), "numpy") as f:
        assert real_keys <= set(f.keys())


def test_the_demo_organism_runs_are_in_the_run_picker(demo_run, monkeypatch):
    """The demo's healthy-vs-organism record runs sit under <out>/organisms/ and the dashboard
    lists them beside the demo itself, so the picker switches between the models."""
    from auralens.dashboards import ui

    monkeypatch.setattr(ui, "_argv_values", lambda flag: [str(demo_run)] if flag == "--run" else [])
    paths = ui.run_paths()
    assert paths[0] == demo_run
    names = {p.name for p in paths[1:]}
    assert {"micro@decay", "micro-heads@heads", "micro-decay@decay"} <= names
    for p in paths[1:]:
        assert data.open_run(p).has("record")


def test_steering_page_reports_the_held_out_result_not_the_dev_sweep(full_run, monkeypatch, tmp_path):
    at = _goto(_app(monkeypatch, full_run), "steering")
    text = "\n".join(m.value for m in [*at.markdown, *at.caption])
    assert [s.value for s in at.subheader][:2] == ["Held-out test result", "Dev-split sweep (the selection, not the result)"]
    assert "gain **-0.050** 95% CI [-0.117, +0.000]" in text and "n = 24" in text
    assert "+0.017 [-0.033, +0.083]" in text and "it is not the result" in text  # the dev gain, labelled as such
    held = at.dataframe[0].value
    assert list(held["system"]) == ["vector (chosen on dev)", "control: random_direction", "control: random_heads",
                                    "control: 20 random directions (mean of their test gains)"]
    assert list(held["gain on test"])[:2] == [-0.05, -0.05] and held["vector − control 95% CI"][1] == "[-0.083, +0.083]"
    assert "at **percentile 12.5** of theirs" in text and "**not above** their 95th percentile" in text
    assert "Decision: **steer**" in text
    # the sweep figure comes second and says it is the dev split
    assert _title(_figs(at)[0]).startswith("Dev split (selection only)")
    assert any(m.value.startswith("**Best β per vector on the dev split**") for m in at.markdown)
    # a declined run says so above the test result, and reports the unsteered model
    declined = write_synthetic_run(tmp_path / "declined", stages=("steer",))
    summary = json.loads((declined / "steer" / "summary.json").read_text())
    cand = {**summary["test"], "beta": 1.0}
    summary["selected"].update(decision="decline", beta=0.0, candidate={"beta": 1.0, "dev": summary["selected"]["dev"]})
    summary["test"] = {"n": 24, "base": 0.55, "steered": 0.55, "gain": 0.0, "ci": [0.0, 0.0], "decision": "decline",
                       "candidate": cand}
    summary["decision"] = "decline"
    (declined / "steer" / "summary.json").write_text(json.dumps(summary))
    at = _goto(_app(monkeypatch, declined), "steering")
    assert at.warning and at.warning[0].value.startswith("**Steering declined on dev:**")
    text = "\n".join(m.value for m in at.markdown)
    assert "gain **+0.000** (0 by construction" in text and "declined candidate on test" in text
    assert list(at.dataframe[0].value["system"])[:2] == ["unsteered (steering declined)",
                                                        "declined candidate β = 1.0 (not chosen, for information)"]
    # a sweep run (no dev/test summary) shows only the sweep, without the held-out section
    sweep = write_synthetic_run(tmp_path / "sweep", stages=("steer",))
    (sweep / "steer" / "summary.json").unlink()
    at = _goto(_app(monkeypatch, sweep), "steering")
    assert not [s.value for s in at.subheader]
    # a damaged summary is a named error on the page, not a traceback
    (sweep / "steer" / "summary.json").write_text('{"test": ')
    with pytest.raises(RunFolderError, match="summary .*summary.json.*expected a JSON object"):
        data.read_summary(sweep / "steer")


@pytest.mark.parametrize("column", ["rank", "corr"])
def test_head_maps_tick_whole_heads_and_layers(column):
    """Layers and heads are integers: the maps tick every one (small models; plotly's automatic
    ticks fell on half-integers for a 4 x 4 map)."""
    import pandas as pd

    heads = pd.DataFrame([{"layer": L, "head": h, "rank": 1 + 4 * L + h, "corr": 0.1 * h - 0.05 * L}
                          for L in range(4) for h in range(4)])
    for fig in (figures.heads_score_heatmap(heads, column, top=2), figures.yield_heatmap(np.random.rand(4, 4))):
        assert fig.layout.xaxis.dtick == 1 and fig.layout.yaxis.dtick == 1


def test_decay_summary_shows_no_placeholders(full_run, monkeypatch):
    at = _goto(_app(monkeypatch, full_run), "decay")
    frames = [d.value for d in at.dataframe]
    groups = next(v for v in frames if "group" in v and "all" in set(v["group"]))
    assert "layer" not in groups and "head" not in groups and (groups["n_items"] > 0).all()
    heads = next(v for v in frames if "group" in v and set(v["group"]) == {"head"})
    assert {"layer", "head"} <= set(heads) and "n_items" not in heads and (heads[["layer", "head"]] >= 0).all().all()


# ------------------------------------------------- what a person sees on the demo's run folders
_CI_TEXT = re.compile(r"95% CI \[(-?[\d.]+), (-?[\d.]+)\]")
_N_TEXT = re.compile(r"n=(\d+)")


def _band_widths(trace: dict) -> np.ndarray:
    """The widths (upper - lower) of a band trace drawn by line_with_band (pieces split by None)."""
    ys = [None if v is None else float(v) for v in trace["y"]] if isinstance(trace["y"], list) else list(_arr(trace["y"]))
    out, piece = [], []
    for v in [*ys, None]:
        if v is None:
            if piece:
                k = len(piece) // 2
                out += list(np.array(piece[:k]) - np.array(piece[k:][::-1]))
            piece = []
        else:
            piece.append(v)
    return np.array(out)


def _measured_points(fig: dict):
    """(trace, index, ci text, n text) of every point that carries line_with_band's hover."""
    for t in fig["data"]:
        cd = t.get("customdata")
        if t.get("type") == "scatter" and isinstance(cd, list) and cd and isinstance(cd[0], list) \
                and len(cd[0]) == 2 and isinstance(cd[0][1], str):
            for i, (ci, n) in enumerate(cd):
                yield t, i, ci, n


def _check_points(fig: dict) -> int:
    """Every point's n is in its hover; under MIN_N it is grey and open; under n = 30 its interval
    is never of zero width; a band is never of zero width.  Returns the points checked."""
    from auralens.interp.plotting import GREY, MIN_N, ZERO_WIDTH_N

    seen = 0
    for t, i, ci, ntext in _measured_points(fig):
        m = _N_TEXT.search(ntext)
        assert m, (t["name"], ntext)
        n = int(m.group(1))
        symbol, colour = t["marker"]["symbol"][i], t["marker"]["color"][i]
        assert (symbol == "circle-open" and colour == GREY) == (n < MIN_N), (t["name"], i, n, symbol, colour)
        got = _CI_TEXT.search(ci)
        if n < ZERO_WIDTH_N:  # an interval of zero width claims certainty; none at all is said as such
            assert (float(got.group(2)) > float(got.group(1))) if got else ci == "no interval", (t["name"], ci, n)
        seen += 1
    for t in fig["data"]:
        if str(t.get("name", "")).endswith(" 95% CI"):
            assert (_band_widths(t) > 0).all(), t["name"]
    return seen


def test_every_plotted_point_on_the_demo_carries_its_n_and_an_honest_interval(demo_run, monkeypatch):
    at = _app(monkeypatch, demo_run)
    checked = {}
    for view in ("decay", "steering", "probes") + (("compare",) if "compare" in _demo_stages() else ()):
        _goto(at, view)
        from auralens.interp.plotting import MIN_N_NOTE

        assert MIN_N_NOTE in [c.value for c in at.caption] or any(MIN_N_NOTE in c.value for c in at.caption), view
        checked[view] = sum(_check_points(f) for f in _figs(at))
    assert all(checked.values()), checked
    # bars: the overview's accuracy, the compare grid's: n in the hover, Wilson (never zero width) under 30
    _goto(at, "overview")
    bars = [t for f in _figs(at) if "Accuracy" in _title(f) for t in f["data"]]
    assert bars
    for t in bars:
        for lo, hi, ntext in t["customdata"]:
            n = int(_N_TEXT.search(ntext).group(1))
            assert n >= 30 or hi > lo, (t["name"], lo, hi, n)
    _goto(at, "heads")  # integer ticks on both maps (the rank map fell on half-integers)
    for f in _figs(at):
        assert f["layout"]["xaxis"]["dtick"] == 1 and f["layout"]["yaxis"]["dtick"] == 1, _title(f)


def test_the_steering_page_on_the_demo_shows_the_test_result_and_its_controls(demo_run, monkeypatch, tmp_path):
    summary = json.loads((demo_run / "steer" / "summary.json").read_text())
    test, rd = summary["test"], summary["random_directions"]
    at = _goto(_app(monkeypatch, demo_run), "steering")
    subheaders = [s.value for s in at.subheader]
    assert subheaders[:2] == ["Held-out test result", "Dev-split sweep (the selection, not the result)"]
    text = "\n".join(m.value for m in [*at.markdown, *at.caption, *at.warning])
    assert f"**On the held-out test split** (n = {test['n']})" in text
    assert f"gain **{test['gain']:+.3f}**" in text
    if summary["decision"] == "decline":
        assert at.warning[0].value.startswith("**Steering declined on dev:**")
        cand = test["candidate"]
        assert f"for information only: gain {cand['gain']:+.3f} [{cand['ci'][0]:+.3f}, {cand['ci'][1]:+.3f}]" in text
    else:
        assert f"95% CI [{test['ci'][0]:+.3f}, {test['ci'][1]:+.3f}]" in text and "Decision: **steer**" in text
    assert f"at **percentile {rd['vector_percentile']:.1f}** of theirs" in text and f"{rd['k']} random directions" in text
    neutral = summary["neutral"]
    assert "**Cost on the neutral condition" in text and (neutral.get("skipped", "") in text if "skipped" in neutral
                                                          else f"gain {neutral['gain']:+.3f}" in text)
    rows = at.dataframe[0].value.set_index("system")
    ctrl = summary["controls"]["random_direction"]
    assert rows.loc["control: random_direction", "gain on test"] == pytest.approx(ctrl["gain"])
    assert rows.loc[f"control: {rd['k']} random directions (mean of their test gains)", "gain on test"] == \
        pytest.approx(rd["mean"])
    assert _title(_figs(at)[0]).startswith("Dev split (selection only)")
    # the report of the same folder says the same, in the same order
    from auralens.dashboards.report import write_report

    html = write_report(demo_run, tmp_path / "r.html").read_text()
    steer = html[html.index("<h2>Steering</h2>"):]
    assert steer.index("<h3>Held-out test result</h3>") < steer.index("<h3>Dev-split sweep")
    assert f"gain <b>{test['gain']:+.3f}</b>" in steer and f"percentile {rd['vector_percentile']:.1f}</b>" in steer


def test_the_demo_outcome_view_counts_class_claims_and_5_of_5_is_not_certain(demo_run, monkeypatch, tmp_path):
    """The outcome view leaves step 0's count claim out (class claims, as the README compares
    them); a step where 5 items each made one right claim shows Wilson's [0.566, 1], not [1, 1]."""
    import shutil

    import pandas as pd

    from auralens.dashboards.summaries import claim_accuracy_view

    claims = pd.read_parquet(demo_run / "record" / "claims.parquet")
    assert ((claims["kind"] == "count") & (claims["step"] == 0)).any()  # the demo does make count claims
    at = _goto(_app(monkeypatch, demo_run), "decay")
    curve = next(f for f in _figs(at) if _title(f).startswith("Outcome view"))
    line = next(t for t in curve["data"] if not t["name"].endswith("95% CI"))
    want = claim_accuracy_view(claims, ("class",))
    np.testing.assert_allclose(_arr(line["y"]), want["accuracy"].to_numpy(), atol=1e-9)
    n_claims = [int(re.search(r"(\d+) claims", c[1]).group(1)) for c in line["customdata"]]
    assert n_claims == [int((claims[(claims["kind"] == "class")]["step"] == s).sum()) for s in want["step"]]
    at.radio(key="claim_kinds").set_value(next(k for k in at.radio(key="claim_kinds").options if "count claim" in k)).run()
    every = next(t for t in next(f for f in _figs(at) if _title(f).startswith("Outcome view"))["data"]
                 if not t["name"].endswith("95% CI"))
    assert int(re.search(r"(\d+) claims", every["customdata"][0][1]).group(1)) == int((claims["step"] == 0).sum())
    # 5 of 5 right at one step, on a copy of the demo's record folder
    run = Path(shutil.copytree(demo_run, tmp_path / "five"))
    five = pd.DataFrame({"item_id": [f"five-{i}" for i in range(5)], "step": 2, "kind": "class", "sound": 0,
                         "value": "dog", "claim_correct": True})
    rest = claims[claims["step"] != 2]
    pd.concat([rest, five], ignore_index=True).to_parquet(run / "record" / "claims.parquet")
    at = _goto(_app(monkeypatch, run), "decay")
    line = next(t for t in next(f for f in _figs(at) if _title(f).startswith("Outcome view"))["data"]
                if not t["name"].endswith("95% CI"))
    i = list(_arr(line["x"]).astype(int)).index(2)
    assert _arr(line["y"])[i] == 1.0 and "n=5 items · 5 claims" in line["customdata"][i][1]
    lo, hi = map(float, _CI_TEXT.search(line["customdata"][i][0]).groups())
    assert lo < 0.6 and lo == pytest.approx(0.566, abs=1e-3) and hi == 1.0


def test_the_demo_tokens_are_readable_and_probes_are_faceted(demo_run, monkeypatch):
    at = _app(monkeypatch, demo_run)
    _goto(at, "tokens")
    body = at.get("html")[0].proto.body
    spans = re.findall(r'style="background:rgb\((\d+),(\d+),(\d+)\);color:(\w+);', body)
    assert spans
    fg = {"white": (255, 255, 255), "black": (0, 0, 0)}
    ratios = [figures.contrast_ratio(tuple(map(int, s[:3])), fg[s[3]]) for s in spans]
    assert min(ratios) >= 4.5, min(ratios)
    darkest = min(spans, key=lambda s: sum(map(int, s[:3])))
    assert darkest[3] == "white"  # white text on the dark cells
    _goto(at, "probes")
    fig = _figs(at)[0]
    attrs = {t["name"] for t in fig["data"] if t.get("customdata")}
    assert len(attrs) >= 2
    axes = {t.get("xaxis", "x") for t in fig["data"]}
    assert len(axes) == len(attrs)  # one panel per attribute, not overlaid
    assert fig["layout"]["showlegend"] is False
    assert {a["text"] for a in fig["layout"]["annotations"]} >= attrs  # each panel titled by its attribute


def test_tokens_page_refuses_audio_outside_the_run_folder_and_says_why(tmp_path, monkeypatch):
    """A run folder from someone else naming /etc/passwd as an item's audio: the page plays
    nothing and says the file is outside the run folder and dataset root (dashboards.data.audio_refusal)."""
    import pandas as pd

    run = write_synthetic_run(tmp_path / "foreign", n_items=2, long_item_tokens=20, stages=("record",))
    items = pd.read_parquet(run / "record" / "items.parquet")
    items["audio_path"] = "/etc/passwd"
    items.to_parquet(run / "record" / "items.parquet", index=False)
    at = _goto(_app(monkeypatch, run), "tokens")
    assert not at.get("audio")
    said = " ".join(i.value for i in at.info)
    assert "outside" in said and "/etc/passwd" in said, said
