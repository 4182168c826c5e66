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

``micro-decay`` (planted onset k), ``auralens record`` on ``cafe-neutral:<split>`` with chain of
thought: the onset read from yield-by-step (log space) and from class-claim accuracy by step,
each with a null (:func:`auralens.interp.decay.onset_test`: the step after the largest fall is
reported only when, in more than 1 − 0.05/m of the item-bootstrap resamples, that fall is
positive and exceeds each of the other m − 1 falls by a break's margin, log 2 for yields (the
curve falls at least twice the ratio into k as into any other step: a break, not the steepest
step of a smooth decay) and 0.10 for claim accuracy; else "no onset"), are within ±1 of k; class claims
from step k on are at least 0.15 less accurate than before (paired by item, bootstrap CI).

healthy ``micro`` (negative control), every "no effect" an equivalence test (two one-sided
t-tests, TOST, alpha 0.05: the 90% CI of the paired difference inside ±margin, the margin in the
row's threshold; :func:`equivalence`):

- ``conflict_gap_equivalent``  neutral − conflict (paired by item) inside ±0.05
- ``no_yield_onset`` / ``no_claim_onset``  the onset test says "no onset"
- ``no_claim_break_at_k``  class-claim accuracy before micro-decay's k − from k on (paired by
  item) inside ±0.10 (micro-decay must show >= 0.15)

An equivalence test passes only with enough items: each row's note gives its power at a true
difference of 0 (normal approximation, from the observed SD) and the n that 80% power needs.

Items: ``split`` (``dev`` or ``test``, default ``test``) of the cue datasets; ``seed_offset``
starts the direct-answer checks (cue accuracy) and the probe checks' reported items that many
seeds into the split, so anyone can re-run them on seeds nobody tuned on.  The record-based checks (heads: calibration split; decay:
``cafe-neutral:<split>``) take the split's first items: a record run reads its items from a
dataset spec, which has no seed offset.

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

from auralens.interp.cafe.cues import CONDITIONS, SPLIT_SIZE, SPLITS as CUE_SPLITS, cue_items, with_cue
from auralens.interp.cafe.questions import TIERS, make_item
from auralens.interp.decay import claim_matrix, onset_stability, onset_test, step_means_per_item
from auralens.interp.errors import ConfigError
from auralens.interp.evaluate import run_eval
from auralens.interp.generation import GenerationConfig
from auralens.interp.loading import load_model, resolve_source
from auralens.interp.record import stage_record
from auralens.interp.record_analysis import load_yields
from auralens.interp.runs import RunFolder
from auralens.interp.stats import bootstrap_mean_ci
from auralens.probes.collect import LM_SITE, CollectConfig, collect_activations
from auralens.probes.fit import ProbeConfig, fit_probe, predict
from auralens.probes.labels import cafe_labels, control_keys

__all__ = ["CLAIM_BREAK_MARGIN", "CLAIM_MIN_BREAK", "CUE_MARGIN", "PROBE_ATTRIBUTES", "VALIDATE_SPLITS", "YIELD_MIN_BREAK", "check_seeds", "class_claim_steps",
           "claim_gap_by_item", "claim_onset", "cue_accuracy", "decay_checks", "decay_onset_stability", "decay_onsets", "equivalence", "healthy_checks",
           "heads_checks", "offset_cue_items", "onset", "onset_curves", "onset_text", "planted", "prior_checks", "probe_checks",
           "summary_rows", "validate"]

PROBE_ATTRIBUTES = ("n_events", "event1_class")
PROBE_POSITIONS = ("audio_mean", "last_prompt")  # positions of auralens.probes.collect.POSITIONS
#: (attribute, position) pairs measured and reported without a pass/fail: which audio attributes
#: reach the last prompt token is a property of the model, not something the organisms plant
#: (healthy micro: event1_class 0.25 there, chance 0.19; n_events 0.96)
REPORTED_ONLY = {("event1_class", "last_prompt")}


def planted(name: str) -> dict[str, Any]:
    """The knobs an embedded organism was trained with (its ``training.json``)."""
    info = json.loads((Path(resolve_source(name)) / "training.json").read_text())
    return info.get("knobs", {})


