"""The HyPeR-style arm: Stage I perception SFT, Stage II GRPO with PAUSE tokens and a weighted
perceptual-consistency reward — a peer of the MPAR²-style recipe (same entry point,
:func:`auralens.finetuning.recipe.finetune` with ``FinetuneConfig(recipe="hyper")``).

HyPeR is Wang, Niu, Xu, Wei, "Listen, Pause, and Reason: Toward Perception-Grounded Hybrid
Reasoning for Audio Understanding" (arXiv 2604.14806, ACL 2026; code github.com/JOY-SWang/HyPeR,
read, not copied).  What this arm takes from their design:

- **Stage I — explicit perception (SFT).**  They supervise structured perceptual traces
  (planning, caption, reasoning, summary, reflection).  On cafe the analogous trace is the
  ``structured`` target (perception claims per sound → reasoning → review), so Stage I is the
  same SFT phase as the MPAR² arm (:func:`auralens.finetuning.sft.run_sft`): the two arms differ in
  Stage II only, which makes their comparison a comparison of the RL designs.
- **Stage II — latent reasoning (GRPO with PAUSE).**  A ``<pause>`` token is added to the
  vocabulary after Stage I (embedding initialised to the mean of the existing ones, transformers'
  ``resize_token_embeddings``); while sampling, the decoding rule of :mod:`auralens.interp.pause` emits it
  where the next-token entropy reaches a threshold, at most ``max_pauses`` per answer (their
  logits processor: entropy trigger, per-answer cap).  Here the threshold is the
  ``pause_quantile`` quantile (default 0.98, chosen on a dev split) of the next-token entropies of the Stage-I model's own sampled
  answers on training prompts (their fixed ``ent_pause`` is tuned for a 7B model's entropies; a
  quantile transfers across models).  A forced pause is not an action of the policy: it is left
  out of the policy-gradient and KL terms (its log-prob under the unbiased policy would be
  meaningless) but stays in the sequence, so the tokens after it learn to use the extra forward.
  The folder keeps ``pause.json``, so every later ``generate`` through
  :attr:`auralens.interp.loading.LoadedModel.generate_kwargs` pauses the same way (inference cost: the
  pauses lengthen each answer; ``compare`` counts them).
- **Reward: a weighted sum, not a geometric mean** (their ``accuracy_reward`` + ``format_reward``,
  which TRL's GRPOTrainer sums): ``0.7 · answer + 0.2 · perceptual consistency + 0.1 · length``
  plus a binary format reward.  Their consistency term checks that the conclusion of the
  rationale agrees with the final answer, with a 0.2 base score when the rationale states none;
  the paper describes it as aligning "reasoning rationales with raw audio".  On cafe the audio's
  content is known, so the term here checks the rationale against the audio itself: the share of
  the reasoning and review claims that the scene supports (0.2 when they make none, their base
  score).  Length: their window reward (0 below Lmin/2, ramp to Lmin, 1 up to Lmax, ramp down to
  1.5·Lmax), with the window scaled to cafe: ``[0.8, 1.5] ×`` the word count of the item's
  reference trace (their 250–600 tokens are for long free-form traces); halved when the answer is
  wrong, as theirs.  Format: 1 when the seven markers each occur once in the canonical order,
  else 0 (theirs is all-or-nothing too).

Not taken: their DeepConf "lowest group confidence" controller, the abort rule, the ``<THINK>``
budget after a pause, the PAQA data (speech/speaker decoupling has no counterpart in cafe).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from auralens.finetuning.grpo import completion_mask, eos_token_ids
from auralens.finetuning.rewards import answer_reward, format_reward, section_claims, split_sections
from auralens.interp.cafe.formats import check_claims, render_target
from auralens.interp.errors import ConfigError
from auralens.interp.pause import PAUSE_TOKEN, next_token_entropy

__all__ = [
    "HYPER_REWARD_NAMES",
    "HYPER_WEIGHTS",
    "add_pause_token",
    "calibrate_threshold",
    "hyper_rewards",
    "length_reward",
    "perceptual_consistency",
]

#: the weights of their accuracy reward's terms (answer, consistency, length)
HYPER_WEIGHTS: dict[str, float] = {"answer": 0.7, "perceptual_consistency": 0.2, "length": 0.1}
HYPER_REWARD_NAMES: tuple[str, ...] = ("answer", "perceptual_consistency", "length", "format")
_NO_RATIONALE = 0.2  # their base score when the rationale states nothing checkable


def perceptual_consistency(text: str, scene: Mapping[str, Any]) -> float:
    """Share of the reasoning and review claims that the scene supports; 0.2 when they make none."""
    secs = split_sections(text)
    claims = [c for name in ("reasoning", "review") for c in section_claims(text, secs[name])]
    if not claims:
        return _NO_RATIONALE
    return sum(ok for _, ok in check_claims(claims, dict(scene))) / len(claims)


def length_reward(n_words: int, reference_words: int) -> float:
    """Their window reward with ``Lmin, Lmax = 0.8, 1.5 × reference_words``."""
    lo, hi = 0.8 * reference_words, 1.5 * reference_words
    L = float(n_words)
    if L <= lo / 2:
        return 0.0
    if L <= lo:
        return (L - lo / 2) / (lo / 2)
    if L <= hi:
        return 1.0
    if L <= 1.5 * hi:
        return (1.5 * hi - L) / (0.5 * hi)
    return 0.0


def _words(text: str) -> int:
    return len(text.split())


def binary_format(text: str) -> float:
    """1 when :func:`auralens.finetuning.rewards.format_reward` is 1 (every marker once, in order), else 0."""
    return 1.0 if format_reward(text) == 1.0 else 0.0


def hyper_rewards(text: str, item) -> dict[str, float]:
    """The HyPeR-style rewards of one trace and their weighted sum under ``"total"`` (in [0, 2])."""
    if not item.scene:
        raise ConfigError(f"item {item.item_id!r}: expected a cafe scene (ground truth) for the HyPeR rewards, found none")
    acc = answer_reward(text, item)
    ref_words = _words(render_target(item, "structured"))
    length = length_reward(_words(text), ref_words)
    r = {"answer": acc, "perceptual_consistency": perceptual_consistency(text, item.scene),
         "length": length if acc > 0 else 0.5 * length, "format": binary_format(text)}
    r["total"] = sum(HYPER_WEIGHTS[k] * r[k] for k in HYPER_WEIGHTS) + r["format"]
    return r


def add_pause_token(lm) -> int:
    """Add ``<pause>`` as a special token and grow the embeddings (mean-initialised); returns its id.
    Idempotent (a model that has it keeps it)."""
    tok = lm.tokenizer
    if PAUSE_TOKEN in tok.get_vocab():
        return int(tok.convert_tokens_to_ids(PAUSE_TOKEN))
    tok.add_tokens([PAUSE_TOKEN], special_tokens=True)
    lm.model.resize_token_embeddings(len(tok), mean_resizing=True)
    return int(tok.convert_tokens_to_ids(PAUSE_TOKEN))


def calibrate_threshold(model, tokenizer, batch, *, pause_id: int, quantile: float, temperature: float, max_new_tokens: int,
                        generate_kwargs: Mapping[str, Any] | None = None, suppress_ids: Sequence[int] = ()) -> float:
    """The ``quantile`` of the next-token entropies (nats, the pause left out) over the completion
    tokens of answers sampled from ``model`` for ``batch`` (the decision points of the rule)."""
    import torch

    banned = [*suppress_ids, pause_id]
    with torch.no_grad():
        out = model.generate(**batch, do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0,
                             max_new_tokens=max_new_tokens, output_logits=True, return_dict_in_generate=True,
                             pad_token_id=tokenizer.pad_token_id, suppress_tokens=banned, **dict(generate_kwargs or {}))
    ids = out.sequences[:, batch["input_ids"].shape[1]:]
    mask = completion_mask(ids, eos_token_ids(model, tokenizer)).bool()
    ents = []
    for t, logits in enumerate(out.logits):  # raw logits; the banned ids left out as the rule leaves them out
        ents.append(next_token_entropy(logits, banned)[mask[:, t]])
    allv = torch.cat(ents)
    return float(torch.quantile(allv, quantile)) if allv.numel() else 0.0
