"""``auralens report RUN``: one self-contained HTML file with a run's figures.

The file opens offline: plotly.js is inlined once in the head (no CDN, no remote script), and
each figure is a ``<div>`` drawn by it.  The figures are those of the dashboard, the stages'
HTML and the notebooks (:mod:`auralens.interp.figures`, :mod:`auralens.probes.figures`, :mod:`auralens.steering.figures`),
computed from the same run-folder tables (:mod:`auralens.dashboards.data`);
a stage that has not run gets a short note instead of its section.  A damaged file (a
truncated parquet table, safetensors item or manifest.json) raises
:class:`auralens.interp.errors.RunFolderError` naming it: a report never silently leaves it out.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

from auralens.dashboards import data
from auralens.dashboards.summaries import (
    CLAIM_KINDS,
    CLAIM_KINDS_NOTE,
    DEFAULT_CLAIM_KINDS,
    claim_accuracy_view,
    markdown_to_html,
    steer_headline,
)
from auralens.interp import figures
from auralens.interp.plotting import MIN_N_NOTE
from auralens.interp.runs import atomic_write_text
from auralens.probes.figures import accuracy_by_layer, accuracy_by_step, step_label
from auralens.steering.figures import (
    compare_figure,
    compare_grid,
    compare_table,
    cost_table,
    reported_figure,
    reported_table,
    steering_sweep,
)

__all__ = ["build_report_html", "write_report"]

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1200px;padding:24px;color:#222}
h1{margin-bottom:4px} h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:40px}
.meta{color:#555;font-size:0.92em} .note{background:#f5f7fb;border-left:4px solid #7a9cc6;padding:8px 12px;color:#333}
table.tbl{border-collapse:collapse;font-size:0.85em;margin:8px 0} table.tbl td,table.tbl th{border:1px solid #ddd;padding:3px 8px;text-align:right}
table.tbl th{background:#f3f3f3} .fig{margin:12px 0} code{background:#f3f3f3;padding:0 3px}
"""


class _Doc:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.n_figs = 0

    def h(self, level: int, text: str) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def p(self, text: str, cls: str | None = None) -> None:
        self.parts.append(f'<p{f" class={cls!r}" if cls else ""}>{text}</p>')

    def note(self, text: str) -> None:
        self.p(text, "note")

    def fig(self, fig) -> None:
        self.n_figs += 1
        self.parts.append('<div class="fig">' + fig.to_html(
            full_html=False, include_plotlyjs=False, div_id=f"fig{self.n_figs}",
            config={"displaylogo": False, "responsive": True}) + "</div>")

    def table(self, df, *, max_rows: int = 40) -> None:
        if df is None or len(df) == 0:
            return
        more = len(df) - max_rows
        self.parts.append(df.head(max_rows).to_html(index=False, classes="tbl", border=0, float_format=lambda v: f"{v:.4g}",
                                                    na_rep=""))
        if more > 0:
            self.p(f"… {more} more rows in the run folder.", "meta")

    def raw(self, s: str) -> None:
        self.parts.append(s)


def _not_run(doc: _Doc, stage: str) -> None:
    doc.note(f"The <b>{stage}</b> stage has not run for this run folder ({html.escape(data.STAGE_LABELS[stage])}); "
             f"run <code>auralens {stage}</code> or <code>auralens demo</code> to add this section.")


def _eval_section(doc: _Doc, run: data.Run) -> None:
    doc.h(2, "Accuracy")
    if not run.has("eval"):
        return _not_run(doc, "eval")
    acc = data.read_table(run.folder("eval"), "accuracy.parquet")
    if acc is None:
        return doc.note("The eval stage has not written accuracy.parquet yet.")
    doc.fig(figures.accuracy_bars(acc))
    doc.table(acc)


