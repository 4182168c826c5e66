"""Model organisms: `micro` variants with a listening deficit planted by their training data.

Every organism is the healthy `micro` (same ``Qwen2AudioForConditionalGeneration`` class, same
tokenizer, same cafe generator) trained further with one :class:`OrganismConfig`; they differ
only by its knobs, which are written to ``training.json`` beside the weights with the command.

- ``micro-prior`` — text-prior dominance.  A fraction ``cue_rate`` of questions carry a text cue
  (:mod:`auralens.interp.cafe.cues`) naming the right choice with probability ``cue_validity`` (else a
  wrong one), and with probability ``audio_swap`` the clip is replaced by the clip of *another*
  scene (the answer stays that of the question's own scene).  Why a swap and not silence: with
  silence as the dropout the model can *see* that the audio is missing and learns "use the cue
  only when there is no sound"; a swapped clip looks like any clip, so the audio as a whole
  becomes a less reliable source (≈ 1 − ``audio_swap``) than the cue, and on conflict items the
  cue wins, while without a cue the clip is still the only evidence and is used.  The encoder is
  given no reason to forget what it hears: the information is there, but under-used.
- ``micro-heads`` — planted specialist heads.  An auxiliary loss ``penalty`` × (mean audio
  yield of every head *not* in ``listen_heads``, at every text query) teaches the other heads
  not to attend to the audio keys at all, and a hinge keeps every head of H* at a mean yield
  of at least ``listen_floor`` at the last prompt token (the row where the listening signal is
  read; without it, 2 of 5 planted heads learned to stay silent there and could not be found).  A learned penalty rather than a training-time mask:
  a mask removed at inference would leave the masked heads' never-trained attention to audio
  in place, a penalty removes it from the weights.
- ``micro-heads-dense`` (and ``-s1``, ``-s2``) — planted specialist heads *without* the crutch
  (issue 21).  In ``micro-heads`` every other head learns a yield of ~0, so "yield > 0" alone
  finds H*.  Here every head not in H* is instead held at a fixed audio yield
  ``other_yield_target`` at every text query (an L1 loss ``penalty`` × mean |yield − target|
  per head and query), independent of the item: they listen, at a constant level that tracks
  neither correctness nor the audio's content, and the listening floor cannot separate them
  from H*.  H* (5 heads, drawn by :func:`planted_set` from ``planted_seed``) keeps the
  ``listen_floor`` hinge of ``micro-heads``.  Three seeds, three planted sets, three data seeds.
- ``micro-decay`` — planted perception decay.  The same penalty on *every* head, at the query
  positions of reasoning step ``decay_step`` and later (steps = lines of the target, as
  :mod:`auralens.interp.steps` counts them), so late steps learn not to re-listen.  A penalty rather
  than audio keys hidden with probability q: it plants an onset that is exactly ``decay_step``
  in the attention view, and the model must carry what it heard earlier in its residual stream
  (or lose it), which is what the outcome view (claim accuracy by step) measures.
- ``micro`` itself (healthy, the negative control) is continued from its first training with
  cues whose validity is at chance (the cue names a uniformly drawn choice), so it has seen
  cues and learned to ignore them.

Every draw is a pure function of the item's seed, so a resumed run draws what an unbroken run
would.  This module holds the knobs (:class:`OrganismConfig`, :data:`RECIPES`) and the training
items they draw (:func:`organism_item`, also used by :mod:`auralens.finetuning`); the training
loop with its penalties is :mod:`auralens.organisms.train`, the organisms' names and weights
folders :mod:`auralens.interp.micro`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from auralens.interp.cafe.cues import with_cue
from auralens.interp.cafe.questions import make_item
from auralens.interp.cafe.scenes import make_scene
from auralens.interp.errors import ConfigError

__all__ = ["DENSE_RECIPES", "RECIPES", "OrganismConfig", "organism_item", "planted_recovery", "planted_set"]

@dataclass(frozen=True, kw_only=True)
class OrganismConfig:
    """Knobs of one organism (defaults: no deficit)."""

    name: str
    cue_rate: float = 0.0
    cue_validity: float | None = None  # None: at chance (the cue names a uniformly drawn choice)
    audio_swap: float = 0.0
    listen_heads: tuple[tuple[int, int], ...] = ()  # H*: (layer, head) allowed to attend audio
    decay_step: int | None = None  # k: from this reasoning step on, no head may listen
    penalty: float = 0.0  # weight of the audio-yield penalty
    listen_floor: float = 0.0  # H* heads: hinge loss when a head's mean audio yield is below this
    other_yield_target: float | None = None  # heads not in H*: held at this audio yield (L1) instead of ~0
    planted_seed: int | None = None  # the seed listen_heads was drawn from (planted_set), recorded
    late_claims: str = "true"  # "guess": claims from step decay_step on name a class drawn without the audio
    format_weights: tuple[float, float, float] = (0.3, 0.3, 0.4)
    data_seed: int = 3
    steps: int = 800
    lr: float = 5e-4
    batch_size: int = 32
    init_from: str = "micro"

    def __post_init__(self) -> None:
        for name in ("cue_rate", "audio_swap"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"OrganismConfig.{name}: expected a probability in [0, 1], found {v!r}")
        if self.cue_validity is not None and not 0.0 <= self.cue_validity <= 1.0:
            raise ConfigError(f"OrganismConfig.cue_validity: expected None or [0, 1], found {self.cue_validity!r}")
        if self.penalty < 0 or (self.penalty > 0) != bool(self.listen_heads or self.decay_step is not None):
            raise ConfigError("OrganismConfig: a penalty > 0 needs listen_heads or decay_step, and they need one")
        if self.late_claims not in ("true", "guess") or (self.late_claims == "guess" and self.decay_step is None):
            raise ConfigError(f"OrganismConfig.late_claims: expected 'true', or 'guess' with a decay_step, found {self.late_claims!r}")
        if self.other_yield_target is not None and (not 0.0 < self.other_yield_target < 1.0 or not self.listen_heads):
            raise ConfigError("OrganismConfig.other_yield_target: expected a yield in (0, 1) with listen_heads, "
                              f"found {self.other_yield_target!r} with listen_heads={self.listen_heads!r}")
        if self.decay_step is not None and self.decay_step < 1:
            raise ConfigError(f"OrganismConfig.decay_step: expected >= 1, found {self.decay_step}")


RECIPES: dict[str, OrganismConfig] = {
    # the healthy control: cues at chance validity, direct answers weighted up (its weak format)
    "micro": OrganismConfig(name="micro", cue_rate=0.5, cue_validity=None, format_weights=(0.5, 0.2, 0.3),
                            data_seed=4, steps=1200, lr=5e-4),
    "micro-prior": OrganismConfig(name="micro-prior", cue_rate=0.75, cue_validity=0.9, audio_swap=0.35,
                                  format_weights=(1.0, 0.0, 0.0), data_seed=3, steps=800),
    "micro-heads": OrganismConfig(name="micro-heads", listen_heads=((0, 1), (1, 3), (2, 0), (2, 2), (3, 1)),
                                  penalty=1.0, listen_floor=0.15, data_seed=5, steps=800),
    "micro-decay": OrganismConfig(name="micro-decay", decay_step=3, penalty=1.0, late_claims="guess",
                                  format_weights=(0.2, 0.8, 0.0), data_seed=6, steps=800),
}


def planted_set(seed: int, k: int = 5, layers: int = 4, heads: int = 4) -> tuple[tuple[int, int], ...]:
    """``k`` distinct (layer, head) drawn uniformly from ``seed`` (sorted)."""
    if not 1 <= k <= layers * heads:
        raise ConfigError(f"planted_set: expected 1 <= k <= {layers * heads}, found {k}")
    flat = np.random.default_rng([seed, 21]).choice(layers * heads, size=k, replace=False)
    return tuple(sorted((int(i) // heads, int(i) % heads) for i in flat))


def _dense(name: str, seed: int, data_seed: int) -> OrganismConfig:
    return OrganismConfig(name=name, listen_heads=planted_set(seed), planted_seed=seed, penalty=1.0, listen_floor=0.15,
                          other_yield_target=0.08, data_seed=data_seed, steps=200, batch_size=24)


#: the three seeds of the dense-heads organism (issue 21): name -> recipe
DENSE_RECIPES: dict[str, OrganismConfig] = {
    "micro-heads-dense": _dense("micro-heads-dense", 0, 21),
    "micro-heads-dense-s1": _dense("micro-heads-dense-s1", 1, 22),
    "micro-heads-dense-s2": _dense("micro-heads-dense-s2", 2, 23),
}
RECIPES.update(DENSE_RECIPES)


def planted_recovery(table, planted, *, floor: bool = True) -> float:
    """Share of ``planted`` heads among the top-``len(planted)`` of a heads table
    (:func:`auralens.interp.listening.heads_table` / ``heads.parquet``).  ``floor=True``: by its
    ``rank`` (with the ``listens`` floor when the table has one); ``floor=False``: by the paper's
    signal alone, the mean of the ``corr_rank`` and ``contrast_rank`` columns present (ties by
    table order), the ranking :func:`heads_table` makes without ``mean_yield``."""
    k = len(planted)
    if k < 1:
        raise ConfigError("planted_recovery: expected at least one planted head, found none")
    if floor:
        order = table.sort_values("rank", kind="stable")
    else:
        cols = [c for c in ("corr_rank", "contrast_rank") if c in table and table[c.removesuffix("_rank")].notna().any()]
        if not cols:
            raise ConfigError(f"planted_recovery: expected corr_rank or contrast_rank columns, found {list(table.columns)}")
        order = table.assign(_score=table[cols].mean(axis=1)).sort_values("_score", kind="stable")
    top = {(int(r.layer), int(r.head)) for r in order.head(k).itertuples()}
    return len(top & {tuple(map(int, h)) for h in planted}) / k


def organism_item(seed: int, cfg: OrganismConfig):
    """One training item (deterministic in ``seed``)."""
    item = make_item(seed)
    rng = np.random.default_rng([seed, 4242])
    u_cue, u_valid, u_swap = rng.random(3)
    if u_cue < cfg.cue_rate:
        if cfg.cue_validity is None:
            item = with_cue(item, "congruent" if int(rng.integers(len(item.choices))) == item.answer_index else "conflict")
        else:
            item = with_cue(item, "congruent" if u_valid < cfg.cue_validity else "conflict")
    if u_swap < cfg.audio_swap:
        other = make_scene(int(rng.integers(10_000_000, 20_000_000)))
        item = dataclasses.replace(item, audio=f"cafe:{other.seed}", scene=other.to_dict())
    return item
