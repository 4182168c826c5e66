"""Findings on a model nobody here planted: the seed papers' claims, one row each, read from the
run folders of the commands in the README's "Findings on the real-weights model".

::

    python -m auralens.findings runs/f23            # the table (rich), or
    python -m auralens.findings runs/f23 --json     # strict JSON

Every number comes from a run folder written by an ``auralens`` command (eval, record, ablate,
probe, steer eval, compare); this module only reads them, pairs items and computes intervals with
:mod:`auralens.interp.stats`.  Selections (heads, layers, β) were made inside those commands on
calibration/dev items; the rows here are their held-out test numbers.  A claim whose run folder is
absent gets a row that says "not run" (never a number).

Verdicts (stated per row in ``rule``): *replicates* when the 95% CI excludes 0 (or chance) in the
paper's direction; *does not replicate* when it excludes it in the other direction, or when the
claim needs something this model does not do (e.g. a reasoning chain) and the run shows that it
does not; otherwise *inconclusive at this n*.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from auralens.interp.errors import AuralensError, ConfigError
from auralens.interp.listening import MIN_YIELD
from auralens.interp.papers import GLAZER, MPAR2, REPORTED
from auralens.interp.record_analysis import load_yields
from auralens.interp.runs import RunFolder
from auralens.interp.stats import bootstrap_mean_ci, bootstrap_stat_ci
from auralens.organisms.validate import correct_by_base, decay_onsets, onset_text, paired_by_item

__all__ = ["RUNS", "claims_figure", "decay_rows", "finetune_rows", "findings", "heads_rows", "main", "markdown_table", "probe_rows",
           "steering_rows", "text_prior_rows"]

#: claim -> the run folder names (under the findings folder) it reads
RUNS = {
    "text_prior": ("eval-neutral", "eval-congruent", "eval-conflict"),
    "heads": ("record-neutral",),
    "heads_causal": ("ablate-neutral",),
    "decay": ("record-cot",),
    "probes": ("probe-spoken",),
    "steering": ("steer-eval",),
    "finetune": ("compare",),
}


def _r(x: float, k: int = 4) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), k)


def _row(claim: str, paper: str, paper_number: str, measured: str, value: float | None, ci: Any, n: int | None,
         verdict: str, rule: str, runs: list[str]) -> dict[str, Any]:
    return {"claim": claim, "paper": paper, "paper_number": paper_number, "measured": measured,
            "value": _r(value) if value is not None else None,
            "ci": None if ci is None else [_r(ci[0]), _r(ci[1])], "n": n, "verdict": verdict, "rule": rule,
            "runs": runs}


def _verdict(lo: float, hi: float, direction: int, null: float = 0.0) -> str:
    """``direction`` +1: the paper says the value exceeds ``null``; -1: lies below it."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "inconclusive at this n"
    if direction * (lo - null) > 0 and direction * (hi - null) > 0:
        return "replicates"
    if direction * (hi - null) < 0 and direction * (lo - null) < 0:
        return "does not replicate"
    return "inconclusive at this n"


def _open(folder: Path, name: str) -> RunFolder | None:
    """The run folder ``name`` when it exists and its run completed (None otherwise: a row says
    "not run", never a number from a partial run)."""
    p = folder / name
    if not (p / "manifest.json").exists():
        return None
    run = RunFolder.open(p)
    return run if run.manifest.get("status") == "complete" else None


def _not_run(claim: str, paper: str, paper_number: str, names: tuple[str, ...], why: str) -> dict[str, Any]:
    return _row(claim, paper, paper_number, f"not run: {why}", None, None, None, "not run", "", list(names))


# --- 2. text prior ----------------------------------------------------------------------------

def _by_base(run: RunFolder, audio: str) -> dict[str, float]:
    """Correctness of the direct answers per underlying item (the cue condition cut from the id)."""
    df = run.read_table("items.parquet")
    return correct_by_base(df[df["format"] == "direct"], audio)


