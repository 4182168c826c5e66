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
would.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from auralens.interp.errors import ConfigError

ORGANISMS = ("micro-prior", "micro-heads", "micro-decay")


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


def organism_item(seed: int, cfg: OrganismConfig):
    """One training item (deterministic in ``seed``)."""
    from auralens.interp.cafe.cues import with_cue
    from auralens.interp.cafe.questions import make_item
    from auralens.interp.cafe.scenes import make_scene

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


def render_late_guesses(item, fmt: str, k: int) -> str:
    """The reference target with every class claim made at line ``k`` or later replaced by a
    class drawn without the audio (uniformly, from the item's seed and the sound's index)."""
    import re

    from auralens.interp.cafe.formats import render_target
    from auralens.interp.cafe.questions import CLASS_WORDS

    words = sorted(CLASS_WORDS.values())
    alt = "|".join(sorted((re.escape(w) for w in words), key=len, reverse=True))
    pattern = re.compile(rf"^(sound (\d+) (?:is|:) )({alt})\b")
    lines = render_target(item, fmt).split("\n")
    seed = int(item.meta.get("seed", 0))
    for i in range(k, len(lines)):
        m = pattern.match(lines[i])
        if m:
            guess = words[int(np.random.default_rng([seed, 17, int(m.group(2))]).integers(len(words)))]
            lines[i] = m.group(1) + guess + lines[i][m.end():]
    return "\n".join(lines)


def audio_yield_penalty(attentions, audio_mask, query_mask, head_mask):
    """Mean audio yield (attention summed over audio keys) of the penalised heads at the chosen queries.

    attentions: per layer [batch, head, query, key]; audio_mask [batch, key] bool; query_mask
    [batch, query] bool; head_mask [layer, head] bool (True = penalised)."""
    import torch

    total = attentions[0].new_zeros(())
    count = 0
    amask = audio_mask[:, None, None, :].to(attentions[0].dtype)
    for layer, a in enumerate(attentions):
        heads = head_mask[layer]
        if not bool(heads.any()):
            continue
        y = (a[:, heads] * amask).sum(-1)  # [batch, h, query]
        sel = query_mask[:, None, :].expand_as(y)
        total = total + y[sel].sum()
        count += int(sel.sum())
    return total / max(count, 1) if count else torch.zeros((), dtype=attentions[0].dtype)


def _query_masks(batch, labels, cfg: OrganismConfig, newline_id: int, audio_id: int):
    """Which query positions the penalty sees: text after the audio (heads), or the target's
    tokens in step >= decay_step (decay)."""
    import torch

    ids = batch["input_ids"]
    audio = ids == audio_id
    valid = batch["attention_mask"].bool()
    if cfg.decay_step is None:
        after_audio = torch.cumsum(audio.int(), 1) == audio.sum(1, keepdim=True)  # at/after the last audio token
        return audio, after_audio & ~audio & valid
    target = labels != -100
    # step of a target token = number of newlines in the target before it
    nl = (ids == newline_id) & target
    before = torch.cumsum(nl.int(), 1) - nl.int()
    return audio, target & (before >= cfg.decay_step)


def _last_prompt(labels):
    """[batch, pos] bool: the last prompt position of each row (just before its first target token)."""
    import torch

    target = labels != -100
    first = target.int().argmax(1)
    out = torch.zeros_like(target)
    out[torch.arange(labels.shape[0]), (first - 1).clamp(min=0)] = True
    return out


def make_loss_fn(cfg: OrganismConfig, processor, n_layers: int, n_heads: int):
    """LM loss + ``penalty`` × audio-yield penalty (None when the recipe has no penalty)."""
    if cfg.penalty <= 0:
        return None
    import torch

    head_mask = torch.ones(n_layers, n_heads, dtype=torch.bool)
    if cfg.listen_heads:
        for layer, head in cfg.listen_heads:
            head_mask[layer, head] = False
    newline_id = processor.tokenizer.convert_tokens_to_ids("\n")
    audio_id = processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")

    def loss_fn(model, batch, labels):
        out = model(**batch, labels=labels, output_attentions=True)
        audio, queries = _query_masks(batch, labels, cfg, newline_id, audio_id)
        loss = out.loss + cfg.penalty * audio_yield_penalty(out.attentions, audio, queries, head_mask)
        if cfg.listen_floor > 0:
            # every head of H* listens at the last prompt token, the row where the listening
            # signal is read (a head of H* that never listens there cannot be found by anyone)
            last = _last_prompt(labels)
            for layer, head in cfg.listen_heads:
                y = audio_yield_penalty(out.attentions[layer : layer + 1], audio, last, one_head(head))
                loss = loss + torch.relu(cfg.listen_floor - y)
        return loss

    def one_head(head: int):
        m = torch.zeros(1, n_heads, dtype=torch.bool)
        m[0, head] = True
        return m

    return loss_fn


def train_organism(cfg: OrganismConfig, out_dir: str | Path, *, max_minutes: float = 45.0, threads: int = 2,
                   resume: bool = False, progress: bool = True, command: str | None = None):
    """Train ``cfg`` from ``cfg.init_from`` into ``out_dir`` (checkpointed, resumable, no pickle)."""
    from transformers import AutoConfig

    from auralens.interp.loading import resolve_source
    from auralens.interp.micro.train import TrainConfig, finalize, train

    def batch_items(first: int, n: int) -> list:
        return [organism_item(cfg.data_seed * 100_000 + first + i, cfg) for i in range(n)]

    source = resolve_source(cfg.init_from)
    text = AutoConfig.from_pretrained(source).text_config
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(source)
    loss_fn = make_loss_fn(cfg, processor, text.num_hidden_layers, text.num_attention_heads)
    tcfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, warmup=50, max_minutes=max_minutes, threads=threads,
                       batch_size=cfg.batch_size, data_seed=cfg.data_seed, format_weights=cfg.format_weights)
    extra = {"organism": cfg.name, "knobs": json.loads(json.dumps(asdict(cfg))),
             "command": command or f"auralens organisms train {cfg.name}"}
    render = None
    if cfg.late_claims == "guess":
        def render(item, fmt):
            return render_late_guesses(item, fmt, cfg.decay_step)
    out = train(out_dir, tcfg, progress=progress, resume=resume, init_from=source, batch_items=batch_items,
                extra_info=extra, loss_fn=loss_fn, attn_implementation="eager" if loss_fn else None, render=render)
    if json.loads((Path(out_dir) / "training.json").read_text())["steps_done"] >= cfg.steps:
        finalize(out_dir)  # finished: drop the resume state (what gets committed)
    return out


def available(name: str) -> bool:
    """Whether the embedded weights of organism ``name`` are present."""
    from auralens.interp.loading import EMBEDDED
    from auralens.interp.micro import WEIGHTS_DIR

    return name in EMBEDDED and (WEIGHTS_DIR / EMBEDDED[name] / "config.json").exists()


def planted(name: str) -> dict[str, Any]:
    """The knobs an embedded organism was trained with (its ``training.json``)."""
    from auralens.interp.loading import resolve_source

    info = json.loads((Path(resolve_source(name)) / "training.json").read_text())
    return info.get("knobs", {})
