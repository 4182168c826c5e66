"""Tiered multiple-choice questions about a cafe scene, in MMAU's shape.

Tiers:
- ``perception``: count, identity of the k-th event, louder, higher
- ``temporal``:   which of two sounds comes first, which sound is last
- ``multihop``:   what comes right after a named sound, how many loud sounds

Every question is decidable from the scene's ground truth; answers are balanced by construction
(random event classes and choice order), so a model that does not listen scores near chance.
"""

from __future__ import annotations

import numpy as np

from auralens.interp.cafe.scenes import CLASSES, Scene, make_scene  # noqa: F401
from auralens.interp.items import Item

ORDINALS = ("first", "second", "third", "fourth")
COUNT_WORDS = ("zero", "one", "two", "three", "four")
TIERS = ("perception", "temporal", "multihop")
QTYPES = {
    "perception": ("count", "identity", "louder", "higher"),
    "temporal": ("first_of_two", "last"),
    "multihop": ("after", "count_loud"),
}
CLASS_WORDS = {c: c.replace("_", " ") for c in CLASSES}  # "chirp_up" -> "chirp up"


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _shuffled(rng: np.random.Generator, seq) -> tuple:
    seq = list(seq)
    rng.shuffle(seq)
    return tuple(seq)


def _class_choices(rng, answer_cls: str, exclude=()) -> tuple[str, ...]:
    others = [c for c in CLASSES if c != answer_cls and c not in exclude]
    distract = list(rng.choice(others, size=3, replace=False))
    return _shuffled(rng, [CLASS_WORDS[answer_cls]] + [CLASS_WORDS[c] for c in distract])


def _question(scene: Scene, qtype: str, rng: np.random.Generator):
    """Return (question, choices, answer, facts) or None when the scene cannot support qtype.

    ``facts`` carries what the reasoning chain needs (used by answer formats)."""
    ev = scene.events
    n = len(ev)
    if qtype == "count":
        choices = COUNT_WORDS[1:]
        return "how many sounds are there ?", choices, COUNT_WORDS[n], {"n": n}
    if qtype == "identity":
        k = int(rng.integers(n))
        q = f"what is the {ORDINALS[k]} sound ?"
        return q, _class_choices(rng, ev[k].cls), CLASS_WORDS[ev[k].cls], {"k": k}
    if qtype in ("louder", "higher"):
        attr = "loudness_level" if qtype == "louder" else "pitch_level"
        top = "loud" if qtype == "louder" else "high"
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if getattr(ev[i], attr) != getattr(ev[j], attr)]
        if not pairs:
            return None
        i, j = pairs[int(rng.integers(len(pairs)))]
        if rng.random() < 0.5:
            i, j = j, i
        word = "louder" if qtype == "louder" else "higher"
        q = f"which sound is {word} , the {ORDINALS[i]} or the {ORDINALS[j]} ?"
        ans = ORDINALS[i] if getattr(ev[i], attr) == top else ORDINALS[j]
        return q, (ORDINALS[i], ORDINALS[j]), ans, {"i": i, "j": j, "attr": attr}
    classes = [e.cls for e in ev]
    unique = [c for c in classes if classes.count(c) == 1]
    if qtype == "first_of_two":
        if len(unique) < 2:
            return None
        a, b = rng.choice(unique, size=2, replace=False)
        ia, ib = classes.index(a), classes.index(b)
        q = f"which comes first , the {CLASS_WORDS[a]} or the {CLASS_WORDS[b]} ?"
        ans = CLASS_WORDS[a] if ia < ib else CLASS_WORDS[b]
        return q, (CLASS_WORDS[a], CLASS_WORDS[b]), ans, {"a": str(a), "b": str(b), "ia": ia, "ib": ib}
    if qtype == "last":
        if n < 2:
            return None
        return "what is the last sound ?", _class_choices(rng, ev[-1].cls), CLASS_WORDS[ev[-1].cls], {"k": n - 1}
    if qtype == "after":
        cands = [c for c in unique if classes.index(c) < n - 1]
        if not cands:
            return None
        a = _pick(rng, cands)
        ia = classes.index(a)
        nxt = ev[ia + 1].cls
        q = f"what sound comes right after the {CLASS_WORDS[a]} ?"
        return q, _class_choices(rng, nxt, exclude=(a,)), CLASS_WORDS[nxt], {"a": a, "ia": ia}
    if qtype == "count_loud":
        loud = [i for i, e in enumerate(ev) if e.loudness_level == "loud"]
        q = "how many loud sounds are there ?"
        return q, COUNT_WORDS[:5], COUNT_WORDS[len(loud)], {"loud": loud}
    raise ValueError(f"unknown question type {qtype!r}")


def make_item(seed: int, *, tier: str | None = None, qtype: str | None = None) -> Item:
    """One item (scene + question) from one seed. Same seed, same item."""
    rng = np.random.default_rng([seed, 1])
    tier = tier or _pick(rng, TIERS)
    scene = make_scene(seed)
    qt = qtype or _pick(rng, QTYPES[tier])
    for attempt in range(200):
        got = _question(scene, qt, rng)
        if got is not None:
            q, choices, ans, facts = got
            return Item(
                item_id=f"cafe-{seed}-{tier}-{qt}",
                audio=f"cafe:{scene.seed}",
                question=q,
                choices=tuple(choices),
                answer=ans,
                task="sound",
                category=tier,
                sub_category=qt,
                difficulty={"perception": "easy", "temporal": "medium", "multihop": "hard"}[tier],
                tier=tier,
                scene=scene.to_dict(),
                meta={"facts": facts, "seed": seed, "n_events": len(scene.events)},
            )
        # the scene cannot support this question type: redraw the scene from a derived seed
        scene = make_scene(seed * 1009 + attempt + 1)
    raise RuntimeError(f"could not build a {tier}/{qtype} question for seed {seed}")  # pragma: no cover


def make_items(n: int, *, seed: int = 0, tiers: tuple[str, ...] = TIERS) -> list[Item]:
    """``n`` items cycling through the tiers, seeds ``seed*100000 + i``."""
    return [make_item(seed * 100_000 + i, tier=tiers[i % len(tiers)]) for i in range(n)]
