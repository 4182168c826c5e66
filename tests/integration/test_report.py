"""`auralens report`: one self-contained HTML file that opens offline (plotly.js inlined once)."""

from __future__ import annotations

import re

import pytest

from auralens.dashboards.report import write_report
from auralens.dashboards.synthetic import write_synthetic_run
from auralens.interp.errors import RunFolderError

_SCRIPT_TAG = re.compile(r"<script\b[^>]*>", re.I)
_LINK_TAG = re.compile(r"<link\b[^>]*>", re.I)


def _assert_offline(html: str) -> None:
    tags = _SCRIPT_TAG.findall(html)
    assert tags, "no script at all"
    for tag in tags:
        assert "src=" not in tag.lower(), f"remote or external script: {tag}"
    assert not [t for t in tags if "cdn.plot.ly" in t or "https://" in t]
    for tag in _LINK_TAG.findall(html):
        assert "http" not in tag, f"external stylesheet: {tag}"
    # plotly.js exactly once, inline
    assert html.count("Plotly.newPlot") >= 1
    assert len(re.findall(r"plotly\.js v\d+\.\d+\.\d+", html)) == 1


def test_report_of_a_full_run_is_one_offline_file(tmp_path):
    run = write_synthetic_run(tmp_path / "run", n_items=4, long_item_tokens=1000)
    out = write_report(run)
    assert out == run / "report.html" and out.exists()
    html = out.read_text()
    _assert_offline(html)
    for section in ("Accuracy", "Audio attention yield and perception decay", "Probes", "Steering", "Steering vs fine-tuning"):
        assert f"<h2>{section}</h2>" in html
    assert "has not run" not in html
    n_figs = len(re.findall(r'<div id="fig\d+"', html))
    assert n_figs >= 12 and html.count("Plotly.newPlot") == n_figs
    assert 'class="tok"' in html  # the example item's coloured tokens
    assert "… 400 more tokens not shown" in html  # the 1,000-token item, capped at 600 spans


def test_report_notes_missing_stages_and_honours_out(tmp_path):
    run = write_synthetic_run(tmp_path / "run", stages=("eval",))
    out = write_report(run, tmp_path / "elsewhere" / "r.html")
    assert out == tmp_path / "elsewhere" / "r.html"
    html = out.read_text()
    _assert_offline(html)
    for stage in ("record", "probe", "steer", "compare"):
        assert f"The <b>{stage}</b> stage has not run" in html
    assert write_report(run / "eval", tmp_path).name == "report.html"  # a stage folder; out a directory


def test_report_of_a_non_run_folder_is_a_clear_error(tmp_path):
    with pytest.raises(RunFolderError, match="expected a manifest.json"):
        write_report(tmp_path)


def test_report_of_a_run_produced_by_micro(tmp_path, micro_run):
    out = write_report(micro_run, tmp_path / "demo.html")
    _assert_offline(out.read_text())


@pytest.mark.parametrize("rel, found", [
    ("probe/probes.parquet", "expected a parquet table, found a file of"),
    ("record/heads.parquet", "expected a parquet table, found a file of"),
    ("record/yields/00000.safetensors", "expected a safetensors file, found a file of"),
    ("steer/manifest.json", "expected a JSON object, found a file of"),
])
def test_report_of_a_damaged_run_names_the_file(tmp_path, rel, found):
    """A truncated table, item file or manifest is a RunFolderError naming it (the CLI prints it
    as one line, exit code 2), never a crash and never a report that silently leaves it out."""
    run = write_synthetic_run(tmp_path / "run", n_items=3, long_item_tokens=40)
    bad = run / rel
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(RunFolderError, match=re.escape(str(bad)) + r".*" + re.escape(found)):
        write_report(run)
    assert not (run / "report.html").exists()
