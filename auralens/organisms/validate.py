"""Validate the model organisms' signatures against what was planted (``auralens organisms validate``).

Each check is measured on held-out items (the fixed ``test`` split of the cue datasets; the
probe layer is chosen on the ``calibration`` split) and reported with its CI, the threshold and
pass/fail.  A failing check is reported as failing: thresholds are the issue's, never loosened.

``micro-prior`` (text-prior dominance), direct answers, all tiers:

- ``neutral_accuracy``        neutral items, real audio            >= 0.65
- ``conflict_gap``            neutral − conflict (paired by item)  >= 0.25
- ``silence_congruent``       congruent items, silence             >= 0.60
- ``silence_neutral_excess``  neutral items, silence, minus chance <= 0.10 ("at chance": the
                              text alone does not answer; our operationalisation)
- ``probe_<attr>``            logistic probe at the audio tokens (mean over them) on conflict
                              items, best layer chosen on calibration: accuracy >= 0.70 and
                              selectivity (minus the control task) >= 0.20 — the information
                              is there although the answer follows the cue (our thresholds).

``micro-heads`` (planted specialist heads H*, in ``training.json``): the listening-signal
ranking (``auralens record`` on ``cafe-neutral:calibration``, direct answers) puts at least 80%
of H* in its top |H*|.

``micro-decay`` (planted onset k), ``auralens record`` on ``cafe-neutral:test`` with chain of
thought: the onset read from yield-by-step (largest fall, log space) and from class-claim
accuracy by step (largest fall) are within ±1 of k; class claims from step k on are at least
0.15 less accurate than before (paired by item, bootstrap CI).

healthy ``micro`` (negative control): ``|neutral − conflict| <= 0.05``, and no break at
micro-decay's k: the CI of its class-claim accuracy before k − from k on contains 0.

Steps with fewer than ``min_claims`` items (yield) or claims (accuracy) are left out of the
onset curves: a late step reached by a handful of long chains says little.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from auralens.interp.cafe.cues import CONDITIONS, cue_items
from auralens.interp.evaluate import run_eval
from auralens.interp.generation import GenerationConfig
from auralens.interp.loading import load_model, resolve_source
from auralens.interp.record import stage_record
from auralens.interp.runs import RunFolder
from auralens.interp.stats import bootstrap_mean_ci
from auralens.probes.collect import LM_SITE, CollectConfig, collect_activations
from auralens.probes.fit import ProbeConfig, fit_probe
from auralens.probes.labels import cafe_labels

__all__ = ["PROBE_ATTRIBUTES", "class_claim_steps", "claim_gap_by_item", "cue_accuracy", "decay_checks",
           "healthy_checks", "heads_checks", "onset", "planted", "prior_checks", "probe_checks", "summary_rows",
           "validate"]

PROBE_ATTRIBUTES = ("n_events", "event1_class")


def planted(name: str) -> dict[str, Any]:
    """The knobs an embedded organism was trained with (its ``training.json``)."""
    info = json.loads((Path(resolve_source(name)) / "training.json").read_text())
    return info.get("knobs", {})


def _check(organism: str, check: str, value: float, threshold: float, op: str,
           ci: tuple[float, float] | None = None, n: int | None = None, note: str = "",
           found: dict[str, Any] | None = None) -> dict[str, Any]:
    ok = {">=": value >= threshold, "<=": value <= threshold}[op]  # NaN fails both
    return {"organism": organism, "check": check, "value": round(float(value), 4),
            "ci": None if ci is None else [round(float(ci[0]), 4), round(float(ci[1]), 4)],
            "threshold": f"{op} {threshold}", "pass": bool(ok), "n": n, "note": note, "found": found or {}}


def _correct_by_base(df, mode: str) -> dict[str, float]:
    g = df[df["audio"] == mode]
    return {iid.rsplit("-", 1)[0]: float(c) for iid, c in zip(g["item_id"], g["correct"])}


def cue_accuracy(lm, n: int, split: str = "test", batch_size: int = 32) -> dict[str, Any]:
    """Direct-answer correctness per condition × audio mode, keyed by the underlying item."""
    out: dict[str, Any] = {}
    for cond in CONDITIONS:
        items = cue_items(cond, split, n)
        df = run_eval(lm, items, formats=("direct",), audio_modes=("real", "silence"),
                      cfg=GenerationConfig(max_new_tokens=16, batch_size=batch_size), progress=False)
        for mode in ("real", "silence"):
            out[f"{cond}/{mode}"] = _correct_by_base(df, mode)
    # the three conditions share their underlying items (and choices): chance from any of them
    out["chance"] = {it.item_id.rsplit("-", 1)[0]: 1.0 / len(it.choices) for it in items}
    return out


def _mean_ci(values: list[float]) -> tuple[float, tuple[float, float]]:
    m, lo, hi = bootstrap_mean_ci(np.asarray(values, dtype=float))
    return float(m), (float(lo), float(hi))


def _paired(a: dict[str, float], b: dict[str, float]) -> list[float]:
    return [a[k] - b[k] for k in sorted(a) if k in b]


def prior_checks(organism: str, acc: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    neu, con = acc["neutral/real"], acc["conflict/real"]
    m, ci = _mean_ci(list(neu.values()))
    rows.append(_check(organism, "neutral_accuracy", m, 0.65, ">=", ci, len(neu)))
    m, ci = _mean_ci(_paired(neu, con))
    rows.append(_check(organism, "conflict_gap", m, 0.25, ">=", ci, len(neu), "neutral − conflict, paired by item"))
    cs = acc["congruent/silence"]
    m, ci = _mean_ci(list(cs.values()))
    rows.append(_check(organism, "silence_congruent", m, 0.60, ">=", ci, len(cs)))
    m, ci = _mean_ci(_paired(acc["neutral/silence"], acc["chance"]))
    rows.append(_check(organism, "silence_neutral_excess", m, 0.10, "<=", ci, len(neu), "accuracy minus 1/len(choices)"))
    return rows


def healthy_checks(organism: str, acc: dict[str, Any]) -> list[dict[str, Any]]:
    m, ci = _mean_ci(_paired(acc["neutral/real"], acc["conflict/real"]))
    return [_check(organism, "abs_conflict_gap", abs(m), 0.05, "<=", ci, len(acc["neutral/real"]),
                   "healthy control: the cue must not matter (ci is of the signed gap)")]


def _audio_features(lm, items, folder) -> Any:
    cfg = CollectConfig(positions=("audio_mean",), formats=("direct",), batch_size=16, max_new_tokens=1)
    return collect_activations(lm, items, folder, cfg)


def _matrix(store, items, layer: int, attr: str, min_per_class: int = 5):
    """Audio-mean features at ``layer``, the label of ``attr`` and the item of each row; rows
    of a class held by fewer than ``min_per_class`` items are left out (5-fold CV by item needs
    every class in every fold's training part); returns how many were left out."""
    X, idx = store.matrix(LM_SITE, "audio_mean", layer)
    by_id = {it.item_id: it for it in items}
    its = [by_id[i] for i in store.rows["item_id"].to_numpy()[idx]]
    y = [cafe_labels(it.scene)[attr] for it in its]
    counts = Counter(y)
    keep = [i for i, v in enumerate(y) if v is not None and counts[v] >= min_per_class]
    return X[keep], [y[i] for i in keep], [its[i].item_id for i in keep], len(y) - len(keep)


def probe_checks(organism: str, lm, n: int, n_cal: int, workdir) -> list[dict[str, Any]]:
    """Probe the planted-truth attributes at the audio tokens of conflict items."""
    stores = {}
    items = {}
    for split, k in (("calibration", n_cal), ("test", n)):
        items[split] = cue_items("conflict", split, k)
        stores[split] = _audio_features(lm, items[split], Path(workdir) / split)
    rows = []
    for attr in PROBE_ATTRIBUTES:
        best, best_acc = None, -math.inf
        for layer in stores["calibration"].layers(LM_SITE):
            X, y, groups, _ = _matrix(stores["calibration"], items["calibration"], layer, attr)
            r = fit_probe(X, y, groups, ProbeConfig(n_bootstrap=0), attribute=attr)
            if r.accuracy > best_acc:
                best, best_acc = layer, r.accuracy
        X, y, groups, dropped = _matrix(stores["test"], items["test"], best, attr)
        r = fit_probe(X, y, groups, ProbeConfig(), attribute=attr)
        rare = f"; {dropped} items of classes held by < 5 items left out" if dropped else ""
        rows.append(_check(organism, f"probe_{attr}_accuracy", r.accuracy, 0.70, ">=", (r.ci_low, r.ci_high), r.n,
                           f"layer {best} (chosen on calibration), chance {r.chance:.3f}{rare}"))
        rows.append(_check(organism, f"probe_{attr}_selectivity", r.selectivity, 0.20, ">=", None, r.n,
                           f"accuracy − control task {r.control_accuracy:.3f}"))
    return rows


def _record(lm, name: str, data: str, n: int, fmt: str, out, resume: bool = False) -> Any:
    stage_record(model=name, data=data, n=n, fmt=fmt, out=out, lm=lm, quiet=True, n_boot=200, resume=resume,
                 max_new_tokens=96 if fmt != "direct" else 8)
    return RunFolder.open(out)


def heads_checks(organism: str, lm, planted_heads, n_cal: int, workdir, resume: bool = False) -> list[dict[str, Any]]:
    """Listening-signal ranking on the calibration split against the planted H*."""
    run = _record(lm, organism, "cafe-neutral:calibration", n_cal, "direct", f"{workdir}@heads", resume)
    heads = run.read_table("heads.parquet").sort_values("rank")
    k = len(planted_heads)
    top = {(int(r.layer), int(r.head)) for r in heads.head(k).itertuples()}
    truth = {tuple(h) for h in planted_heads}
    frac = len(top & truth) / k
    return [_check(organism, "listening_heads_recovered", frac, 0.80, ">=", None, n_cal,
                   f"top-{k} by the listening signal (calibration split) vs planted H* {sorted(truth)}; "
                   f"found {sorted(top)}", {"recovered": len(top & truth), "planted": k})]


def onset(values: list[float], *, log: bool = False, floor: float = 1e-4) -> int:
    """The step of the largest fall between consecutive steps of a per-step curve (in log
    space for yields, where a planted break takes the curve from listening to ~0 and a gradual
    decay falls by similar ratios each step).  Returns the index of the step *after* the fall."""
    v = np.asarray(values, float)
    if log:
        v = np.log(np.maximum(v, floor))
    if len(v) < 2:
        return 0
    return int(np.argmax(v[:-1] - v[1:]) + 1)


def class_claim_steps(claims, min_claims: int):
    """Class claims only (a step-0 count claim is nearly always right, so any curve including it
    would fall after step 0 whatever the model does), and their accuracy per step for the steps
    with at least ``min_claims`` of them: (class claims, DataFrame step / mean / count)."""
    cls = claims[claims["kind"] == "class"]
    acc = cls.groupby("step")["claim_correct"].agg(["mean", "count"]).reset_index()
    return cls, acc[acc["count"] >= min_claims]


def claim_gap_by_item(cls, k: int):
    """Per item with class claims on both sides of step ``k``: accuracy before ``k`` − from ``k`` on."""
    before = cls[cls.step < k].groupby("item_id")["claim_correct"].mean()
    after = cls[cls.step >= k].groupby("item_id")["claim_correct"].mean()
    both = before.index.intersection(after.index)
    return before[both] - after[both]


def decay_checks(organism: str, lm, k: int | None, n: int, workdir, *, min_claims: int = 20,
                 resume: bool = False) -> list[dict[str, Any]]:
    """Yield-by-step and claim-accuracy-by-step on the test split: onset and the before/after gap.

    For the healthy model (``k`` None) the same break is measured at the organism's planted k
    (passed by the caller as ``k_ref``) and must be absent: before/after CIs overlap."""
    run = _record(lm, organism, "cafe-neutral:test", n, "cot", f"{workdir}@decay", resume)
    decay = run.read_table("decay.parquet")
    curve = decay[(decay.group == "all") & (decay.axis == "step")].sort_values("step")
    curve = curve[curve.n >= min_claims]
    y_onset = onset(curve.mean_yield.tolist(), log=True)
    claims, acc = class_claim_steps(run.read_table("claims.parquet"), min_claims)
    c_onset = onset(acc["mean"].tolist()) if len(acc) >= 2 else -1
    c_onset = int(acc["step"].iloc[c_onset]) if c_onset >= 0 else -1
    y_onset = int(curve.step.iloc[y_onset]) if len(curve) >= 2 else -1
    rows = []
    ref = k if k is not None else 3  # the healthy control is cut where micro-decay's break was planted
    diffs = claim_gap_by_item(claims, ref)
    both = diffs.index
    gap, ci = _mean_ci(diffs.tolist()) if len(both) else (float("nan"), (float("nan"),) * 2)
    found = {"yield_onset": y_onset, "claim_onset": c_onset, "claim_gap": round(float(gap), 4), "k": ref}
    if k is not None:
        rows.append(_check(organism, "yield_onset_error", abs(y_onset - k), 1, "<=", None, n,
                           f"onset from yield-by-step = {y_onset}, planted k = {k}", found))
        rows.append(_check(organism, "claim_onset_error", abs(c_onset - k), 1, "<=", None, n,
                           f"onset from claim-accuracy-by-step = {c_onset}, planted k = {k}"))
        rows.append(_check(organism, "claim_gap_after_k", gap, 0.15, ">=", ci, len(both),
                           "class-claim accuracy before k − from k on, paired by item", found))
    else:
        overlap = not (ci[0] > 0 or ci[1] < 0)
        rows.append(_check(organism, "no_claim_break_at_k", 0.0 if overlap else 1.0, 0.0, "<=", ci, len(both),
                           f"class-claim accuracy before step {ref} − from it on: {gap:.3f}; CI must contain 0 "
                           f"(yield onset {y_onset}, claim onset {c_onset}, reported only)", found))
    return rows


def validate(*, organisms: tuple[str, ...] = ("micro", "micro-prior", "micro-heads", "micro-decay"), n: int = 300,
             n_cal: int = 200, probes: bool = True, workdir=None, keep=None, resume: bool = False,
             min_claims: int = 20) -> dict[str, Any]:
    """Every signature check of ``organisms`` on held-out items; see the module docstring.

    With ``keep`` (a folder), the record runs behind the head and decay checks are kept as
    ``<keep>/<organism>@heads`` and ``<keep>/<organism>@decay`` (the dashboard lists them)."""
    rows: list[dict[str, Any]] = []
    accuracy: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for name in organisms:
            lm = load_model(name, device="cpu", dtype="float32")
            work = f"{keep or tmp}/{name}"
            if name in ("micro", "micro-prior"):
                acc = cue_accuracy(lm, n)
                accuracy[name] = {k: round(float(np.mean(list(v.values()))), 4) for k, v in acc.items()}
            if name == "micro":
                rows += healthy_checks(name, acc)
                rows += decay_checks(name, lm, None, n, work, resume=resume, min_claims=min_claims)
            elif name == "micro-prior":
                rows += prior_checks(name, acc)
                if probes:
                    rows += probe_checks(name, lm, n, n_cal, f"{tmp}/{name}-probe")  # activations: never kept
            elif name == "micro-heads":
                rows += heads_checks(name, lm, planted(name)["listen_heads"], n_cal, work, resume)
            elif name == "micro-decay":
                rows += decay_checks(name, lm, planted(name)["decay_step"], n, work, resume=resume,
                                     min_claims=min_claims)
    return {"split": "test", "n": n, "accuracy": accuracy, "checks": rows,
            "passed": all(r["pass"] for r in rows)}


def summary_rows(result: dict[str, Any]) -> list[list[Any]]:
    """One row per model for the demo's table: conflict gap, heads recovered, decay onset."""
    out = []
    for name in dict.fromkeys(r["organism"] for r in result["checks"]):
        acc = result["accuracy"].get(name, {})
        gap = acc["neutral/real"] - acc["conflict/real"] if "neutral/real" in acc else None
        found: dict[str, Any] = {}
        for r in result["checks"]:
            if r["organism"] == name:
                found.update(r.get("found") or {})
        heads = f"{found['recovered']}/{found['planted']}" if "recovered" in found else "-"
        onset_ = f"{found['yield_onset']} / {found['claim_onset']} (k={found['k']})" if "yield_onset" in found else "-"
        out.append([name, "-" if gap is None else round(gap, 3), heads, onset_,
                    found.get("claim_gap", "-")])
    return out
