"""Text cues for the text-prior organism, and the cue-condition datasets with fixed splits.

A *cue* is a short context phrase before the question that names one of the choices
("i think the answer is chirp up ."), written only with words the shared `micro` tokenizer
already has, so every organism and the healthy `micro` read it with one vocabulary.

Three conditions of the *same* underlying item (same scene, question, choices, answer):

- ``neutral``: no cue;
- ``congruent``: the cue names the right answer;
- ``conflict``: the cue names a wrong choice (drawn from the item's seed, so fixed).

Each condition has fixed, disjoint seed ranges per split, shared by every stage and every model:
``calibration`` (rank heads, fit directions), ``dev`` (choose β / layers) and ``test`` (report).
None overlaps training seeds (``data_seed * 100_000 + i`` for data seeds 0-5) or the plain
``cafe`` default (seed 7: 700_000 + i).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from auralens.interp.cafe.questions import TIERS, make_item
from auralens.interp.errors import DatasetError
from auralens.interp.items import Item

CONDITIONS = ("neutral", "congruent", "conflict")
SPLITS: dict[str, int] = {"calibration": 9_000_000, "dev": 9_100_000, "test": 9_200_000}
SPLIT_SIZE = 100_000  # items available per split


def cue_phrase(choice: str) -> str:
    return f"i think the answer is {choice} ."


def with_cue(item: Item, condition: str, *, cue_choice: str | None = None) -> Item:
    """``item`` in ``condition``.  ``cue_choice`` overrides the drawn wrong choice (conflict)."""
    if condition not in CONDITIONS:
        raise ValueError(f"cue condition: expected one of {CONDITIONS}, found {condition!r}")
    if condition == "neutral":
        cue = None
    elif condition == "congruent":
        cue = item.answer
    else:
        wrong = [c for c in item.choices if c != item.answer]
        seed = int(item.meta.get("seed", 0))
        cue = cue_choice or wrong[int(np.random.default_rng([seed, 77]).integers(len(wrong)))]
        if cue == item.answer:
            raise ValueError(f"item {item.item_id!r}: a conflict cue must name a wrong choice, found the answer")
    question = item.question if cue is None else f"{cue_phrase(cue)} {item.question}"
    meta = {**item.meta, "cue_condition": condition, "cue": cue}
    return dataclasses.replace(item, item_id=f"{item.item_id}-{condition}", question=question, meta=meta)


def split_seeds(split: str, n: int, *, where: str = "cue dataset") -> range:
    """The fixed seed range of ``split``; a bad split or ``n`` is a DatasetError naming ``where``."""
    if split not in SPLITS:
        raise DatasetError(f"{where}: expected a split in {tuple(SPLITS)} after ':', found {split!r}")
    if not 0 < n <= SPLIT_SIZE:
        raise DatasetError(f"{where}: expected n in 1..{SPLIT_SIZE}, found {n}")
    return range(SPLITS[split], SPLITS[split] + n)


def cue_items(condition: str, split: str, n: int, *, tiers: tuple[str, ...] | None = None,
              where: str = "cue dataset") -> list[Item]:
    """``n`` items of ``split`` in ``condition`` (tiers cycled as in plain cafe)."""

    tiers = tiers or TIERS
    seeds = split_seeds(split, n, where=where)
    return [with_cue(make_item(s, tier=tiers[i % len(tiers)]), condition) for i, s in enumerate(seeds)]
