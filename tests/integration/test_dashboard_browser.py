"""End to end in a real headless browser: Debian's /usr/bin/chromium driven by Playwright's
Python API (no browser is ever downloaded).  Starts the app with ``streamlit run`` on a free
loopback port, waits for the layer x head heatmap to render and saves a screenshot; then opens
the offline HTML report with the network cut off and checks its figures draw."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed at /usr/bin/chromium "
                       "(apt-get install chromium); the browser test never downloads a browser"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"streamlit did not answer at {url} within {timeout} s")


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def test_heatmap_renders_in_chromium(tmp_path, browser):
    from auralens.dashboards import streamlit_command
    from auralens.dashboards.synthetic import write_synthetic_run

    run = write_synthetic_run(tmp_path / "run", n_items=4, long_item_tokens=1000)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false", "OMP_NUM_THREADS": "1"}
    log = (tmp_path / "streamlit.log").open("w")
    proc = subprocess.Popen(streamlit_command([run], host="127.0.0.1", port=port), stdout=log, stderr=subprocess.STDOUT,
                            env=env, cwd=tmp_path)
    try:
        _wait_healthy(url, proc)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/heads", wait_until="domcontentloaded", timeout=120_000)
        page.wait_for_selector(".js-plotly-plot", timeout=120_000)
        page.wait_for_selector(".js-plotly-plot .heatmaplayer, .js-plotly-plot .hm", state="attached", timeout=60_000)
        assert "audio yield at the last prompt token" in page.inner_text("body")
        assert not page.query_selector('[data-testid="stException"]')
        shot = tmp_path / "heatmap.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        # the token view: one span per token of the chosen item, values on hover
        page.goto(f"{url}/tokens", wait_until="domcontentloaded", timeout=120_000)
        page.wait_for_selector("span.tok", timeout=120_000)
        assert page.locator("span.tok").first.get_attribute("title").startswith("token 0")
        page.screenshot(path=str(tmp_path / "tokens.png"), full_page=False)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
    if os.environ.get("AURALENS_KEEP_SCREENSHOTS"):
        shutil.copy(shot, os.environ["AURALENS_KEEP_SCREENSHOTS"])


def test_report_draws_offline(tmp_path, browser):
    from auralens.dashboards.report import write_report
    from auralens.dashboards.synthetic import write_synthetic_run

    run = write_synthetic_run(tmp_path / "run", n_items=3, long_item_tokens=200)
    out = write_report(run)
    context = browser.new_context(offline=True)
    requests: list[str] = []
    context.on("request", lambda r: requests.append(r.url))
    page = context.new_page()
    page.goto(out.as_uri(), wait_until="load", timeout=120_000)
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
    n_drawn = page.eval_on_selector_all(".js-plotly-plot", "els => els.length")
    n_figs = out.read_text().count("Plotly.newPlot")
    assert n_drawn == n_figs >= 10
    assert all(u.startswith(("file:", "data:", "about:")) for u in requests), requests
    page.screenshot(path=str(tmp_path / "report.png"))
    context.close()