def _paired_ci(a: dict[str, float], b: dict[str, float]) -> tuple[float, float, float, int]:
    """Mean of ``a − b`` over the items in both, its paired BCa CI, and that number of items."""
    d = np.asarray(paired_by_item(a, b), dtype=np.float64)
    m, lo, hi = bootstrap_mean_ci(d, bounds=(-1.0, 1.0))
    return float(m), float(lo), float(hi), len(d)


def text_prior_rows(folder: Path) -> list[dict[str, Any]]:
    names = RUNS["text_prior"]
    opened = [_open(folder, n) for n in names]
    paper = "none (emergent: the model was never trained with cues)"
    runs = [r for r in opened if r is not None]
    if len(runs) != len(names):
        return [_not_run("A wrong text cue pulls the answer away from the audio", paper, "—", names,
                         "eval on cafe-neutral / congruent / conflict")]
    neu, con, cong = (_by_base(r, "real") for r in (runs[0], runs[2], runs[1]))
    rows = []
    m, lo, hi, n = _paired_ci(neu, con)
    rows.append(_row("A wrong text cue pulls the answer away from the audio (neutral − conflict accuracy, "
                     "real audio, paired by item)", paper, "—", f"{m:+.3f}", m, (lo, hi), n,
                     _verdict(lo, hi, +1), "CI > 0: the cue lowers accuracy", list(names[::2])))
    m, lo, hi, n = _paired_ci(cong, neu)
    rows.append(_row("A right text cue helps (congruent − neutral accuracy, real audio, paired)", paper, "—",
                     f"{m:+.3f}", m, (lo, hi), n, _verdict(lo, hi, +1), "CI > 0: the cue raises accuracy",
                     list(names[:2])))
    cong_sil = _by_base(runs[1], "silence")
    m, lo, hi, n = _paired_ci(cong_sil, _by_base(runs[0], "silence"))
    rows.append(_row("With silence, the model answers from the cue (congruent − neutral accuracy, silence, "
                     "paired)", paper, "—", f"{m:+.3f} (congruent with silence: {np.mean(list(cong_sil.values())):.3f})",
                     m, (lo, hi), n, _verdict(lo, hi, +1), "CI > 0: the text alone moves the answer",
                     list(names[:2])))
    return rows


# --- 1. specialist heads ----------------------------------------------------------------------

