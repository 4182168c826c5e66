"""Every figure of the toolkit in one namespace (``from auralens import figures``).

Each plot is written once, in the figure module of the package whose tables it draws; this
module only gathers them for notebooks and scripts:

- :mod:`auralens.interp.figures`   eval and record: accuracy, error attribution, per-head yields,
                          perception decay, claim accuracy, one item's tokens and time bins
- :mod:`auralens.probes.figures`   probe score by layer and by reasoning step
- :mod:`auralens.steering.figures` the β sweep, and steering vs fine-tuning (the measured systems x
                          organisms grid; the papers' reported numbers apart)

Importing it imports plotly only when a figure is drawn.
"""

from __future__ import annotations

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
