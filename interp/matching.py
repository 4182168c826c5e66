"""Scoring free-text answers against multiple choices.

:func:`mmau_string_match` is MMAU's own matching rule (``string_match`` in the MMAU repository's
``evaluation.py``): the prediction is correct when it contains every word of the answer and no
word that belongs only to a wrong choice.  Re-implemented here (a few lines) because MMAU ships
it as a script, not a package.
"""

from __future__ import annotations

import re
from collections.abc import Sequence


def _words(text: str) -> set[str]:
    return set(re.findall(r"\b\w+\b", text.lower()))


def mmau_string_match(answer: str, prediction: str, choices: Sequence[str]) -> bool:
    pred = _words(prediction)
    ans = _words(answer)
    if not pred:
        return False
    incorrect: set[str] = set()
    for choice in choices:
        cw = _words(choice)
        if cw != ans:
            incorrect.update(cw - ans)
    return ans.issubset(pred) and pred.isdisjoint(incorrect)


def match_choice(prediction: str, choices: Sequence[str]) -> str | None:
    """The one choice the prediction matches under MMAU's rule, or None."""
    hits = [c for c in choices if mmau_string_match(c, prediction, choices)]
    return hits[0] if len(hits) == 1 else None