def _check(organism: str, check: str, value: float, threshold: float, op: str,
           ci: tuple[float, float] | None = None, n: int | None = None, note: str = "",
           found: dict[str, Any] | None = None) -> dict[str, Any]:
    # "report": a measured quantity with no pass/fail (a finding, not a planted property)
    ok = {">=": value >= threshold, "<=": value <= threshold, "report": True}[op]  # NaN fails both
    return {"organism": organism, "check": check, "value": round(float(value), 4),
            "ci": None if ci is None else [round(float(ci[0]), 4), round(float(ci[1]), 4)],
            "threshold": "reported only" if op == "report" else f"{op} {threshold}", "pass": bool(ok), "n": n, "note": note, "found": found or {}}


def correct_by_base(df, mode: str) -> dict[str, float]:
    """Correctness per underlying item (the cue condition cut from the item id) of audio mode ``mode``."""
    g = df[df["audio"] == mode]
    return {iid.rsplit("-", 1)[0]: float(c) for iid, c in zip(g["item_id"], g["correct"])}


VALIDATE_SPLITS = ("dev", "test")  # calibration ranks the heads and chooses the probe layer
CUE_MARGIN = 0.05  # healthy micro: neutral − conflict within ±CUE_MARGIN
CLAIM_BREAK_MARGIN = 0.10  # healthy micro: class claims before − after k within ±this (micro-decay: >= 0.15)
YIELD_MIN_BREAK = float(np.log(2))  # onset: the log-yield fall into k beats every other fall by this
CLAIM_MIN_BREAK = 0.10  # onset: the claim-accuracy fall into k beats every other fall by this
EQUIVALENCE_ALPHA = 0.05


