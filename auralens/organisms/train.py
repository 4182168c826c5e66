"""Planting an organism's deficit: :func:`train_organism` trains one recipe
(:class:`~auralens.interp.micro.organisms.OrganismConfig`, :data:`~auralens.interp.micro.organisms.RECIPES`)
from its ``init_from`` model, with the recipe's audio-yield penalty (:func:`make_loss_fn`) and,
for ``late_claims="guess"``, targets whose late class claims are guesses (:func:`render_late_guesses`).
How each knob plants its deficit: :mod:`auralens.interp.micro.organisms`.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np

from auralens.interp.cafe.formats import render_target
from auralens.interp.cafe.questions import CLASS_WORDS
from auralens.interp.loading import resolve_source
from auralens.interp.micro.organisms import OrganismConfig, organism_item
from auralens.interp.micro.train import TrainConfig, finalize, train

__all__ = ["audio_yield_deviation", "audio_yield_penalty", "last_prompt_mask", "make_loss_fn", "query_masks", "render_late_guesses",
           "train_organism"]


def render_late_guesses(item, fmt: str, k: int) -> str:
    """The reference target with every class claim made at line ``k`` or later replaced by a
    class drawn without the audio (uniformly, from the item's seed and the sound's index)."""
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


def _chosen_yields(attentions, audio_mask, query_mask, head_mask):
    """The audio yield (attention summed over audio keys) of every chosen head at every chosen
    query, as one flat tensor (empty when nothing is chosen).  Arguments as :func:`audio_yield_penalty`."""
    amask = audio_mask[:, None, None, :].to(attentions[0].dtype)
    parts = []
    for layer, a in enumerate(attentions):
        heads = head_mask[layer]
        if not bool(heads.any()):
            continue
        y = (a[:, heads] * amask).sum(-1)  # [batch, h, query]
        parts.append(y[query_mask[:, None, :].expand_as(y)])
    return parts


def audio_yield_penalty(attentions, audio_mask, query_mask, head_mask):
    """Mean audio yield (attention summed over audio keys) of the penalised heads at the chosen queries.

    attentions: per layer [batch, head, query, key]; audio_mask [batch, key] bool; query_mask
    [batch, query] bool; head_mask [layer, head] bool (True = penalised)."""
    return _mean_of(_chosen_yields(attentions, audio_mask, query_mask, head_mask), attentions, lambda y: y)


def audio_yield_deviation(attentions, audio_mask, query_mask, head_mask, target: float):
    """Mean |audio yield − ``target``| of the chosen heads over the chosen queries (each head and
    query its own term, so every item's yield is held at the target, not only the mean).
    Arguments as :func:`audio_yield_penalty`."""
    return _mean_of(_chosen_yields(attentions, audio_mask, query_mask, head_mask), attentions,
                    lambda y: (y - target).abs())


def _mean_of(parts, attentions, term):
    """Mean of ``term(y)`` over the chosen yields; 0 when nothing is chosen."""
    import torch

    count = sum(int(p.numel()) for p in parts)
    if not count:
        return torch.zeros((), dtype=attentions[0].dtype)
    return sum((term(p).sum() for p in parts), attentions[0].new_zeros(())) / count


def query_masks(batch, labels, cfg: OrganismConfig, newline_id: int, audio_id: int):
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


def last_prompt_mask(labels):
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
        audio, queries = query_masks(batch, labels, cfg, newline_id, audio_id)
        if cfg.other_yield_target is None:
            loss = out.loss + cfg.penalty * audio_yield_penalty(out.attentions, audio, queries, head_mask)
        else:  # the other heads listen, at one fixed level everywhere (micro-heads-dense)
            loss = out.loss + cfg.penalty * audio_yield_deviation(out.attentions, audio, queries, head_mask,
                                                                  cfg.other_yield_target)
        if cfg.listen_floor > 0:
            # every head of H* listens at the last prompt token, the row where the listening
            # signal is read (a head of H* that never listens there cannot be found by anyone)
            last = last_prompt_mask(labels)
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
    from transformers import AutoConfig, AutoProcessor

    def batch_items(first: int, n: int) -> list:
        return [organism_item(cfg.data_seed * 100_000 + first + i, cfg) for i in range(n)]

    source = resolve_source(cfg.init_from)
    text = AutoConfig.from_pretrained(source).text_config
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
