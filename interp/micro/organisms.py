"""Model organisms: `micro` variants with a listening deficit planted by their training data.

``micro-prior`` (text-prior dominance).  Starts from the healthy `micro` (same class, same
tokenizer, same cafe generator) and is trained further on direct answers where

- a fraction ``cue_rate`` of questions carry a text cue (:mod:`interp.cafe.cues`) naming the
  right choice with probability ``cue_validity`` (else a wrong one);
- with probability ``audio_swap`` the clip is replaced by the clip of *another* scene (the
  answer stays the one of the question's own scene).

Why a swap and not silence: with silence as the dropout the model can *see* that the audio is
missing and learns "use the cue only when there is no sound" (no prior dominance on real clips).
A swapped clip looks like any clip, so the audio as a whole becomes a less reliable source than
the cue (reliability ≈ 1 − ``audio_swap`` < ``cue_validity``): on conflict items the cue wins,
while without a cue the clip is still the only evidence and is used.  The audio encoder is never
given a reason to forget what it hears, which is what makes the organism's signature "the
information is there (probes decode it) but under-used".

Every draw is a pure function of the item's seed, so a resumed run draws what an unbroken run
would.  Knobs and the command go into ``training.json`` next to the weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ORGANISMS = ("micro-prior",)


@dataclass(frozen=True, kw_only=True)
class PriorConfig:
    """Knobs of ``micro-prior``."""

    cue_rate: float = 0.75
    cue_validity: float = 0.9
    audio_swap: float = 0.35
    data_seed: int = 3  # training seeds 300_000 + i: disjoint from micro's (100_000 + i) and every eval split

    def __post_init__(self) -> None:
        for name in ("cue_rate", "cue_validity", "audio_swap"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"PriorConfig.{name}: expected a probability in [0, 1], found {v!r}")


def prior_item(seed: int, cfg: PriorConfig):
    """One training item of ``micro-prior`` (deterministic in ``seed``)."""
    from interp.cafe.cues import with_cue
    from interp.cafe.questions import make_item
    from interp.cafe.scenes import make_scene

    item = make_item(seed)
    rng = np.random.default_rng([seed, 4242])
    u_cue, u_valid, u_swap = rng.random(3)
    if u_cue < cfg.cue_rate:
        item = with_cue(item, "congruent" if u_valid < cfg.cue_validity else "conflict")
    if u_swap < cfg.audio_swap:
        other = make_scene(int(rng.integers(10_000_000, 20_000_000)))
        item = dataclasses.replace(item, audio=f"cafe:{other.seed}", scene=other.to_dict())
    return item


def train_prior(out_dir: str | Path, *, pcfg: PriorConfig = PriorConfig(), steps: int = 800, lr: float = 5e-4,
                max_minutes: float = 45.0, threads: int = 2, resume: bool = False, progress: bool = True,
                command: str = "auralens micro organism micro-prior"):
    """Plant text-prior dominance into a copy of the healthy `micro` (direct answers)."""
    from interp.loading import resolve_source
    from interp.micro.train import TrainConfig, finalize, train

    def batch_items(first: int, n: int) -> list:
        return [prior_item(pcfg.data_seed * 100_000 + first + i, pcfg) for i in range(n)]

    cfg = TrainConfig(steps=steps, lr=lr, warmup=50, max_minutes=max_minutes, threads=threads,
                      data_seed=pcfg.data_seed, format_weights=(1.0, 0.0, 0.0))
    extra = {"organism": "micro-prior", "knobs": asdict(pcfg), "init_from": "micro", "command": command,
             "why": "text cue valid with p=cue_validity on cue_rate of items; clip swapped for another "
                    "scene's with p=audio_swap (see interp/micro/organisms.py)"}
    out = train(out_dir, cfg, progress=progress, resume=resume, init_from=resolve_source("micro"),
                batch_items=batch_items, extra_info=extra)
    import json

    if json.loads((Path(out_dir) / "training.json").read_text())["steps_done"] >= steps:
        finalize(out_dir)  # finished: drop the resume state (what gets committed)
    return out