def _pearson(y: np.ndarray, c: np.ndarray, axis: int = -1) -> np.ndarray:
    yc = y - y.mean(axis, keepdims=True)
    cc = c - c.mean(axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (yc * cc).sum(axis) / np.sqrt((yc**2).sum(axis) * (cc**2).sum(axis))


def heads_rows(folder: Path, k: int = 8) -> list[dict[str, Any]]:
    rows = []
    rec = _open(folder, RUNS["heads"][0])
    claim = (f"The top-{k} listening heads (ranked on calibration items) have last-prompt audio yields that track "
             "correctness on held-out items (Pearson r of their mean yield with correctness)")
    if rec is None:
        rows.append(_not_run(claim, GLAZER, "ranking reported; no test correlation", RUNS["heads"],
                             "record with --calibration"))
    else:
        heads = rec.read_table("heads.parquet").sort_values("rank")
        top = [(int(r.layer), int(r.head)) for r in heads.head(k).itertuples()]
        df = rec.read_table("items.parquet").sort_values("item_index")
        last, correct = load_yields(rec, df)[2], df["correct"].to_numpy(dtype=np.float64)
        topy = np.mean([last[:, layer, head] for layer, head in top], 0)
        r, lo, hi = bootstrap_stat_ci([topy, correct], _pearson, bounds=(-1.0, 1.0), what="correlation")
        # the same statistic for k random heads that attend to the audio (the listening floor)
        rng = np.random.default_rng(0)
        listening = [(int(x.layer), int(x.head)) for x in heads.itertuples() if x.mean_yield >= MIN_YIELD]
        rand = []
        for _ in range(200):
            pick = rng.choice(len(listening), size=min(k, len(listening)), replace=False)
            rand.append(float(_pearson(np.mean([last[:, listening[i][0], listening[i][1]] for i in pick], 0),
                                       correct)))
        pct = float(np.mean(np.asarray(rand) < r)) if np.isfinite(r) else float("nan")
        prov = rec.manifest.get("heads", {})
        rows.append(_row(claim, GLAZER, "ranking reported; no test correlation",
                         f"r = {r:+.3f}; above {100 * pct:.0f}% of 200 random {k}-sets of listening heads "
                         f"(accuracy {correct.mean():.3f}; heads ranked on {prov.get('heads_selection', '?')})",
                         r, (lo, hi), len(correct), _verdict(lo, hi, +1), "CI > 0: yield tracks correctness",
                         [RUNS["heads"][0]]))
    abl = _open(folder, RUNS["heads_causal"][0])
    claim = "Ablating the top-k listening heads lowers held-out accuracy more than ablating k random listening heads"
    if abl is None:
        rows.append(_not_run(claim, GLAZER, "—", RUNS["heads_causal"], "ablate --heads-from the record run"))
    else:
        s = json.loads(abl.file("ablation.json").read_text())
        m, ci, acc = float(s["diff"]), s["ci"], s["accuracy"]
        rows.append(_row(claim, GLAZER, "—",
                         f"drop(top-{s['k']}) − drop(random-{s['k']}) = {m:+.3f} ({s['mode']} ablation; accuracy "
                         f"{acc['none']:.3f} → {acc['top_k']:.3f} top-k, {acc['random_k']:.3f} random-k over "
                         f"{s['n_draws']} draws)", m, ci, int(s["n"]), _verdict(ci[0], ci[1], +1),
                         f"CI > 0: the top-k heads matter more ({s['ci_method']})", [RUNS["heads_causal"][0]]))
    return rows


# --- 3. perception decay ------------------------------------------------------------------------

def decay_rows(folder: Path) -> list[dict[str, Any]]:
    name = RUNS["decay"][0]
    run = _open(folder, name)
    claim = "Perception decays along the reasoning chain: the audio yield falls by step (slope < 0), with an onset"
    paper = f"{MPAR2}: decay with chain length (attention and claim views)"
    if run is None:
        return [_not_run(claim, MPAR2, "decay reported qualitatively", (name,), "record --format cot")]
    items = run.read_table("items.parquet")
    steps = items["n_steps"].to_numpy()
    multi = float(np.mean(steps >= 2))
    if multi < 0.5:
        return [_row(claim, paper, "decay reported qualitatively",
                     f"no chain to decay along: {100 * multi:.0f}% of answers have 2+ steps (median {np.median(steps):.0f})",
                     multi, None, len(items), "not testable here",
                     "needs a reasoning chain (2+ steps in most answers)", [name])]
    summ = run.read_table("decay_summary.parquet")
    s = summ[(summ.group == "all") & (summ.axis == "step")].iloc[0]
    ons = decay_onsets(run)
    return [_row(claim, paper, "decay reported qualitatively",
                 f"slope {s.slope:+.4f} / step over {int(s.n_steps)} steps; onset (yield) {onset_text(ons['yield'])}; "
                 f"onset (claims) {onset_text(ons['claims'])}", float(s.slope), (s.slope_ci_low, s.slope_ci_high),
                 int(s.n_items), _verdict(s.slope_ci_low, s.slope_ci_high, -1), "slope CI < 0: the yield falls", [name])]


# --- 5. steering -----------------------------------------------------------------------------

def _reported(metric: str) -> str:
    """The papers' numbers of ``metric`` as they are typed once, in :mod:`auralens.interp.papers`."""
    return "; ".join(f"{r.system} {r.group} {r.value:.4g}" for r in REPORTED if r.metric == metric)


def steering_rows(folder: Path) -> list[dict[str, Any]]:
    name = RUNS["steering"][0]
    run = _open(folder, name)
    claim = ("Audio-minus-silence steering at the specialist heads' layers raises held-out accuracy on conflict "
             "items, beyond random directions of equal norm (dev chooses β, 0 included; test reports)")
    paper, number = GLAZER, "gain vs unsteered: " + _reported("gain_vs_unsteered")
    if run is None:
        return [_not_run(claim, paper, number, (name,), "steer fit + steer eval")]
    s = json.loads(run.file("summary.json").read_text())
    test, rnd = s["test"], s.get("random_directions") or {}
    decision = s.get("decision", "steer")
    cand = test.get("candidate", test)
    chosen = s.get("selected") or {}
    dev = chosen.get("dev") or {}
    dev_txt = (f" (layer {chosen.get('layer')}, β {chosen.get('beta')}, dev gain {dev['gain']:+.3f} "
               f"[{dev['ci'][0]:+.3f}, {dev['ci'][1]:+.3f}])" if dev.get("ci") else "")
    words = (f"{decision} on dev{dev_txt}; test gain {test['gain']:+.3f} [{test['ci'][0]:+.3f}, {test['ci'][1]:+.3f}]"
             + (f" (declined candidate β={cand.get('beta')}: {cand['gain']:+.3f} [{cand['ci'][0]:+.3f}, "
                f"{cand['ci'][1]:+.3f}], for information)" if decision == "decline" else "")
             + (f"; vector at the {rnd['vector_percentile']:.0f}th percentile of {rnd['k']} random directions "
                f"({rnd['n_declined']} declined)" if rnd else ""))
    neutral = s.get("neutral") or {}
    if neutral and "gain" in neutral:
        words += f"; on neutral items {neutral['gain']:+.3f} [{neutral['ci'][0]:+.3f}, {neutral['ci'][1]:+.3f}]"
    if decision == "decline":
        lo, hi = cand["ci"]
        verdict = "does not replicate" if hi < 0 else "inconclusive at this n"
        value, ci = cand["gain"], cand["ci"]
        rule = "declined on dev: no steering is the reported system; the candidate's test CI decides the verdict"
    else:
        value, ci = test["gain"], test["ci"]
        verdict = _verdict(ci[0], ci[1], +1)
        if verdict == "replicates" and rnd and not rnd.get("above_p95"):
            verdict = "inconclusive at this n"
        rule = f"test CI > 0 and above the random directions' 95th percentile (dev rule: {s.get('rule')})"
    return [_row(claim, paper, number, words, value, ci, test.get("n"), verdict, rule, [name])]


# --- 4. probes -------------------------------------------------------------------------------

def probe_rows(folder: Path) -> list[dict[str, Any]]:
    name = RUNS["probes"][0]
    run = _open(folder, name)
    claim = "Audio content is linearly decodable from the LM's activations (layer chosen on half the items, reported on the other half)"
    paper = "AudioLens (arXiv 2506.05140): attributes decodable in middle layers"
    if run is None:
        return [_not_run(claim, paper, "—", (name,), "probe on the spoken items")]
    t = run.read_table("probes.parquet")
    select, report = t[t["split"] == "select"], t[t["split"] == "report"]
    rows = []
    for (attr, pos), g in select.groupby(["attribute", "position"]):
        layer = int(g.sort_values("accuracy", ascending=False).iloc[0]["layer"])  # chosen on 'select' items
        rep = report[(report["attribute"] == attr) & (report["position"] == pos) & (report["layer"] == layer)]
        if not len(rep):
            continue
        best = rep.iloc[0]  # reported on the other half ('report')
        sel = float(best.selectivity)
        verdict = _verdict(float(best.ci_low), float(best.ci_high), +1, null=float(best.chance))
        if verdict == "replicates" and not sel > 0.05:
            verdict = "inconclusive at this n"
        rows.append(_row(f"{claim}: {attr} at {pos}", paper, "—",
                         f"layer {layer} (chosen on the select half): {best.accuracy:.3f} (chance {best.chance:.3f}, "
                         f"control task {best.control_accuracy:.3f}, selectivity {sel:+.3f})", float(best.accuracy),
                         (best.ci_low, best.ci_high), int(best.n), verdict,
                         "CI above chance and selectivity > 0.05 (Hewitt & Liang control task)", [name]))
    return rows


def finetune_rows(folder: Path) -> list[dict[str, Any]]:
    name = RUNS["finetune"][0]
    claim = "MPAR²-style fine-tuning (SFT + GRPO) raises perception beyond SFT alone"
    paper, number = MPAR2, "before → after: " + _reported("claim_accuracy") + "; " + _reported("accuracy")
    run = _open(folder, name)
    if run is None:
        return [_not_run(claim, paper, number, (name,),
                         "auralens compare --base smol-audio --mpar2 train --sft train --lora-r 16 (≈ 3.5–4 CPU-hours)")]
    return [_row(claim, paper, number, "compare run present: read compare.parquet", None, None,
                 None, "inconclusive at this n", "", [name])]


def findings(folder: str | Path) -> dict[str, Any]:
    """Every claim's rows from the run folders under ``folder`` (see :data:`RUNS`)."""
    f = Path(folder)
    if not f.is_dir():
        raise ConfigError(f"findings folder {str(f)!r}: expected a folder of run folders, found none")
    rows = heads_rows(f) + text_prior_rows(f) + decay_rows(f) + probe_rows(f) + steering_rows(f) + finetune_rows(f)
    return {"folder": str(f), "rows": rows}


_COLOURS = {"replicates": "#1a7f37", "does not replicate": "#cf222e", "inconclusive at this n": "#9a6700",
            "not testable here": "#6e7781", "not run": "#6e7781"}


def claims_figure(rows: list[dict[str, Any]]):
    """A forest plot of the rows that have a value and a CI: one line per claim, the 95% CI as
    error bars, coloured by verdict, n and the measured text in the hover (each row in its own
    units: differences of accuracy, a correlation, a slope; 0 = no effect for all)."""
    import plotly.graph_objects as go

    shown = [r for r in rows if r["value"] is not None and r["ci"] is not None]
    fig = go.Figure()
    for verdict in dict.fromkeys(r["verdict"] for r in shown):
        rs = [r for r in shown if r["verdict"] == verdict]
        fig.add_trace(go.Scatter(
            x=[r["value"] for r in rs], y=[r["claim"][:60] + ("…" if len(r["claim"]) > 60 else "") for r in rs],
            mode="markers", name=verdict, marker={"color": _COLOURS.get(verdict, "#000"), "size": 10},
            error_x={"type": "data", "symmetric": False, "array": [r["ci"][1] - r["value"] for r in rs],
                     "arrayminus": [r["value"] - r["ci"][0] for r in rs]},
            customdata=[[r["n"], r["measured"]] for r in rs],
            hovertemplate="%{x:+.3f}, n=%{customdata[0]}<br>%{customdata[1]}<extra>%{fullData.name}</extra>"))
    fig.add_vline(x=0, line_dash="dot", line_color="#888")
    fig.update_layout(title="Claims on the real-weights model: effect and 95% CI (0 = no effect)",
                      xaxis_title="effect (each claim in its own units)", height=120 + 60 * max(1, len(shown)),
                      margin={"l": 380})
    return fig


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as the README's table: claim, paper, measured with CI and n, verdict."""
    out = ["| claim | paper's claim / number | measured here (95% CI, n) | verdict |", "|---|---|---|---|"]
    for r in rows:
        ci = "" if r["ci"] is None else f" [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]"
        n = "" if r["n"] is None else f", n = {r['n']}"
        cell = (r["measured"] + ci + n).replace("|", "\\|")
        out.append(f"| {r['claim']} | {r['paper']}; {r['paper_number']} | {cell} | **{r['verdict']}** |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    as_json, as_md = "--json" in args, "--markdown" in args
    args = [a for a in args if a not in ("--json", "--markdown")]
    if len(args) != 1:
        sys.stderr.write("usage: python -m auralens.findings FOLDER [--json | --markdown]\n")
        return 2
    try:
        res = findings(args[0])
    except AuralensError as exc:
        sys.stderr.write(f"Error: {exc}\n")
        return 2
    if as_json:
        sys.stdout.write(json.dumps(res, indent=1, allow_nan=False) + "\n")
        return 0
    if as_md:
        sys.stdout.write(markdown_table(res["rows"]) + "\n")
        return 0
    for r in res["rows"]:
        ci = "" if r["ci"] is None else f" [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]"
        sys.stdout.write(f"- {r['claim']}\n    {r['measured']}{ci}, n={r['n']}: {r['verdict']}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
