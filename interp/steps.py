"""Reasoning-step segmentation of generated text, down to the token.

A new step starts after a newline (runs of newlines count once), at a numbered step
("1.", "2)", "Step 3"), and at the tags of the structured perception → reasoning → review format.
Each generated token is mapped to the step its first visible character belongs to, so a token's
step never depends on how the tokenizer merged whitespace.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_TAGS = ("<perception>", "</perception>", "<reasoning>", "</reasoning>", "<review>", "</review>", "<think>", "</think>", "<answer>", "</answer>")


@dataclass(frozen=True, kw_only=True)
class StepConfig:
    newlines: bool = True
    numbered: bool = True
    tags: tuple[str, ...] = DEFAULT_TAGS
    sentences: bool = False  # also split after ". " (for models that reason in one paragraph)

    def __post_init__(self) -> None:
        if not (self.newlines or self.numbered or self.tags or self.sentences):
            raise ValueError("StepConfig: at least one way of splitting steps must be enabled")


def step_boundaries(text: str, cfg: StepConfig = StepConfig()) -> list[int]:
    """Character offsets where a new step starts (always including 0)."""
    cuts = {0}
    if cfg.newlines:
        cuts.update(m.end() for m in re.finditer(r"\n+", text))
    if cfg.numbered:
        cuts.update(m.start(1) for m in re.finditer(r"(?im)(?:^|\s)((?:step\s*\d+\s*[:.)]?)|(?:\d+[.)]\s))", text))
    for tag in cfg.tags:
        for m in re.finditer(re.escape(tag), text):
            cuts.add(m.start())
            cuts.add(m.end())
    if cfg.sentences:
        cuts.update(m.end() for m in re.finditer(r"[.!?]\s+", text))
    return sorted(c for c in cuts if c < len(text) or c == 0)


def char_steps(text: str, cfg: StepConfig = StepConfig()) -> np.ndarray:
    """Step id of every character; steps with no visible character are dropped."""
    cuts = step_boundaries(text, cfg) + [len(text)]
    raw = np.zeros(len(text), dtype=np.int64)
    for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
        raw[a:b] = i
    visible = np.array([not c.isspace() for c in text], dtype=bool)
    tag_chars = np.zeros(len(text), dtype=bool)
    for tag in cfg.tags:
        for m in re.finditer(re.escape(tag), text):
            tag_chars[m.start() : m.end()] = True
    content = visible & ~tag_chars
    # renumber so that only steps holding visible content (not just a tag) count
    kept = sorted(set(raw[content].tolist()))
    remap = {old: new for new, old in enumerate(kept)}
    out = np.full(len(text), -1, dtype=np.int64)
    last = 0
    for i in range(len(text)):
        r = raw[i]
        if r in remap:
            last = remap[r]
            out[i] = last
        else:
            out[i] = last
    return out


def token_pieces(token_ids: Sequence[int], tokenizer) -> list[str]:
    """The text each token adds to the running decode (robust to merges and byte tokens)."""
    pieces, prev = [], ""
    ids = list(token_ids)
    for i in range(len(ids)):
        cur = tokenizer.decode(ids[: i + 1], skip_special_tokens=False)
        pieces.append(cur[len(prev) :] if cur.startswith(prev) else cur)
        prev = cur
    return pieces


def token_steps(token_ids: Sequence[int], tokenizer, cfg: StepConfig = StepConfig()) -> tuple[np.ndarray, str]:
    """Map every generated token to its reasoning step.  Returns (step ids [n_tokens], text)."""
    pieces = token_pieces(token_ids, tokenizer)
    text = "".join(pieces)
    cs = char_steps(text, cfg)
    out = np.zeros(len(pieces), dtype=np.int64)
    pos = 0
    last = 0
    for i, p in enumerate(pieces):
        idx = [pos + j for j, c in enumerate(p) if not c.isspace()]
        if idx:
            last = int(cs[idx[0]])
        elif p and pos < len(cs):
            last = int(cs[pos]) if not any(c == "\n" for c in p) else last
        out[i] = last
        pos += len(p)
    return out, text