def check_seeds(split: str, n: int, seed_offset: int = 0) -> range:
    """The seeds of ``n`` cue items of ``split`` from its ``seed_offset``-th one; a bad split,
    n or offset is a ConfigError naming it."""
    if split not in VALIDATE_SPLITS:
        raise ConfigError(f"organisms validate --split: expected one of {VALIDATE_SPLITS}, found {split!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"organisms validate --n: expected an integer >= 1, found {n!r}")
    if isinstance(seed_offset, bool) or not isinstance(seed_offset, int) or not 0 <= seed_offset <= SPLIT_SIZE - n:
        raise ConfigError(f"organisms validate --seed-offset: expected an integer in 0..{SPLIT_SIZE - n} (a split holds "
                          f"{SPLIT_SIZE} seeds, n = {n}), found {seed_offset!r}")
    start = CUE_SPLITS[split] + seed_offset
    return range(start, start + n)


def offset_cue_items(condition: str, split: str, n: int, seed_offset: int = 0) -> list:
    """``n`` items of cue ``split`` in ``condition`` from the split's ``seed_offset``-th seed:
    the items ``cue_items(condition, split, seed_offset + n)[seed_offset:]`` (tiers cycled by the
    position in the split, as there), without building the first ``seed_offset``."""
    seeds = check_seeds(split, n, seed_offset)
    if seed_offset == 0:
        return cue_items(condition, split, n)
    return [with_cue(make_item(s, tier=TIERS[(seed_offset + j) % len(TIERS)]), condition) for j, s in enumerate(seeds)]


def cue_accuracy(lm, n: int, split: str = "test", batch_size: int = 32, seed_offset: int = 0) -> dict[str, Any]:
    """Direct-answer correctness per condition × audio mode, keyed by the underlying item
    (items: :func:`offset_cue_items`)."""
    out: dict[str, Any] = {}
    for cond in CONDITIONS:
        items = offset_cue_items(cond, split, n, seed_offset)
        df = run_eval(lm, items, formats=("direct",), audio_modes=("real", "silence"),
                      cfg=GenerationConfig(max_new_tokens=16, batch_size=batch_size), progress=False)
        for mode in ("real", "silence"):
            out[f"{cond}/{mode}"] = correct_by_base(df, mode)
    # the three conditions share their underlying items (and choices): chance from any of them
    out["chance"] = {it.item_id.rsplit("-", 1)[0]: 1.0 / len(it.choices) for it in items}
    return out


def _mean_ci(values: list[float]) -> tuple[float, tuple[float, float]]:
    m, lo, hi = bootstrap_mean_ci(np.asarray(values, dtype=float))
    return float(m), (float(lo), float(hi))


def paired_by_item(a: dict[str, float], b: dict[str, float]) -> list[float]:
    """``a − b`` for every item in both (sorted by item)."""
    return [a[k] - b[k] for k in sorted(a) if k in b]


def prior_checks(organism: str, acc: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    neu, con = acc["neutral/real"], acc["conflict/real"]
    m, ci = _mean_ci(list(neu.values()))
    rows.append(_check(organism, "neutral_accuracy", m, 0.65, ">=", ci, len(neu)))
    m, ci = _mean_ci(paired_by_item(neu, con))
    rows.append(_check(organism, "conflict_gap", m, 0.25, ">=", ci, len(neu), "neutral − conflict, paired by item"))
    cs = acc["congruent/silence"]
    m, ci = _mean_ci(list(cs.values()))
    rows.append(_check(organism, "silence_congruent", m, 0.60, ">=", ci, len(cs)))
    m, ci = _mean_ci(paired_by_item(acc["neutral/silence"], acc["chance"]))
    rows.append(_check(organism, "silence_neutral_excess", m, 0.10, "<=", ci, len(neu), "accuracy minus 1/len(choices)"))
    return rows


def equivalence(diffs, margin: float, *, alpha: float = EQUIVALENCE_ALPHA, power: float = 0.8) -> dict[str, Any]:
    """Two one-sided t-tests (TOST, scipy.stats.ttest_1samp) that the mean of ``diffs`` lies
    inside ±``margin``: H0 mean <= −margin against > −margin, H0 mean >= margin against <
    margin; equivalent when both reject at ``alpha`` (p = the larger p), i.e. the (1 − 2 alpha)
    t-interval lies inside ±margin.  Also the power at a true mean of 0 with the observed SD
    (normal approximation: 2 Φ(margin / se − z) − 1) and the n that ``power`` needs."""
    from scipy import stats  # heavy: `auralens --help` imports this module

    d = np.asarray(diffs, dtype=np.float64)
    d = d[~np.isnan(d)]
    if not margin > 0:
        raise ConfigError(f"equivalence: expected a margin > 0, found {margin!r}")
    nan = float("nan")
    out = {"mean": nan, "ci": (nan, nan), "p": nan, "p_lower": nan, "p_upper": nan, "equivalent": False,
           "n": int(len(d)), "sd": nan, "margin": float(margin), "alpha": float(alpha), "power_at_0": nan,
           "n_for_power": None}
    if len(d) < 2:
        return out
    m, sd = float(d.mean()), float(d.std(ddof=1))
    out.update(mean=m, sd=sd)
    z = stats.norm.ppf(1 - alpha)
    if sd == 0:  # every difference the same: no sampling spread to test against
        inside = abs(m) < margin
        out.update(ci=(m, m), p=0.0 if inside else 1.0, p_lower=0.0 if m > -margin else 1.0,
                   p_upper=0.0 if m < margin else 1.0, equivalent=inside, power_at_0=1.0, n_for_power=2)
        return out
    se = sd / np.sqrt(len(d))
    p_lower = float(stats.ttest_1samp(d, -margin, alternative="greater").pvalue)
    p_upper = float(stats.ttest_1samp(d, margin, alternative="less").pvalue)
    lo, hi = stats.t.interval(1 - 2 * alpha, len(d) - 1, loc=m, scale=se)
    need = int(np.ceil(((z + stats.norm.ppf(1 - (1 - power) / 2)) * sd / margin) ** 2))
    out.update(ci=(float(lo), float(hi)), p=max(p_lower, p_upper), p_lower=p_lower, p_upper=p_upper,
               equivalent=bool(max(p_lower, p_upper) < alpha),
               power_at_0=float(max(0.0, 2 * stats.norm.cdf(margin / se - z) - 1)), n_for_power=need)
    return out


def _equivalence_check(organism: str, check: str, diffs, margin: float, what: str,
                       found: dict[str, Any] | None = None) -> dict[str, Any]:
    e = equivalence(diffs, margin)
    row = _check(organism, check, e["mean"], margin, "<=", e["ci"], e["n"],
                 f"{what}: TOST p = {e['p']:.3f} (90% CI inside ±{margin}); power at a true 0: {e['power_at_0']:.2f}, "
                 f"80% power needs n >= {e['n_for_power']}", found)
    row["threshold"] = f"TOST ±{margin}"
    row["pass"] = bool(e["equivalent"])
    row["p_tost"] = None if np.isnan(e["p"]) else round(e["p"], 4)
    return row


def healthy_checks(organism: str, acc: dict[str, Any], margin: float = CUE_MARGIN) -> list[dict[str, Any]]:
    """The cue must not matter: neutral − conflict (paired by item) equivalent to 0 within
    ±``margin`` (:func:`equivalence`)."""
    return [_equivalence_check(organism, "conflict_gap_equivalent", paired_by_item(acc["neutral/real"], acc["conflict/real"]),
                               margin, "healthy control: neutral − conflict accuracy, paired by item")]


def _audio_features(lm, items, folder, audio_mode: str = "real") -> Any:
    """Audio-token mean and last-prompt-token activations of ``items`` (direct format), with the
    items' audio or (``audio_mode="silence"``) digital silence of the same length."""
    cfg = CollectConfig(positions=PROBE_POSITIONS, formats=("direct",), batch_size=16, max_new_tokens=1,
                        audio_mode=audio_mode)
    return collect_activations(lm, items, folder, cfg)


def _matrix(store, items, layer: int, attr: str, position: str = "audio_mean", min_per_class: int = 5,
            classes=None):
    """Features at ``position`` and ``layer``, the label of ``attr``, the item and the control
    key (:func:`~auralens.probes.labels.sound_type_key`) of each row; rows of a class held by
    fewer than ``min_per_class`` items (or, with ``classes``, of a class not among them) are
    left out (5-fold CV by item needs every class in every fold's training part); returns how
    many were left out."""
    X, idx = store.matrix(LM_SITE, position, layer)
    by_id = {it.item_id: it for it in items}
    its = [by_id[i] for i in store.rows["item_id"].to_numpy()[idx]]
    y = [cafe_labels(it.scene)[attr] for it in its]
    counts = Counter(y)
    keep = [i for i, v in enumerate(y) if v is not None and counts[v] >= min_per_class
            and (classes is None or v in classes)]
    keys = control_keys([its[i] for i in keep])
    return X[keep], [y[i] for i in keep], [its[i].item_id for i in keep], keys, len(y) - len(keep)


def probe_checks(organism: str, lm, n: int, n_cal: int, workdir, split: str = "test",
                 seed_offset: int = 0) -> list[dict[str, Any]]:
    """Probe the planted-truth attributes of conflict items at the audio tokens and at the last
    prompt token, with Hewitt & Liang's control task and a silence control.

    Per attribute and position (:data:`PROBE_POSITIONS`), the layer is chosen on the calibration
    split (best cross-validated accuracy); on ``split`` (``n`` items from its ``seed_offset``-th
    seed, :func:`offset_cue_items`; the "test" items below):

    - ``probe_<attr>[_last_prompt]_accuracy`` / ``_selectivity``: cross-validated by item
      (accuracy >= 0.70; selectivity = accuracy − control task >= 0.20, the control labels a
      random function of the scene's sound type, :func:`~auralens.probes.labels.sound_type_key`).
      The audio tokens precede the cue, so their activations are the same for neutral and
      conflict items (any model that encodes the audio passes there); the last prompt token is
      where the audio meets the cue and the answer is read out;
    - ``probe_<attr>[_last_prompt]_silence_excess``: the probe fitted on the calibration items'
      real-audio activations, applied to the test items' activations with the audio replaced by
      silence, minus chance (the test majority-class rate) <= 0.10: without the audio the probe
      must fall to chance (else it reads the text: the question, choices or cue).  The same
      probe's accuracy on the test items' real audio is in the note.
    """
    stores: dict[str, Any] = {}
    items: dict[str, Any] = {}
    items["calibration"] = cue_items("conflict", "calibration", n_cal)
    items["test"] = offset_cue_items("conflict", split, n, seed_offset)
    for name in ("calibration", "test"):
        stores[name] = _audio_features(lm, items[name], Path(workdir) / name)
    stores["silence"] = _audio_features(lm, items["test"], Path(workdir) / "test-silence", audio_mode="silence")
    items["silence"] = items["test"]
    rows = []
    for attr in PROBE_ATTRIBUTES:
        for position in PROBE_POSITIONS:
            rows += _probe_position_checks(organism, stores, items, attr, position)
    return rows


def _probe_position_checks(organism: str, stores, items, attr: str, position: str) -> list[dict[str, Any]]:
    """:func:`probe_checks` for one attribute at one position."""
    name = f"probe_{attr}" if position == "audio_mean" else f"probe_{attr}_{position}"
    where = "audio tokens (mean)" if position == "audio_mean" else "last prompt token"
    best, best_acc = None, -math.inf
    for layer in stores["calibration"].layers(LM_SITE):
        X, y, groups, _, _ = _matrix(stores["calibration"], items["calibration"], layer, attr, position)
        r = fit_probe(X, y, groups, ProbeConfig(n_bootstrap=0, control="none"), attribute=attr)
        if r.accuracy > best_acc:
            best, best_acc = layer, r.accuracy
    X, y, groups, keys, dropped = _matrix(stores["test"], items["test"], best, attr, position)
    r = fit_probe(X, y, groups, ProbeConfig(), control_key=keys, attribute=attr)
    rare = f"; {dropped} items of classes held by < 5 items left out" if dropped else ""
    op = "report" if (attr, position) in REPORTED_ONLY else ">="
    rows = [_check(organism, f"{name}_accuracy", r.accuracy, 0.70, op, (r.ci_low, r.ci_high), r.n,
                   f"{where}, layer {best} (chosen on calibration), chance {r.chance:.3f}{rare}"),
            _check(organism, f"{name}_selectivity", r.selectivity, 0.20, op, None, r.n,
                   f"accuracy − control task {r.control_accuracy:.3f} (Hewitt & Liang: a random label per "
                   "sound type of the scene, shared by its items)")]
    # silence control: the calibration-fitted probe on the test items, real audio and silence
    Xc, yc, gc, _, _ = _matrix(stores["calibration"], items["calibration"], best, attr, position)
    fitted = fit_probe(Xc, yc, gc, ProbeConfig(n_bootstrap=0, control="none"), attribute=attr)
    seen = set(fitted.classes)
    Xr, yr, _, _, _ = _matrix(stores["test"], items["test"], best, attr, position, classes=seen)
    Xs, ys, _, _, _ = _matrix(stores["silence"], items["silence"], best, attr, position, classes=seen)
    real_acc = float(np.mean(predict(fitted, Xr) == np.asarray(yr, dtype=object)))
    hits = (predict(fitted, Xs) == np.asarray(ys, dtype=object)).astype(float)
    chance = max(Counter(ys).values()) / len(ys)
    m, (lo, hi) = _mean_ci(hits.tolist())
    rows.append(_check(organism, f"{name}_silence_excess", m - chance, 0.10, "<=", (lo - chance, hi - chance),
                       len(ys), f"{where}, layer {best}: the calibration-fitted probe on the test items with "
                       f"silence: accuracy {m:.3f} vs chance {chance:.3f} (majority class); with their real "
                       f"audio: {real_acc:.3f}", {"silence_accuracy": round(m, 4), "chance": round(chance, 4),
                                                  "real_accuracy": round(real_acc, 4)}))
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
    decay falls by similar ratios each step).  Returns the index of the step *after* the fall.

    It has no null: it names a step for any curve.  The checks use :func:`decay_onsets`
    (:func:`auralens.interp.decay.onset_test`), which can say "no onset"."""
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


def onset_curves(run, *, min_claims: int = 20, n_items: int | None = None) -> dict[str, Any]:
    """A cot record run's per-item curves for the onset test: ``yield`` [items, steps] (each
    item's mean audio yield over all heads per reasoning step; steps with at least
    ``min_claims`` items) and ``claims`` (each item's class-claim accuracy per step with the
    number of its class claims as ``claim_weights``, steps with at least ``min_claims`` class
    claims), with their step labels.  ``n_items``: the run's first items only (the steps kept
    are those these items fill)."""
    df = run.read_table("items.parquet").sort_values("item_index").reset_index(drop=True)
    df = df if n_items is None else df.head(n_items)
    ys, ss, _, _ = load_yields(run, df)
    per = step_means_per_item(ys, ss)
    keep = [s for s in range(per.shape[1]) if int((~np.isnan(per[:, s])).sum()) >= min_claims]
    claims = run.read_table("claims.parquet")
    claims = claims[claims["item_id"].isin(set(df["item_id"]))]
    share, count, labels, _ = claim_matrix(claims, kind="class")
    ck = [i for i in range(len(labels)) if count[:, i].sum() >= min_claims]
    return {"yield": per[:, keep], "yield_steps": keep, "claims": share[:, ck], "claim_weights": count[:, ck],
            "claim_steps": [labels[i] for i in ck]}


def claim_onset(claims, *, min_claims: int = 20, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The onset test on a claims table's class claims (pooled accuracy per step, the steps
    with at least ``min_claims`` class claims): :func:`auralens.interp.decay.onset_test`."""
    share, count, labels, _ = claim_matrix(claims, kind="class")
    ck = [i for i in range(len(labels)) if count[:, i].sum() >= min_claims]
    return onset_test(share[:, ck], steps=[labels[i] for i in ck], weights=count[:, ck], n_boot=n_boot, seed=seed,
                      min_margin=CLAIM_MIN_BREAK)


