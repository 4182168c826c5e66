"""Every figure of the toolkit in one namespace (``from auralens import figures``).

Each plot is written once, in the figure module of the package whose tables it draws; this
module only gathers them for notebooks and scripts:

- :mod:`auralens.interp.figures`   eval and record: accuracy, error attribution, per-head yields,
                          perception decay, claim accuracy, one item's tokens and time bins
- :mod:`auralens.probes.figures`   probe score by layer and by reasoning step
- :mod:`auralens.steering.figures` the β sweep, and steering vs fine-tuning (the measured systems x
                          organisms grid; the papers' reported numbers apart)

Importing it imports plotly only when a figure is drawn.

:func:`static_images` makes every ``fig.show()`` of a notebook store a PNG next to the
interactive figure, so an exported notebook (``jupyter nbconvert --to html``, GitHub's viewer)
shows each figure as an image.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import warnings

from auralens.interp.figures import (
    accuracy_bars,
    claim_accuracy_curve,
    contrast_ratio,
    decay_curves,
    error_types_bar,
    heads_score_heatmap,
    item_step_curve,
    text_colour,
    time_bins_by_step,
    time_bins_strip,
    token_html,
    token_yield_line,
    yield_heatmap,
)
from auralens.interp.plotting import graph_objects
from auralens.probes.figures import accuracy_by_layer, accuracy_by_step, best_layers, step_label, write_html
from auralens.steering.figures import (
    compare_bars,
    compare_figure,
    compare_grid,
    compare_table,
    condition_label,
    cost_table,
    reported_figure,
    reported_table,
    steering_sweep,
)

__all__ = [
    "accuracy_bars",
    "accuracy_by_layer",
    "accuracy_by_step",
    "best_layers",
    "claim_accuracy_curve",
    "compare_bars",
    "compare_figure",
    "compare_grid",
    "compare_table",
    "condition_label",
    "contrast_ratio",
    "cost_table",
    "decay_curves",
    "error_types_bar",
    "heads_score_heatmap",
    "item_step_curve",
    "reported_figure",
    "reported_table",
    "static_images",
    "steering_sweep",
    "step_label",
    "text_colour",
    "time_bins_by_step",
    "time_bins_strip",
    "token_html",
    "token_yield_line",
    "write_html",
    "yield_heatmap",
]


#: the system browsers kaleido 1.x can drive (it never downloads one here)
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
_STATIC_STATE: dict[str, bool] = {}


def _stop_server(kaleido) -> None:
    try:
        kaleido.stop_sync_server(silence_warnings=True)
    except Exception:  # noqa: BLE001 - the kernel is going away; nothing to report to
        pass


def static_images(*, width: int = 900) -> bool:
    """Make ``fig.show()`` store both renderings in the notebook: plotly's interactive JSON
    (``application/vnd.plotly.v1+json``) and a static PNG (``image/png``, drawn by kaleido with the
    system's Chrome/Chromium: Debian's ``chromium`` package; nothing is downloaded).  nbconvert's
    HTML export and GitHub's notebook viewer show the PNG; Jupyter shows the interactive one.
    ``width``: the PNG's width in pixels.

    Returns True when PNGs will be stored.  Without kaleido or a browser it writes one line
    saying why and keeps the interactive figures only (False).  One kaleido server (one browser
    process) serves every figure of the kernel: about 0.2 s a figure after a first of ~2 s."""
    import plotly.io as pio  # heavy: only when a notebook asks

    if "on" in _STATIC_STATE:
        return _STATIC_STATE["on"]
    why = None
    try:
        import kaleido
    except ImportError:
        kaleido, why = None, "kaleido is not installed (pip install kaleido)"
    if kaleido is not None and not any(shutil.which(n) for n in CHROMIUM_NAMES):
        why = "no Chrome/Chromium on PATH (apt-get install chromium)"
    if kaleido is not None and why is None:
        try:
            kaleido.start_sync_server(silence_warnings=True)
            atexit.register(_stop_server, kaleido)
            warnings.filterwarnings("ignore", message="The kopts argument is ignored")
            pio.to_image(graph_objects().Figure(), format="png", width=50, height=50)  # starts the browser once
        except Exception as exc:  # noqa: BLE001 - any failure of the browser: interactive figures only
            why = f"kaleido could not draw a figure ({type(exc).__name__}: {exc})"
    if why is None:
        pio.renderers["png"].width = width  # the height: the figure's own (faceted figures are tall)
        pio.renderers.default = "plotly_mimetype+png"
    else:
        pio.renderers.default = "plotly_mimetype"
        sys.stdout.write(f"static figure images off: {why}; the figures are interactive only\n")
    _STATIC_STATE["on"] = why is None
    return why is None


