"""What the dashboard's pages and the offline report say in words, from a run's files: the steer
stage's held-out headline (from its ``summary.json``) and the outcome view's claim accuracy on
the claim kinds the README compares (from ``claims.parquet``).

Plain functions of what :mod:`auralens.dashboards.data` reads (no Streamlit, no model); both
the Streamlit pages and :mod:`auralens.dashboards.report` render them, so the two say the same.
Text is Markdown (``**bold**``); :func:`markdown_to_html` turns it into the report's HTML.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field
from typing import Any

from auralens.interp.decay import claim_accuracy_by_step
from auralens.interp.schemas import CLAIM_ACCURACY

__all__ = [
    "CLAIM_KINDS",
    "CLAIM_KINDS_NOTE",
    "DEFAULT_CLAIM_KINDS",
    "SteerHeadline",
    "claim_accuracy_view",
    "markdown_to_html",
    "steer_headline",
]

# ------------------------------------------------------------------------- outcome view
#: the outcome view's choices of claim kinds (label -> kinds kept; None: every claim)
CLAIM_KINDS: dict[str, tuple[str, ...] | None] = {
    "class claims (as the README compares them)": ("class",),
    "every claim but the count (class, pitch, loudness)": ("class", "pitch", "loudness"),
    "every claim (step 0's count claim included: biased)": None,
}
DEFAULT_CLAIM_KINDS = next(iter(CLAIM_KINDS))
CLAIM_KINDS_NOTE = ("Claim accuracy leaves out the count claim by default: step 0's count claim is nearly always "
                    "right, so any curve that includes it falls after step 0 whatever the model does (README, "
                    "the organisms' lessons).")


def claim_accuracy_view(claims, kinds: tuple[str, ...] | None = ("class",), *, n_boot: int = 1000, seed: int = 0):
    """Claim accuracy by step (:func:`auralens.interp.decay.claim_accuracy_by_step`: item-level
    mean, Wilson or BCa 95% CI, ``n_claims`` and ``n_items``) of the claims of ``kinds`` (None:
    all) in ``claims.parquet``; an empty table when there are none."""
    if claims is None or len(claims) == 0:
        return CLAIM_ACCURACY.frame()
    c = claims if kinds is None else claims[claims["kind"].astype(str).isin(kinds)]
    if len(c) == 0:
        return CLAIM_ACCURACY.frame()
    return claim_accuracy_by_step(c, n_boot=n_boot, seed=seed)


# --------------------------------------------------------------------- steering headline
def _d(v: Any) -> dict[str, Any]:
    """``v`` when it is a dict, else {} (a summary written by another version may lack a key)."""
    return v if isinstance(v, dict) else {}


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def _f(v: Any, sign: bool = True) -> str:
    x = _num(v)
    if not math.isfinite(x):
        return "n/a"
    return f"{x:+.3f}" if sign else f"{x:.3f}"


def _ci(ci: Any) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(math.isfinite(_num(v)) for v in ci):
        return f"[{_num(ci[0]):+.3f}, {_num(ci[1]):+.3f}]"
    return "[n/a]"


@dataclass
class SteerHeadline:
    """The steer stage's result in words (:func:`steer_headline`): ``protocol``, ``decision``
    (``"steer"``, ``"decline"`` or ``""``), ``setting`` (what dev chose), ``headline`` (the test
    result), ``rows`` (the test result beside each control: system, gain on test, 95% CI,
    vector − control and its CI), ``random`` (the random-direction control: the vector's
    percentile among them), ``cost`` (the setting on the neutral condition's test items, where
    there is nothing to repair), ``dev`` (the dev split's gain, labelled as what chose the
    setting), ``notes``."""

    protocol: str
    decision: str = ""
    setting: str = ""
    headline: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)
    random: str = ""
    cost: str = ""
    dev: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def held_out(self) -> bool:
        return bool(self.headline)


def _control_rows(summary: dict[str, Any], test: dict[str, Any]) -> list[dict[str, Any]]:
    declined = test.get("decision") == "decline"
    rows = [{"system": "unsteered (steering declined)" if declined else "vector (chosen on dev)",
             "gain on test": _num(test.get("gain")), "95% CI": "0 by construction" if declined else _ci(test.get("ci")),
             "n": test.get("n"),
             "vector − control": None, "vector − control 95% CI": ""}]
    cand = _d(test.get("candidate"))
    if cand:
        rows.append({"system": f"declined candidate β = {cand.get('beta')} (not chosen, for information)",
                     "gain on test": _num(cand.get("gain")), "95% CI": _ci(cand.get("ci")), "n": cand.get("n"),
                     "vector − control": None, "vector − control 95% CI": ""})
    for name, c in (summary.get("controls") or {}).items():
        if not isinstance(c, dict):
            continue
        if "skipped" in c:
            rows.append({"system": f"control: {name}", "gain on test": None, "95% CI": f"skipped: {c['skipped']}",
                         "n": None, "vector − control": None, "vector − control 95% CI": ""})
            continue
        label = f"control: {name}" + (f" ({c['model']})" if name == "model_without_deficit" and c.get("model") else "")
        rows.append({"system": label, "gain on test": _num(c.get("gain")), "95% CI": _ci(c.get("ci")),
                     "n": c.get("n", test.get("n")), "vector − control": c.get("vector_minus_control"),
                     "vector − control 95% CI": _ci(c.get("vector_minus_control_ci"))
                     if "vector_minus_control_ci" in c else ""})
    rd = summary.get("random_directions")
    if isinstance(rd, dict) and "mean" in rd:
        rows.append({"system": f"control: {rd.get('k')} random directions (mean of their test gains)",
                     "gain on test": _num(rd.get("mean")), "95% CI": f"95th percentile {_f(rd.get('p95'))}",
                     "n": test.get("n"), "vector − control": _num(rd.get("vector_minus_mean")),
                     "vector − control 95% CI": ""})
    return rows


def _random_text(rd: Any) -> str:
    if not isinstance(rd, dict):
        return ""
    if "skipped" in rd:
        return f"**Random-direction control:** skipped ({rd['skipped']})."
    if "vector_percentile" not in rd:
        return ""
    pct = _num(rd.get("vector_percentile"))
    above = bool(rd.get("above_p95"))
    return (f"**Random-direction control:** {rd.get('k')} random directions of the vector's norm, each given its "
            f"own β on dev by the same rule ({rd.get('n_declined', 0)} declined), then run on the same test items: "
            f"the reported test gain {_f(rd.get('vector_gain'))} is at **percentile {pct:.1f}** of theirs (100: above all) "
            f"(their mean {_f(rd.get('mean'))}, 95th percentile {_f(rd.get('p95'))}, max {_f(rd.get('max'))}); "
            + ("**above** their 95th percentile." if above else
               "**not above** their 95th percentile: random directions do as well."))


def _cost_text(neutral: Any) -> str:
    if not isinstance(neutral, dict) or not neutral:
        return ""
    if "skipped" in neutral:
        return f"**Cost on the neutral condition:** not measured ({neutral['skipped']})."
    if neutral.get("decision") == "decline":
        return (f"**Cost on the neutral condition** (n = {neutral.get('n')}): none, steering was declined "
                "(the unsteered model answers).")
    return (f"**Cost on the neutral condition** ({neutral.get('data', 'neutral items')}, n = {neutral.get('n')}, where "
            f"there is no cue to resist): gain {_f(neutral.get('gain'))} 95% CI {_ci(neutral.get('ci'))}.")


def steer_headline(summary: dict[str, Any]) -> SteerHeadline:
    """The steer run's ``summary.json`` in words: for the ``dev_test`` protocol the held-out
    test gain with its CI and n, whether the protocol declined to steer, the controls beside it
    and the random-direction percentile, then the dev gain that chose the setting (labelled
    "dev"); for the in-sample ``sweep`` protocol a warning that its best gain is optimistic."""
    test = _d(summary.get("test"))
    protocol = str(summary.get("protocol") or ("dev_test" if test else "sweep" if summary.get("best") else ""))
    out = SteerHeadline(protocol=protocol, notes=[str(n) for n in summary.get("notes") or []])
    if not test:
        best = _d(summary.get("best"))
        if best:
            out.notes.insert(0, f"In-sample sweep protocol: the best β ({best.get('beta')}, layer {best.get('layer')}) "
                                f"is chosen and reported on the same {best.get('n')} items: gain {_f(best.get('delta'))} "
                                f"{_ci(best.get('delta_ci'))} is optimistic; no held-out result.")
        return out
    sel = _d(summary.get("selected"))
    decision = str(test.get("decision") or summary.get("decision") or sel.get("decision") or "steer")
    out.decision = decision
    out.setting = (f"**Chosen on the dev split:** {sel.get('vector')} ({sel.get('mode', '')}), layer {sel.get('layer')}, "
                   f"β = {sel.get('beta')}, positions {sel.get('positions')}.")
    rule = summary.get("rule") or sel.get("rule")
    if decision == "decline":
        cand = _d(test.get("candidate"))
        out.setting = (f"**Steering declined on dev:** no nonzero β passed the selection rule"
                       f"{f' ({rule})' if rule else ''}, so the reported system is the unsteered model "
                       f"(β = 0; test gain 0 by construction). The declined candidate: {sel.get('vector')} "
                       f"({sel.get('mode', '')}), layer {sel.get('layer')}, β = {cand.get('beta')}, "
                       f"positions {sel.get('positions')}.")
    elif rule:
        out.setting += f" Decision: **steer** (rule: {rule})."
    gain = (f"gain **{_f(test.get('gain'))}** (0 by construction: the unsteered model against itself)"
            if decision == "decline" else f"gain **{_f(test.get('gain'))}** 95% CI {_ci(test.get('ci'))}")
    out.headline = (f"**On the held-out test split** (n = {test.get('n')}): accuracy {_f(test.get('base'), False)} → "
                    f"{_f(test.get('steered'), False)}, {gain}.")
    if decision == "decline" and isinstance(test.get("candidate"), dict):
        c = test["candidate"]
        out.headline += (f" The declined candidate on test, for information only: gain {_f(c.get('gain'))} "
                         f"{_ci(c.get('ci'))}.")
    out.rows = _control_rows(summary, test)
    out.random = _random_text(summary.get("random_directions"))
    out.cost = _cost_text(summary.get("neutral"))
    dev = _d(sel.get("dev"))
    if decision == "decline" and isinstance(sel.get("candidate"), dict):
        dev = sel["candidate"].get("dev") or dev
    if dev and decision == "decline":
        out.dev = (f"Dev split (the selection, not the result): the declined candidate's dev gain, {_f(dev.get('gain'))} "
                   f"{_ci(dev.get('ci'))} (n = {dev.get('n')}), did not pass the selection rule.")
    elif dev:
        out.dev = (f"Dev split (the selection, not the result): the gain of this setting there, {_f(dev.get('gain'))} "
                   f"{_ci(dev.get('ci'))} (n = {dev.get('n')}), is what chose it; it is not the result.")
    return out


_BOLD = re.compile(r"\*\*(.+?)\*\*")


def markdown_to_html(text: str) -> str:
    """The ``**bold**`` Markdown of these summaries as escaped HTML."""
    return _BOLD.sub(r"<b>\1</b>", html.escape(text, quote=False))