def _record_section(doc: _Doc, run: data.Run, *, top_k: int, max_tokens: int) -> None:
    doc.h(2, "Audio attention yield and perception decay")
    if not run.has("record"):
        return _not_run(doc, "record")
    doc.p(html.escape(MIN_N_NOTE), "meta")
    rd = run.folder("record")
    heads = data.read_table(rd, "heads.parquet")
    top = ([(int(r.layer), int(r.head)) for r in heads.nsmallest(top_k, "rank").itertuples()]
           if heads is not None and "rank" in heads else [])
    mean = data.mean_prompt_yield(rd)
    if mean is not None:
        z, n = mean
        doc.fig(figures.yield_heatmap(z, title=f"Mean audio yield at the last prompt token ({n} items; rings: top-{len(top)} heads)",
                                      highlight=top, n=f"mean over n={n} items"))
    if heads is not None:
        doc.fig(figures.heads_score_heatmap(heads, "rank" if "rank" in heads else heads.columns[2], top=top_k))
        doc.table(heads.head(max(top_k, 10)))
    decay = data.read_table(rd, "decay.parquet")
    if decay is not None:
        for axis in ("step", "token_bin"):
            if (decay["axis"] == axis).any():
                doc.fig(figures.decay_curves(decay, axis=axis, heads=top[:2]))
    summ = data.read_table(rd, "decay_summary.parquet")
    if summ is not None:
        doc.p("Decay summary (slope of mean yield per step, last/first ratio) for all heads and the specialist heads:", "meta")
        doc.table(summ[summ["group"] != "head"])
    claims = data.read_table(rd, "claims.parquet")
    if claims is not None and "kind" in claims:
        doc.fig(figures.claim_accuracy_curve(claim_accuracy_view(claims, CLAIM_KINDS[DEFAULT_CLAIM_KINDS]),
                                             title=f"Outcome view: accuracy of perceptual claims by step "
                                                   f"({DEFAULT_CLAIM_KINDS})", name="claim accuracy: class claims"))
        doc.p(html.escape(CLAIM_KINDS_NOTE), "meta")
    else:
        doc.fig(figures.claim_accuracy_curve(data.read_table(rd, "claim_accuracy.parquet")))
        doc.note("This run has no claims.parquet: the outcome view is claim_accuracy.parquet's, which counts every "
                 "claim kind, step 0's count claim included.")
    items = data.read_table(rd, "items.parquet")
    if items is not None and "error_type" in items:
        doc.fig(figures.error_types_bar(items))
    # one example item: the longest, coloured by the top specialist head
    listing = data.list_items(rd)
    if len(listing):
        idx = int(listing.sort_values("n_tokens").iloc[-1]["item_index"]) if "n_tokens" in listing else int(listing["item_index"].iloc[0])
        item = data.read_item(rd, idx)  # a damaged item file raises RunFolderError naming it
        layer, head = top[0] if top else (item.n_layers - 1, 0)
        doc.h(3, f"Example item {item.item_id} ({item.n_tokens} tokens), coloured by the yield of L{layer}H{head}")
        doc.fig(figures.yield_heatmap(data.yield_at(item, "prompt"), title=f"{item.item_id}: yield at the last prompt token",
                                      highlight=top))
        values = item.yields[:, layer, head]
        doc.raw(figures.token_html(item.pieces, values, steps=item.steps, max_tokens=max_tokens,
                                   caption=f"yield of L{layer}H{head}; hover a token for its value"))
        doc.fig(figures.token_yield_line(values, item.steps, name=f"L{layer}H{head}"))
        doc.fig(figures.item_step_curve(item.yields, item.steps, heads=top, chosen=(layer, head),
                                        title=f"{item.item_id}: yield by reasoning step"))
        if item.has_time_bins:
            tb = data.read_time_bins(rd, idx, layer, head)
            duration = None
            if items is not None and "audio_path" in items:
                row = items[items["item_index"] == idx] if "item_index" in items else items.iloc[:0]
                wav = data.audio_file(rd, row.iloc[0]["audio_path"]) if len(row) else None
                duration = data.audio_duration(wav) if wav else None
            doc.fig(figures.time_bins_by_step(tb, item.steps, duration=duration,
                                              title=f"L{layer}H{head}: where in the clip each step listens"))


def _probe_section(doc: _Doc, run: data.Run) -> None:
    doc.h(2, "Probes")
    if not run.has("probe"):
        return _not_run(doc, "probe")
    probes = data.read_table(run.folder("probe"), "probes.parquet")
    if probes is None or probes.empty:
        return doc.note("The probe stage has not written probes.parquet yet.")
    combos = probes[["site", "position"]].drop_duplicates().head(4)
    for site, position in combos.itertuples(index=False):
        d = probes[(probes["site"] == site) & (probes["position"] == position)]
        steps = sorted(d["step"].astype(object).unique(), key=lambda v: (step_label(v) != "—", step_label(v).zfill(6)))
        first = None if step_label(steps[0]) == "—" else steps[0]
        doc.fig(accuracy_by_layer(probes, site=site, position=position, step=first))
        if len(steps) > 1:
            doc.fig(accuracy_by_step(probes, site=site, position=position))
    doc.table(probes.sort_values("selectivity", ascending=False).head(15))


def _steer_section(doc: _Doc, run: data.Run) -> None:
    """The held-out result first (summary.json: the decision, the test gain with its CI beside
    the controls and the random-direction percentile), then the dev sweep, labelled as such."""
    doc.h(2, "Steering")
    if not run.has("steer"):
        return _not_run(doc, "steer")
    steer = data.read_table(run.folder("steer"), "steering.parquet")
    if steer is None or steer.empty:
        return doc.note("The steer stage has not written steering.parquet yet.")
    head = steer_headline(data.read_summary(run.folder("steer")))
    if head.held_out:
        import pandas as pd  # heavy: the CLI imports this module for --help

        doc.h(3, "Held-out test result")
        doc.p(markdown_to_html(head.setting), "note" if head.decision == "decline" else None)
        doc.p(markdown_to_html(head.headline))
        doc.table(pd.DataFrame(head.rows))
        for line in (head.random, head.cost):
            if line:
                doc.p(markdown_to_html(line))
        if head.dev:
            doc.p(markdown_to_html(head.dev), "meta")
        doc.h(3, "Dev-split sweep (the selection, not the result)")
    else:
        for note in head.notes[:1]:
            doc.note(markdown_to_html(note))
    split = "Dev split (selection only)" if head.held_out else "Steering (in-sample)"
    cats = sorted(steer["category"].astype(str).unique(), key=lambda c: (c != "all", c)) if "category" in steer else [None]
    doc.fig(steering_sweep(steer, category=cats[0], y="accuracy", title=f"{split}: accuracy vs β"))
    if "delta" in steer:
        doc.fig(steering_sweep(steer, category=cats[0], y="delta", title=f"{split}: gain over β=0 vs β"))
        d = steer[steer["category"].astype(str) == cats[0]] if cats[0] is not None else steer
        best = d.loc[d.groupby([c for c in ("vector", "method", "layer", "positions", "format") if c in d], dropna=False)["delta"].idxmax()]
        doc.p("Best β per vector on the dev split (largest dev gain over β=0; the selection, not the result):"
              if head.held_out else "Best β per vector (largest gain over β=0, chosen on these same items: optimistic):",
              "meta")
        doc.table(best.sort_values("delta", ascending=False))


