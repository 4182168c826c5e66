"""The five rewards of a generated trace and their combination (MPAR²'s).

**Rewards** (each in [0, 1], from the generated text alone plus the item's ground truth):

- *perception*: the claims made inside ``<perception>`` (:func:`auralens.interp.cafe.formats.parse_claims`)
  checked against the scene (:func:`~auralens.interp.cafe.formats.check_claims`):
  ``correct / max(claims, 3 · sounds)`` — a sound not described counts as three wrong claims
  (class, pitch, loudness), so describing fewer sounds is not a way to be right more often.
- *consistency* (stepwise perception → reasoning): every checkable statement in
  ``<reasoning>`` and ``<review>`` is compared with what ``<perception>`` claimed, not with the
  truth: ``sound k is X`` / ``the X is sound k`` (class), ``sound k is loud`` (pitch/loudness),
  ``there are N sounds`` / ``i heard N sounds`` (number of sounds described), ``loud : sound a
  and sound b`` / ``no sound is loud`` / ``that is N loud sounds`` (the set of sounds perceived as
  loud).  Reward = consistent / checked; a reasoning section with nothing checkable is
  vacuously consistent (1), a missing or empty one scores 0.
- *review* (MPAR²'s review-accuracy reward): the checkable claims of the ``<review>`` section
  checked against the *scene* (the truth, where consistency compares with what was perceived):
  correct / checked; a missing review, or one with nothing checkable, scores 0 — the review is
  there to re-check what was heard, so a review that checks nothing earns nothing.
- *answer*: MMAU matching (:func:`auralens.interp.generation.score`) of the final ``answer : X`` span.
- *format*: the seven markers ``<perception> </perception> <reasoning> </reasoning> <review>
  </review> answer :`` each on its own line; score = (longest run of markers that occur exactly
  once and appear in the canonical order) / 7.

**Perception-rich decomposition.**  MPAR² rewards perception that is decomposed into
attributes rather than a one-line caption.  In cafe every sound has three checkable attributes
(class, pitch, loudness), and the perception reward's denominator ``max(claims, 3 · sounds)``
already pays only for a decomposition that covers each attribute of each sound: "sound 1 : tone"
alone earns at most 1/3 for that sound.  So there is no separate decomposition term (it would
double-count the same coverage).

**Combined reward: the plain geometric mean** ``(r_p · r_c · r_v · r_a · r_f)^(1/5)``, as the paper
combines its rewards: a wrong answer, or no perception section, zeroes the reward (no
epsilon).  That is the paper's point — perception counts only inside a trace that is also
consistent, well-formed and right — and GRPO tolerates it: a group whose rewards are all zero
has zero advantage and only the KL term acts on it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from auralens.interp.cafe.formats import check_claims, parse_claims
from auralens.interp.cafe.questions import CLASS_WORDS
from auralens.interp.errors import ConfigError
from auralens.interp.generation import score

__all__ = [
    "FORMAT_MARKERS",
    "REWARD_NAMES",
    "SECTIONS",
    "answer_reward",
    "combine_rewards",
    "consistency_reward",
    "format_reward",
    "perception_reward",
    "review_reward",
    "section_claims",
    "split_sections",
    "trace_rewards",
]

REWARD_NAMES: tuple[str, ...] = ("perception", "consistency", "review", "answer", "format")
FORMAT_MARKERS: tuple[str, ...] = (
    "<perception>", "</perception>", "<reasoning>", "</reasoning>", "<review>", "</review>", "answer :",
)
SECTIONS: tuple[str, ...] = ("perception", "reasoning", "review")


def split_sections(text: str) -> dict[str, tuple[int, int] | None]:
    """Line ranges ``(first, last)`` (exclusive) of the content of each section, by line index
    of ``text.split("\\n")`` (the step index of :func:`~auralens.interp.cafe.formats.parse_claims`);
    ``None`` when the section's opening or closing tag is missing.  The first opening tag and
    the first closing tag after it delimit a section."""
    lines = [ln.strip().lower() for ln in text.split("\n")]
    out: dict[str, tuple[int, int] | None] = {}
    for name in SECTIONS:
        try:
            a = lines.index(f"<{name}>")
            b = lines.index(f"</{name}>", a + 1)
        except ValueError:
            out[name] = None
            continue
        out[name] = (a + 1, b)
    return out


def section_claims(text: str, span: tuple[int, int] | None):
    """The claims of ``text`` made on the lines of ``span`` (a section of :func:`split_sections`;
    none for a missing section)."""
    if span is None:
        return []
    return [c for c in parse_claims(text) if span[0] <= c.step < span[1]]


def perception_reward(text: str, scene: Mapping[str, Any]) -> float:
    """Share of the perception section's claims that the scene supports, with every sound not
    described counted as three wrong claims: ``correct / max(claims, 3 · sounds)``."""
    claims = section_claims(text, split_sections(text)["perception"])
    if not claims:
        return 0.0
    correct = sum(ok for _, ok in check_claims(claims, dict(scene)))
    return correct / max(len(claims), 3 * len(scene["events"]), 1)


_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _num(s: str) -> int:
    return _NUMBERS.index(s) if s in _NUMBERS else int(s)


def _consistency_patterns():
    words = sorted((re.escape(w) for w in CLASS_WORDS.values()), key=len, reverse=True)
    cls = "|".join(words)
    num = "|".join(_NUMBERS) + r"|\d+"
    return {
        "reverse_class": re.compile(rf"\bthe\s+({cls})\s+is\s+sound\s+(\d+)\b"),
        "loud_list": re.compile(r"^\s*loud\s*:\s*(.+)$"),
        "no_loud": re.compile(r"\bno\s+sound\s+is\s+loud\b"),
        "n_loud": re.compile(rf"\b(?:that\s+is|there\s+are)\s+({num})\s+loud\s+sounds?\b"),
    }


def consistency_reward(text: str) -> float:
    """Agreement of the reasoning and review sections with the perception section (see the
    module docstring): consistent statements / checked statements."""
    secs = split_sections(text)
    if secs["perception"] is None or secs["reasoning"] is None or secs["reasoning"][0] >= secs["reasoning"][1]:
        return 0.0
    word_cls = {w: c for c, w in CLASS_WORDS.items()}
    perceived: dict[tuple[int, str], str] = {}
    for c in section_claims(text, secs["perception"]):
        if c.kind != "count":
            perceived.setdefault((c.sound, c.kind), c.value)
    sounds = {k for k, _ in perceived}
    loud = {k for (k, kind), v in perceived.items() if kind == "loudness" and v == "loud"}
    checks: list[bool] = []
    spans = [s for s in (secs["reasoning"], secs["review"]) if s is not None]
    for c in (c for s in spans for c in section_claims(text, s)):
        if c.kind == "count":
            checks.append(int(c.value) == len(sounds))
        else:
            checks.append(perceived.get((c.sound, c.kind)) == c.value)
    pat = _consistency_patterns()
    lines = text.split("\n")
    for a, b in spans:
        for line in lines[a:b]:
            line = line.strip().lower()
            for m in pat["reverse_class"].finditer(line):
                checks.append(perceived.get((int(m.group(2)) - 1, "class")) == word_cls[m.group(1)])
            m = pat["loud_list"].match(line)
            if m:
                listed = {int(k) - 1 for k in re.findall(r"sound\s+(\d+)", m.group(1))}
                checks.append(listed == loud)
            if pat["no_loud"].search(line):
                checks.append(not loud)
            for m in pat["n_loud"].finditer(line):
                checks.append(_num(m.group(1)) == len(loud))
    if not checks:
        return 1.0
    return sum(checks) / len(checks)


def review_reward(text: str, scene: Mapping[str, Any]) -> float:
    """Share of the review section's checkable claims that the scene supports (0 when the
    section is missing or checks nothing)."""
    claims = section_claims(text, split_sections(text)["review"])
    if not claims:
        return 0.0
    return sum(ok for _, ok in check_claims(claims, dict(scene))) / len(claims)


def answer_reward(text: str, item) -> float:
    """1 when the final answer span matches the item's answer under MMAU's rule, else 0."""
    return 1.0 if score(item, text)["correct"] else 0.0


def format_reward(text: str) -> float:
    """Longest in-order run of the markers that occur exactly once, over the 7 markers."""
    lines = [ln.strip().lower() for ln in text.split("\n")]
    where: list[int] = []
    for marker in FORMAT_MARKERS:
        if marker == "answer :":
            hits = [i for i, ln in enumerate(lines) if re.match(r"^answer\s*:", ln)]
        else:
            hits = [i for i, ln in enumerate(lines) if ln == marker]
        where.append(hits[0] if len(hits) == 1 else -1)
    # longest increasing subsequence of the present markers' line indices (canonical order)
    seq = [w for w in where if w >= 0]
    best = [1] * len(seq)
    for i in range(len(seq)):
        for j in range(i):
            if seq[j] < seq[i]:
                best[i] = max(best[i], best[j] + 1)
    return (max(best) if best else 0) / len(FORMAT_MARKERS)


def combine_rewards(rewards: Mapping[str, float]) -> float:
    """The geometric mean of the five rewards (MPAR²'s combination; no epsilon: one zero zeroes it)."""
    vals = [float(rewards[k]) for k in REWARD_NAMES]
    for k, v in zip(REWARD_NAMES, vals):
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"reward {k!r}: expected a value in [0, 1], found {v}")
    return float(np.prod(vals) ** (1.0 / len(vals)))


def trace_rewards(text: str, item) -> dict[str, float]:
    """The five rewards of one generated trace for ``item`` (which needs a cafe scene) and
    their geometric mean under ``"total"``."""
    if not item.scene:
        raise ConfigError(f"item {item.item_id!r}: expected a cafe scene (ground truth) for the perception reward, found none")
    r = {
        "perception": perception_reward(text, item.scene),
        "consistency": consistency_reward(text),
        "review": review_reward(text, item.scene),
        "answer": answer_reward(text, item),
        "format": format_reward(text),
    }
    r["total"] = combine_rewards(r)
    return r

