"""The one item shape every dataset loader returns (MMAU's multiple-choice shape)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from auralens.interp.errors import DatasetError

#: the longest question an item may ask, in characters: a real benchmark question is a few hundred
#: characters at most, and a prompt this long already overflows every supported model's context
MAX_QUESTION_CHARS = 10_000
#: the longest answer choice, in characters
MAX_CHOICE_CHARS = 1_000


@dataclass(frozen=True, kw_only=True)
class Item:
    """One benchmark question about one audio clip.

    ``audio`` is either a path to an audio file or the name of a generator (``cafe:<seed>``);
    :func:`auralens.interp.audio.item_audio` turns it into a waveform.
    """

    item_id: str
    audio: str
    question: str
    choices: tuple[str, ...]
    answer: str
    task: str = ""
    category: str = ""
    sub_category: str = ""
    difficulty: str = ""
    tier: str = ""
    scene: dict[str, Any] | None = None  # cafe ground truth
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"item {self.item_id!r}"
        if not self.question or not isinstance(self.question, str):
            raise DatasetError(f"{where}: expected a non-empty question string, found {self.question!r}")
        if len(self.question) > MAX_QUESTION_CHARS:
            raise DatasetError(f"{where}: expected a question of at most {MAX_QUESTION_CHARS:,} characters, "
                               f"found one of {len(self.question):,}")
        if len(self.choices) < 2:
            raise DatasetError(f"{where}: expected at least 2 choices, found {list(self.choices)!r}")
        for c in self.choices:
            if not isinstance(c, str) or not c.strip():
                raise DatasetError(f"{where}: expected every choice to be a non-empty string, found {c!r} "
                                   f"in {list(self.choices)!r}")
            if len(c) > MAX_CHOICE_CHARS:
                raise DatasetError(f"{where}: expected choices of at most {MAX_CHOICE_CHARS:,} characters, "
                                   f"found one of {len(c):,}")
        if len(set(self.choices)) < 2:
            # a repeated choice beside others is kept: MMAU test-mini has 27 such rows, scored by string match
            raise DatasetError(f"{where}: expected at least 2 distinct choices, found {list(self.choices)!r}")
        if self.answer not in self.choices:
            raise DatasetError(
                f"{where}: expected the answer to be one of the choices {list(self.choices)!r}, "
                f"found answer {self.answer!r}"
            )

    @property
    def answer_index(self) -> int:
        return self.choices.index(self.answer)

    def to_row(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "question": self.question,
            "choices": list(self.choices),
            "answer": self.answer,
            "task": self.task,
            "category": self.category,
            "sub_category": self.sub_category,
            "difficulty": self.difficulty,
            "tier": self.tier,
        }