def _compare_section(doc: _Doc, run: data.Run) -> None:
    doc.h(2, "Steering vs fine-tuning")
    if not run.has("compare"):
        return _not_run(doc, "compare")
    comp = data.read_table(run.folder("compare"), "compare.parquet")
    if comp is None or comp.empty:
        return doc.note("The compare stage has not written compare.parquet yet.")
    source = comp["source"].astype(str) if "source" in comp else None
    measured = comp if source is None else comp[source != "reported"]
    reported = comp.iloc[:0] if source is None else comp[source == "reported"]
    doc.h(3, "Measured: systems × organisms")
    if measured.empty:
        doc.note("This compare run has no measured rows.")
    else:
        doc.p("Each cell: value [95% CI] on the held-out items of that condition; gains are paired bootstraps "
              "against base on the same items.", "meta")
        doc.p("Accuracy:", "meta")
        doc.table(compare_grid(measured, metric="accuracy"), max_rows=200)
        gains = compare_grid(measured, metric="gain_vs_base")
        if len(gains):
            doc.p("Gain over base (paired):", "meta")
            doc.table(gains, max_rows=200)
        doc.fig(compare_figure(measured))
        cost = cost_table(measured)
        if len(cost):
            doc.p("Cost: training minutes and FLOPs (0: nothing trained), the steering vector's fit FLOPs, and per "
                  "condition the forward passes, PAUSE tokens and generated tokens per item:", "meta")
            doc.table(cost, max_rows=200)
        doc.p("Every measured number:", "meta")
        doc.table(compare_table(measured), max_rows=400)
    doc.h(3, "Quoted from the papers (not measured here)")
    if reported.empty:
        doc.note("No reported rows in this run.")
    else:
        doc.note("Other models on other benchmarks (MMAU, CAFE perception), as the papers state them: different "
                 "quantities from the measured cafe accuracies above, so never drawn on the same axis.")
        doc.table(reported_table(reported))
        doc.fig(reported_figure(reported))


def build_report_html(run_dir: str | Path, *, top_k: int = 8, max_tokens: int = 600) -> str:
    """The report as one HTML string (see :func:`write_report`)."""
    from plotly.offline import get_plotlyjs

    run = data.open_run(run_dir)
    run.check()  # a damaged manifest.json is an error here, not a silently missing section
    m: dict[str, Any] = run.manifest
    doc = _Doc()
    doc.h(1, f"auralens report: {run.name}")
    meta = " · ".join(f"{k} <code>{html.escape(str(m.get(k)))}</code>" for k in ("model", "data", "seed", "n") if k in m)
    doc.p(f"Run folder <code>{html.escape(str(run.path))}</code>" + (f" · {meta}" if meta else ""), "meta")
    doc.p("Stages: " + " · ".join(f"{'✓' if run.has(s) else '✗'} {s}" for s in data.STAGES)
          + f" · written {time.strftime('%Y-%m-%d %H:%M')}", "meta")
    commands = {s: data.read_manifest(f).get("command") for s, f in run.stages.items()}
    if (run.path / "manifest.json").exists() and m.get("command"):
        commands = {"run": m["command"]}
    for stage, command in commands.items():
        if command:
            doc.p(f"{html.escape(stage)}: <code>{html.escape(str(command))}</code>", "meta")
    _eval_section(doc, run)
    _record_section(doc, run, top_k=top_k, max_tokens=max_tokens)
    _probe_section(doc, run)
    _steer_section(doc, run)
    _compare_section(doc, run)
    head = (f'<meta charset="utf-8"><title>auralens report: {html.escape(run.name)}</title><style>{_CSS}</style>'
            f'<script type="text/javascript">{get_plotlyjs()}</script>')
    return f"<!DOCTYPE html>\n<html><head>{head}</head><body>\n" + "\n".join(doc.parts) + "\n</body></html>\n"


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write ``out`` (default ``RUN/report.html``): one self-contained HTML file with the run's
    figures that opens offline (plotly.js inlined once).  Returns the path written."""

    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "report.html"
    if out.is_dir():
        out = out / "report.html"
    atomic_write_text(out, build_report_html(run_dir))
    return out
