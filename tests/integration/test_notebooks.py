"""The research notebooks: each executes top to bottom on `micro` (05: on `smol-audio`) (nbclient, the venv's python3
kernel, a timeout per cell), writing its run folders under the test's tmp_path.  A notebook is
skipped, with the reason, only when a stage function it calls (or an embedded model it loads)
does not exist in this checkout yet.  A static check runs always: the GPU cell is guarded by
``RUN_ON_GPU = False``, the first cell turns on the static figure images
(``figures.static_images()``) and the notebooks import only the project's packages (plus the
standard library, numpy, pandas and IPython).

After executing, ``jupyter nbconvert --to html`` of the executed copy must show every figure as
an ``<img>`` (a PNG stored beside each interactive plotly figure: kaleido with Debian's
chromium, which .ci/run installs; without a chromium that check is skipped, saying so), and the
printed numbers must not be degenerate: no NaN, no interval of [0, 0], an accuracy that is not
1.000 everywhere."""

from __future__ import annotations

import ast
import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

NB_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = {
    "01_perception_decay.ipynb": {"needs": [("auralens.interp.evaluate", "stage_eval"), ("auralens.interp.record", "stage_record")],
                                  "models": ["micro"]},
    "02_probes.ipynb": {"needs": [("auralens.probes.stage", "stage_probe")], "models": ["micro"]},
    "03_steering.ipynb": {"needs": [("auralens.steering.stage_fit", "stage_steer_fit"), ("auralens.steering.stage_eval", "stage_steer_eval")],
                          "models": ["micro"]},
    # the fine-tuned arms join where their weights exist (compare's auto skips the others, with a note)
    "04_steering_vs_finetuning.ipynb": {"needs": [("auralens.compare", "stage_compare")],
                                        "models": ["micro", "micro-decay"]},
    # the real-weights model (assembled from the installed pretrained packages); its section 1
    # reads the committed full-size findings (notebooks/data/findings_smol_audio.json)
    "05_real_weights.ipynb": {"needs": [("auralens.findings", "findings"), ("auralens.interp.record", "stage_record")],
                              "models": ["smol-audio"]},
}
ALLOWED = {"interp", "probes", "steering", "dashboards", "auralens", "numpy", "pandas", "IPython"}
CELL_TIMEOUT_S = 900


def _code_cells(name: str) -> list[str]:
    nb = nbformat.read(NB_DIR / name, as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code"]


def _missing(name: str) -> str | None:
    for module, attr in NOTEBOOKS[name]["needs"]:
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            return f"{name} needs {module}.{attr}, and {module} does not import yet ({exc})"
        if not hasattr(mod, attr):
            return f"{name} needs {module}.{attr}, which does not exist yet"
    from auralens.interp.errors import ConfigError
    from auralens.interp.loading import resolve_source

    for model in NOTEBOOKS[name]["models"]:
        try:
            resolve_source(model)
        except ConfigError as exc:
            return f"{name} needs the embedded model {model!r}: {exc}"
    return None


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_is_clean_guarded_and_imports_only_the_packages(name):
    nb = nbformat.read(NB_DIR / name, as_version=4)
    nbformat.validate(nb)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
    sources = _code_cells(name)
    assert any("RUN_ON_GPU = False" in s for s in sources)
    gpu = [s for s in sources if "Qwen/Qwen2-Audio-7B-Instruct" in s]
    assert gpu and all(s.lstrip().startswith("if RUN_ON_GPU:") for s in gpu), "the 7B cell must be guarded"
    assert any(c.cell_type == "markdown" and "GPU" in c.source for c in nb.cells)
    assert "figures.static_images()" in sources[0], "the first cell stores a PNG of every figure"
    stdlib = set(getattr(sys, "stdlib_module_names", ()))
    for src in sources:
        for node in ast.walk(ast.parse(src)):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for m in mods:
                top = m.split(".")[0]
                assert top in ALLOWED or top in stdlib, f"{name} imports {m}"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_executes_on_micro(name, tmp_path, monkeypatch):
    why = _missing(name)
    if why:
        pytest.skip(why)
    from nbclient import NotebookClient

    monkeypatch.setenv("AURALENS_NB_OUT", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    nb = nbformat.read(NB_DIR / name, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(NB_DIR)}})
    try:
        client.execute()
    finally:
        nbformat.write(nb, tmp_path / name)  # the executed copy, for reading a failure
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    stem = name.removesuffix(".ipynb")
    assert (tmp_path / stem).is_dir() and any((tmp_path / stem).rglob("manifest.json"))
    _check_numbers(name, outputs)
    _check_static_images(name, tmp_path, outputs)


def _printed(outputs) -> str:
    """What the notebook printed: its streams and the text of its displayed tables."""
    out = []
    for o in outputs:
        if o.get("output_type") == "stream":
            out.append(o.get("text", ""))
        elif "text/plain" in o.get("data", {}) and "application/vnd.plotly.v1+json" not in o["data"]:
            out.append(o["data"]["text/plain"])
    return "\n".join(out)


# numbers a notebook prints that say nothing: a NaN (a correlation of all-equal answers), an
# interval of [0, 0] (a control CI from all-equal data)
_DEGENERATE = (re.compile(r"\bnan\b", re.I), re.compile(r"\[\s*[-+]?0(?:\.0+)?,\s*[-+]?0(?:\.0+)?\s*\]"))
_ACCURACY = re.compile(r"accuracy (\d\.\d{3})")


def _check_numbers(name: str, outputs) -> None:
    text = _printed(outputs)
    for pattern in _DEGENERATE:
        found = pattern.findall(text)
        assert not found, f"{name} prints degenerate numbers {found[:3]}: use more items"
    accs = [float(a) for a in _ACCURACY.findall(text)]
    assert not accs or set(accs) != {1.0}, f"{name}: every printed accuracy is 1.000 (use more or harder items)"


def _check_static_images(name: str, tmp_path: Path, outputs) -> None:
    """nbconvert's HTML of the executed notebook shows each plotly figure as an <img>."""
    figs = [o for o in outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert figs, f"{name} draws no figure"
    if not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")):
        assert "static figure images off" in _printed(outputs)
        pytest.skip("no Chrome/Chromium (apt-get install chromium): the notebook says its figures are "
                    "interactive only; the HTML-export check needs the PNGs")
    assert all("image/png" in o["data"] for o in figs), f"{name}: a figure without its PNG"
    subprocess.run([sys.executable, "-m", "nbconvert", "--to", "html", str(tmp_path / name), "--output-dir",
                    str(tmp_path / "html")], check=True, capture_output=True, text=True, timeout=300)
    page = (tmp_path / "html" / name.replace(".ipynb", ".html")).read_text()
    imgs = re.findall(r'<img\b[^>]*src="data:image/png;base64,', page)
    assert len(imgs) >= len(figs), f"{name}: {len(imgs)} <img> in the HTML export for {len(figs)} figures"
