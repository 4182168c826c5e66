"""MMAU's official scoring (``evaluation.py`` of github.com/Sakshi113/MMAU), re-implemented.

Not vendored: the script is not reachable from this workplace, so this is a re-implementation of
its two parts, written independently of :mod:`auralens.interp.matching` (which auralens uses):

- ``string_match(answer, prediction, choices)``: lower-case word tokens (``\\b\\w+\\b``); an empty
  prediction is wrong; correct when every answer token is in the prediction and no token that
  belongs only to a wrong choice (a choice's tokens minus the answer's) is;
- the tables: for each row of the prediction JSON, ``model_output`` string-matched against
  ``answer`` / ``choices``, counted per ``task`` (sound / music / speech) and per ``difficulty``
  (easy / medium / hard), plus the total; a row without ``model_output`` is counted as
  corrupted and left out.

So the official score is computed on the *whole* generated text, where auralens scores the
span it extracted as the final answer (``auralens_extracted``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any


def string_match(answer: str, prediction: str, choices: list[str]) -> bool:
    def tokenize(text: str) -> set[str]:
        return set(re.findall(r"\b\w+\b", text.lower()))

    prediction_tokens = tokenize(prediction)
    answer_tokens = tokenize(answer)
    if not prediction_tokens:
        return False
    incorrect_tokens: set[str] = set()
    for choice in choices:
        choice_tokens = tokenize(choice)
        if choice_tokens != answer_tokens:
            incorrect_tokens.update(choice_tokens - answer_tokens)
    cond1 = answer_tokens.issubset(prediction_tokens)
    cond2 = prediction_tokens.isdisjoint(incorrect_tokens)
    return cond1 and cond2


def evaluate(path: str | Path, output_key: str = "model_output") -> dict[str, Any]:
    rows = json.loads(Path(path).read_text())
    task_metrics = {"sound": [0, 0], "music": [0, 0], "speech": [0, 0]}
    diff_metrics = {"easy": [0, 0], "hard": [0, 0], "medium": [0, 0]}
    corrupted = 0
    for sample in rows:
        if output_key not in sample:
            corrupted += 1
            continue
        match = string_match(sample["answer"], sample[output_key], sample["choices"])
        task, difficulty = sample.get("task"), sample.get("difficulty")
        if task in task_metrics:
            task_metrics[task][0] += int(match)
            task_metrics[task][1] += 1
        if difficulty in diff_metrics:
            diff_metrics[difficulty][0] += int(match)
            diff_metrics[difficulty][1] += 1
    total = sum(v[1] for v in task_metrics.values())
    correct = sum(v[0] for v in task_metrics.values())
    return {
        "task": {k: 100 * c / n for k, (c, n) in task_metrics.items() if n},
        "difficulty": {k: 100 * c / n for k, (c, n) in diff_metrics.items() if n},
        "total": 100 * correct / total if total else float("nan"),
        "n": total,
        "corrupted": corrupted,
    }