def onset_text(r: dict[str, Any]) -> str:
    """An onset test's verdict in words: ``"3 (candidate 3, support 1.000, needs > 0.990)"``."""
    if r["candidate"] is None:
        return "none (fewer than two steps)"
    said = "none" if r["onset"] is None else str(r["onset"])
    return f"{said} (candidate {r['candidate']}, support {r['support']:.3f}, needs > {r['threshold']:.3f})"


def decay_onsets(run, *, min_claims: int = 20, n_boot: int = 1000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """The onset test (:func:`auralens.interp.decay.onset_test`) on both views of a cot record
    run (:func:`onset_curves`): ``{"yield": ..., "claims": ...}``; yields in log space, claims as
    the pooled class-claim accuracy of each step."""
    c = onset_curves(run, min_claims=min_claims)
    return {"yield": onset_test(c["yield"], steps=c["yield_steps"], log=True, n_boot=n_boot, seed=seed,
                                min_margin=YIELD_MIN_BREAK),
            "claims": onset_test(c["claims"], steps=c["claim_steps"], weights=c["claim_weights"], n_boot=n_boot,
                                 seed=seed, min_margin=CLAIM_MIN_BREAK)}


def decay_onset_stability(run, *, min_claims: int = 20, n_items: int | None = None, n_outer: int = 300,
                          n_boot: int = 1000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """How often the onset test says what it says over item-bootstrap resamples of a cot record
    run (:func:`auralens.interp.decay.onset_stability` on both views of :func:`onset_curves`);
    ``n_items``: the run's first items only (:func:`onset_curves`).  Returns
    ``{"yield" | "claims": {"outcomes": {"none" | k: count}, "share_none", ...}}``."""
    c = onset_curves(run, min_claims=min_claims, n_items=n_items)
    return {"yield": onset_stability(c["yield"], steps=c["yield_steps"], log=True, n_outer=n_outer,
                                     n_boot=n_boot, seed=seed, min_margin=YIELD_MIN_BREAK),
            "claims": onset_stability(c["claims"], steps=c["claim_steps"], weights=c["claim_weights"],
                                      n_outer=n_outer, n_boot=n_boot, seed=seed, min_margin=CLAIM_MIN_BREAK)}


def decay_checks(organism: str, lm, k: int | None, n: int, workdir, *, min_claims: int = 20,
                 resume: bool = False, split: str = "test") -> list[dict[str, Any]]:
    """Yield-by-step and claim-accuracy-by-step on ``cafe-neutral:<split>``: onsets with a null
    (:func:`decay_onsets`) and the before/after gap.

    For the healthy model (``k`` None) both views must say "no onset" and the class-claim
    break at micro-decay's planted k (3) must be equivalent to 0 within ±CLAIM_BREAK_MARGIN."""
    check_seeds(split, n)
    run = _record(lm, organism, f"cafe-neutral:{split}", n, "cot", f"{workdir}@decay", resume)
    ons = decay_onsets(run, min_claims=min_claims)
    y_onset, c_onset = ons["yield"]["onset"], ons["claims"]["onset"]
    claims, _ = class_claim_steps(run.read_table("claims.parquet"), min_claims)
    rows = []
    ref = k if k is not None else 3  # the healthy control is cut where micro-decay's break was planted
    diffs = claim_gap_by_item(claims, ref)
    both = diffs.index
    gap, ci = _mean_ci(diffs.tolist()) if len(both) else (float("nan"), (float("nan"),) * 2)
    found = {"yield_onset": y_onset, "claim_onset": c_onset, "yield_support": round(ons["yield"]["support"], 4),
             "claim_support": round(ons["claims"]["support"], 4), "claim_gap": round(float(gap), 4), "k": ref}
    y_txt, c_txt = onset_text(ons["yield"]), onset_text(ons["claims"])
    if k is not None:
        nan = float("nan")
        rows.append(_check(organism, "yield_onset_error", nan if y_onset is None else abs(y_onset - k), 1, "<=", None,
                           n, f"onset from yield-by-step: {y_txt}; planted k = {k}", found))
        rows.append(_check(organism, "claim_onset_error", nan if c_onset is None else abs(c_onset - k), 1, "<=", None,
                           n, f"onset from class-claim accuracy by step: {c_txt}; planted k = {k}"))
        rows.append(_check(organism, "claim_gap_after_k", gap, 0.15, ">=", ci, len(both),
                           "class-claim accuracy before k − from k on, paired by item", found))
    else:
        for view, name, txt in (("yield", "no_yield_onset", y_txt), ("claims", "no_claim_onset", c_txt)):
            r = ons[view]
            row = _check(organism, name, r["support"], round(r["threshold"], 4), "<=", None, r["n_items"],
                         f"onset test ({'yield-by-step, log' if view == 'yield' else 'class-claim accuracy by step'}): "
                         f"{txt}; the value is the candidate's bootstrap support")
            row["pass"] = r["onset"] is None
            rows.append(row)
        rows.append(_equivalence_check(organism, "no_claim_break_at_k", diffs.tolist(), CLAIM_BREAK_MARGIN,
                                       f"class-claim accuracy before step {ref} − from it on, paired by item", found))
    return rows


def validate(*, organisms: tuple[str, ...] = ("micro", "micro-prior", "micro-heads", "micro-decay"), n: int = 300,
             n_cal: int = 200, probes: bool = True, workdir=None, keep=None, resume: bool = False,
             min_claims: int = 20, split: str = "test", seed_offset: int = 0) -> dict[str, Any]:
    """Every signature check of ``organisms`` on held-out items; see the module docstring.

    ``split`` (dev | test) and ``seed_offset`` choose the items (:func:`check_seeds`; the offset
    moves the direct-answer and probe checks, not the record-based ones).  With ``keep`` (a folder), the record runs behind the
    head and decay checks are kept as ``<keep>/<organism>@heads`` and ``<keep>/<organism>@decay``
    (the dashboard lists them)."""
    seeds = check_seeds(split, n, seed_offset)
    rows: list[dict[str, Any]] = []
    accuracy: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for name in organisms:
            lm = load_model(name, device="cpu", dtype="float32")
            work = f"{keep or tmp}/{name}"
            if name in ("micro", "micro-prior"):
                acc = cue_accuracy(lm, n, split=split, seed_offset=seed_offset)
                accuracy[name] = {k: round(float(np.mean(list(v.values()))), 4) for k, v in acc.items()}
            if name == "micro":
                rows += healthy_checks(name, acc)
                rows += decay_checks(name, lm, None, n, work, resume=resume, min_claims=min_claims, split=split)
            elif name == "micro-prior":
                rows += prior_checks(name, acc)
                if probes:
                    rows += probe_checks(name, lm, n, n_cal, f"{tmp}/{name}-probe", split=split,
                                         seed_offset=seed_offset)  # activations: never kept
            elif name == "micro-heads":
                rows += heads_checks(name, lm, planted(name)["listen_heads"], n_cal, work, resume)
            elif name == "micro-decay":
                rows += decay_checks(name, lm, planted(name)["decay_step"], n, work, resume=resume,
                                     min_claims=min_claims, split=split)
    record_seeds = check_seeds(split, n)
    return {"split": split, "n": n, "seed_offset": seed_offset,
            "seeds": {"cue_accuracy": [seeds.start, seeds.stop], "decay_record": [record_seeds.start, record_seeds.stop]},
            "accuracy": accuracy, "checks": rows, "passed": all(r["pass"] for r in rows)}


def _said(k: int | None) -> str:
    return "none" if k is None else str(k)


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
        onset_ = (f"{_said(found['yield_onset'])} / {_said(found['claim_onset'])} (k={found['k']})"
                  if "yield_onset" in found else "-")
        out.append([name, "-" if gap is None else round(gap, 3), heads, onset_,
                    found.get("claim_gap", "-")])
    return out
