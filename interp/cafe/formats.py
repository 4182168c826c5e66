"""Answer formats for cafe items, and checking perceptual claims against the ground truth.

Three formats:
- ``direct``:     ``answer : X``
- ``cot``:        free chain of thought, one step a line, ending ``so the answer is X``
- ``structured``: ``<perception>`` (one claim line per sound) → ``<reasoning>`` → ``<review>``
                  → ``answer : X``, the MPAR² perception → reasoning → review shape

Perceptual claims ("there are 3 sounds", "sound 2 is noise", "sound 2 : noise low soft") are
parsed from any generated text line by line, so each claim carries the index of the reasoning
step it was made in, and checked one by one against the scene.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from auralens.interp.cafe.questions import CLASS_WORDS, COUNT_WORDS, ORDINALS
from auralens.interp.items import Item

FORMATS = ("direct", "cot", "structured")
INSTRUCTIONS = {
    "direct": "answer with one choice .",
    "cot": "think step by step , then answer .",
    "structured": "answer with perception , reasoning and review .",
}
_WORD_CLASS = {w: c for c, w in CLASS_WORDS.items()}


def prompt_text(item: Item, fmt: str) -> str:
    """The user turn's text (the audio placeholder is added by the chat template)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown answer format {fmt!r}; expected one of {FORMATS}")
    choices = " | ".join(item.choices)
    return f"{item.question} choices : {choices} . {INSTRUCTIONS[fmt]}"


def _ev(item: Item) -> list[dict]:
    return list(item.scene["events"]) if item.scene else []


def _cw(cls: str) -> str:
    return CLASS_WORDS[cls]


def _reasoning(item: Item) -> list[str]:
    """Reasoning lines from the question's facts (all true by construction)."""
    ev = _ev(item)
    f = item.meta.get("facts", {})
    qt = item.sub_category
    if qt == "count":
        return [f"there are {COUNT_WORDS[len(ev)]} sounds"]
    if qt in ("identity", "last"):
        k = f["k"]
        return [f"the {ORDINALS[k]} sound is sound {k + 1}", f"sound {k + 1} is {_cw(ev[k]['cls'])}"]
    if qt in ("louder", "higher"):
        i, j, attr = f["i"], f["j"], f["attr"]
        return [
            f"sound {i + 1} is {ev[i][attr]} and sound {j + 1} is {ev[j][attr]}",
        ]
    if qt == "first_of_two":
        return [
            f"the {_cw(f['a'])} is sound {f['ia'] + 1} and the {_cw(f['b'])} is sound {f['ib'] + 1}",
        ]
    if qt == "after":
        ia = f["ia"]
        return [
            f"the {_cw(f['a'])} is sound {ia + 1}",
            f"sound {ia + 2} is {_cw(ev[ia + 1]['cls'])}",
        ]
    if qt == "count_loud":
        loud = f["loud"]
        if loud:
            which = " and ".join(f"sound {i + 1}" for i in loud)
            return [f"loud : {which}", f"that is {COUNT_WORDS[len(loud)]} loud sounds"]
        return ["no sound is loud"]
    return []


def render_target(item: Item, fmt: str) -> str:
    """The reference answer text in ``fmt`` (used to train `micro` and as a worked example)."""
    ev = _ev(item)
    if fmt == "direct":
        return f"answer : {item.answer}"
    if fmt == "cot":
        lines = [f"i hear {COUNT_WORDS[len(ev)]} sounds"]
        lines += [f"sound {k + 1} is {_cw(e['cls'])}" for k, e in enumerate(ev)]
        lines += _reasoning(item)
        lines.append(f"so the answer is {item.answer}")
        return "\n".join(lines)
    if fmt == "structured":
        lines = ["<perception>"]
        lines += [
            f"sound {k + 1} : {_cw(e['cls'])} {e['pitch_level']} {e['loudness_level']}" for k, e in enumerate(ev)
        ]
        lines += ["</perception>", "<reasoning>"]
        lines += _reasoning(item)
        lines += ["</reasoning>", "<review>", f"i heard {COUNT_WORDS[len(ev)]} sounds", "</review>"]
        lines.append(f"answer : {item.answer}")
        return "\n".join(lines)
    raise ValueError(f"unknown answer format {fmt!r}; expected one of {FORMATS}")


# ---------------------------------------------------------------------------- claims
@dataclass(frozen=True, kw_only=True)
class Claim:
    step: int  # 0-based line index of the generated text
    kind: str  # "count" | "class" | "pitch" | "loudness"
    sound: int  # 0-based sound index (-1 for count claims)
    value: str


_NUM = "|".join(COUNT_WORDS)
_CLASSW = "|".join(sorted((re.escape(w) for w in CLASS_WORDS.values()), key=len, reverse=True))
_RE_COUNT = re.compile(rf"\b(?:i hear|there are|i heard)\s+({_NUM}|\d+)\s+sounds?\b")
_RE_FULL = re.compile(rf"\bsound\s+(\d+)\s*:\s*({_CLASSW})\s+(low|high)\s+(soft|loud)\b")
_RE_CLASS = re.compile(rf"\bsound\s+(\d+)\s+is\s+(?:an?\s+)?({_CLASSW})\b")
_RE_ATTR = re.compile(r"\bsound\s+(\d+)\s+is\s+(low|high|soft|loud)\b")


def _count_value(s: str) -> int:
    return COUNT_WORDS.index(s) if s in COUNT_WORDS else int(s)


def parse_claims(text: str) -> list[Claim]:
    claims: list[Claim] = []
    for step, line in enumerate(text.split("\n")):
        line = line.strip().lower()
        for m in _RE_COUNT.finditer(line):
            claims.append(Claim(step=step, kind="count", sound=-1, value=str(_count_value(m.group(1)))))
        for m in _RE_FULL.finditer(line):
            k = int(m.group(1)) - 1
            claims.append(Claim(step=step, kind="class", sound=k, value=_WORD_CLASS[m.group(2)]))
            claims.append(Claim(step=step, kind="pitch", sound=k, value=m.group(3)))
            claims.append(Claim(step=step, kind="loudness", sound=k, value=m.group(4)))
        for m in _RE_CLASS.finditer(line):
            claims.append(Claim(step=step, kind="class", sound=int(m.group(1)) - 1, value=_WORD_CLASS[m.group(2)]))
        for m in _RE_ATTR.finditer(line):
            kind = "pitch" if m.group(2) in ("low", "high") else "loudness"
            claims.append(Claim(step=step, kind=kind, sound=int(m.group(1)) - 1, value=m.group(2)))
    return claims


def check_claims(claims: list[Claim], scene: dict) -> list[tuple[Claim, bool]]:
    """Each claim with whether the scene's ground truth supports it.

    A claim about a sound that does not exist (index beyond the scene) is wrong."""
    ev = scene["events"]
    out = []
    for c in claims:
        if c.kind == "count":
            ok = int(c.value) == len(ev)
        elif not 0 <= c.sound < len(ev):
            ok = False
        else:
            key = {"class": "cls", "pitch": "pitch_level", "loudness": "loudness_level"}[c.kind]
            ok = ev[c.sound][key] == c.value
        out.append((c, ok))
    return out
