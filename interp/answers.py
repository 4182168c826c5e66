"""From a free-text generation to the one choice it names: the answer path a real checkpoint needs.

A pretrained audio LM answers in its own words: ``"B"``, ``"(B) a dog"``, ``"The answer is B."``,
R1-AQA's ``<think>...</think><answer>...</answer>``, or a sentence (``"The voice belongs to a man,
not a woman."``).  :func:`extract` finds the answer span and, where it can, the single choice
the span names; MMAU's own ``string_match`` (:func:`~auralens.interp.matching.mmau_string_match`)
stays the scoring rule, applied to that span.

Steps, first hit wins (each written by hand: these are a handful of regular expressions, the
same ones MMAU/R1-AQA evaluation scripts apply, and no package ships them):

1. ``<think>...</think>`` is dropped; the last ``<answer>...</answer>`` (closed or not) is the span.
2. Else the last ``answer : X`` / ``answer is X`` / ``final answer: X`` line is the span; else the text.
3. The span names a choice under MMAU's rule (exactly one choice matches) → that choice.
4. The span is a choice letter (``B``, ``(B)``, ``B)``, ``B.``, ``option B``, ``B: text``) and
   the item has at most 26 choices → the letter's choice.
5. Negated mentions are removed (``not X``, ``rather than X``, ``instead of X``, ``isn't X``,
   ``no X``, up to the next punctuation or conjunction) and step 3 is tried on what is left, so
   "a man, not a woman" names "man" only.
6. Else: an extraction failure (``how == "none"``); :func:`score` counts it wrong and the run
   reports how many there were.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

from auralens.interp.matching import match_choice, mmau_string_match

__all__ = ["Extraction", "extract", "extraction_counts", "score_text"]

HOWS = ("choice", "letter", "negation", "none")

_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL | re.IGNORECASE)
_ANSWER_TAG = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL | re.IGNORECASE)
_ANSWER_LINE = re.compile(r"(?:final answer|answer)\s*(?::|is)\s*(.+?)\s*\.?\s*$", re.MULTILINE | re.IGNORECASE)
_LETTER = re.compile(
    r"^\s*(?:(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)\s*(?:is|:)?\s*)?"
    r"[\(\[]?([A-Za-z])[\)\]]?(?:\s*[\.:\)]\s*.*|\s*)$",
    re.DOTALL | re.IGNORECASE,
)
_NEGATION = re.compile(
    r"\b(?:not|never|no|isn't|is not|aren't|wasn't|rather than|instead of|other than|but not)\b"
    r"[^.,;:!?]*?(?=[.,;:!?]|\bbut\b|\band\b|$)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Extraction:
    span: str  #: the answer span (what string_match scores)
    choice: str  #: the one choice named, or "" on failure
    how: str  #: one of HOWS


def _span(text: str) -> str:
    body = _THINK.sub(" ", text)
    tags = _ANSWER_TAG.findall(body)
    if tags and tags[-1].strip():
        return tags[-1].strip()
    lines = _ANSWER_LINE.findall(body.strip())
    if lines:
        return lines[-1].strip()
    return body.strip()


def _letter(span: str, choices: Sequence[str]) -> str | None:
    if not 1 <= len(choices) <= 26:
        return None
    m = _LETTER.match(span.strip())
    if not m:
        return None
    i = string.ascii_uppercase.index(m.group(1).upper())
    if i >= len(choices):
        return None
    # "a dog" must not read as letter A: a lowercase single letter counts only when bare or bracketed
    bare = span.strip().strip("()[].:").strip()
    if m.group(1).islower() and bare != m.group(1):
        return None
    return choices[i]


def extract(text: str, choices: Sequence[str]) -> Extraction:
    """The answer span of ``text`` and the single choice it names (see the module docstring)."""
    span = _span(text)
    hit = match_choice(span, choices)
    if hit is not None:
        return Extraction(span, hit, "choice")
    hit = _letter(span, choices)
    if hit is not None:
        return Extraction(hit, hit, "letter")
    pruned = _NEGATION.sub(" ", span)
    if pruned != span:
        hit = match_choice(pruned, choices)
        if hit is not None:
            return Extraction(hit, hit, "negation")
    return Extraction(span, "", "none")


def score_text(answer: str, text: str, choices: Sequence[str]) -> dict:
    """``answer_span``, ``matched_choice``, ``extracted`` (how) and ``correct`` (MMAU's
    string_match of the answer on the extracted span)."""
    ex = extract(text, choices)
    return {
        "answer_span": ex.span,
        "matched_choice": ex.choice,
        "extracted": ex.how,
        "correct": bool(mmau_string_match(answer, ex.span, choices)),
    }


def extraction_counts(hows: Sequence[str]) -> dict[str, int]:
    """How many answers each extraction step resolved; ``none`` = extraction failures."""
    return {h: int(sum(1 for x in hows if x == h)) for h in HOWS}
