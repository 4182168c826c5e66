"""GRPO's pieces (phase 2 of :mod:`finetuning`): sampling groups of completions, their
log-probs with the prompt's audio passed through, group advantages, the clipped loss with a KL
penalty to the reference, and one update.

**Why not TRL's GRPOTrainer.**  trl 1.16's ``GRPOTrainer`` cannot carry audio through the
policy-gradient forward: its rollouts tokenise prompts with ``processor.apply_chat_template``
and only collect images from the messages (``_tokenize_prompts``), and the log-prob forward of
the policy and the reference (``_get_per_token_logps_and_entropies``, called from
``_generate_and_score_completions``) takes only image keyword arguments (``pixel_values``,
``image_grid_thw``, ...), building them with ``processor(images=...)`` only when the prompts had
images.  ``input_features`` and ``feature_attention_mask`` never reach that forward, so the loss
would be computed on a model that hears nothing (Qwen2-Audio embeds the ``<|AUDIO|>``
placeholders as plain tokens when no features are given: no error, silently wrong).  The loop
here (the GRPO phase of :func:`auralens.finetuning.recipe.finetune`) is built on ``model.generate``
and ``model(**batch)`` and passes every processor output through.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from auralens.finetuning.config import LOSS_TYPES
from auralens.interp.errors import ConfigError

__all__ = [
    "GRPOBatch",
    "GRPOUpdateConfig",
    "completion_logprobs",
    "completion_mask",
    "eos_token_ids",
    "group_advantages",
    "grpo_loss",
    "grpo_update",
    "repeat_batch",
    "sample_completions",
]

_ADV_EPS = 1e-4


def group_advantages(rewards, group_size: int):
    """``(r − mean_group) / (std_group + 1e-4)`` with the unbiased std, groups of
    ``group_size`` consecutive completions.  ``rewards``: [groups * group_size]."""
    import torch

    r = torch.as_tensor(rewards, dtype=torch.float32)
    if r.ndim != 1 or group_size < 2 or r.numel() % group_size:
        raise ConfigError(
            f"group_advantages: expected a 1-D tensor of groups of {group_size} (>= 2) rewards, found shape {tuple(r.shape)}"
        )
    g = r.view(-1, group_size)
    return ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + _ADV_EPS)).view(-1)


def repeat_batch(batch: Mapping[str, Any], times: int) -> dict[str, Any]:
    """Every per-row tensor of a processor batch repeated ``times`` times, row by row."""
    n = batch["input_ids"].shape[0]
    return {k: v.repeat_interleave(times, dim=0) if hasattr(v, "shape") and v.ndim and v.shape[0] == n else v
            for k, v in batch.items()}


def eos_token_ids(model, tokenizer) -> set[int]:
    """The token ids that end a completion: the model's generation-config end-of-sequence id(s)
    and the tokenizer's ``eos_token_id``."""
    ids = model.generation_config.eos_token_id
    ids = ids if isinstance(ids, list) else [ids]
    out = {int(i) for i in ids if i is not None}
    if tokenizer.eos_token_id is not None:
        out.add(int(tokenizer.eos_token_id))
    return out


def completion_mask(ids, eos_ids: set[int]):
    """1 up to and including each row's first end-of-turn token, 0 after."""
    import torch

    is_eos = torch.zeros_like(ids, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= ids == e
    after = (is_eos.cumsum(1) - is_eos.long()) > 0  # strictly after the first eos
    return (~after).long()


def sample_completions(model, tokenizer, batch, *, group_size: int, temperature: float, max_new_tokens: int,
                       generate_kwargs: Mapping[str, Any] | None = None, suppress_ids: Sequence[int] = ()):
    """Sample ``group_size`` completions per prompt; returns (repeated batch, completion ids
    [rows, new], completion mask [rows, new]), rows grouped by prompt.

    ``suppress_ids``: tokens never sampled — the audio placeholder: a generated ``<|AUDIO|>``
    would make the log-prob forward expect audio features that do not exist."""
    import torch

    rep = repeat_batch(batch, group_size)
    extra = {"suppress_tokens": list(suppress_ids)} if suppress_ids else {}
    with torch.no_grad():
        out = model.generate(
            **rep, do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0,
            max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **extra, **dict(generate_kwargs or {}),
        )
    ids = out[:, rep["input_ids"].shape[1]:]
    return rep, ids, completion_mask(ids, eos_token_ids(model, tokenizer))


def completion_logprobs(model, batch: Mapping[str, Any], ids, mask, *, temperature: float = 1.0,
                        suppress_ids: Sequence[int] = (), loss_mask=None):
    """Log-probability of each completion token under ``model`` (logits / temperature, the
    ``suppress_ids`` removed as in sampling), with the prompt's audio features passed through:
    [rows, new] (0 where ``loss_mask``, default ``mask``, is 0: tokens the policy did not choose,
    e.g. forced PAUSE tokens, whose log-prob may be -inf).  ``mask`` is what the sequence holds."""
    import torch

    prompt = batch["input_ids"]
    input_ids = torch.cat([prompt, ids], dim=1)
    attn = torch.cat([batch["attention_mask"], mask.to(batch["attention_mask"].dtype)], dim=1)
    position_ids = (attn.long().cumsum(-1) - 1).clamp(min=0)  # as generate() numbers left-padded rows
    extra = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    logits = model(input_ids=input_ids, attention_mask=attn, position_ids=position_ids, **extra).logits
    P = prompt.shape[1]
    logits = logits[:, P - 1 : -1].float() / temperature
    if suppress_ids:
        logits[..., list(suppress_ids)] = float("-inf")
    logp = torch.log_softmax(logits, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    keep = mask if loss_mask is None else loss_mask
    return logp.masked_fill(keep == 0, 0.0)


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, *, kl_coef: float, clip_eps: float, loss_type: str = "dapo"):
    """GRPO's objective as a loss: per token ``−min(ρA, clip(ρ)A) + β·KL_k3``, aggregated over the
    completion tokens of the whole batch (``"dapo"``, TRL's default) or over each completion's
    tokens and then over completions (``"grpo"``, the original, which has a length bias: the
    tokens a right and a wrong completion share get a net push ``Σ A_i / len_i`` ≠ 0).
    Returns (loss, stats)."""
    import torch

    m = mask.float()
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    pg = -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    d = ref_logp - logp
    kl = torch.expm1(d) - d  # = e^d - d - 1, without cancellation for small d
    per_token = (pg + kl_coef * kl) * m
    if loss_type == "dapo":
        loss = per_token.sum() / m.sum().clamp(min=1)
    elif loss_type == "grpo":
        loss = (per_token.sum(1) / m.sum(1).clamp(min=1)).mean()
    else:
        raise ConfigError(f"loss_type: expected one of {list(LOSS_TYPES)}, found {loss_type!r}")
    mean_kl = float(((kl.detach() * m).sum(1) / m.sum(1).clamp(min=1)).mean())
    return loss, {"kl": mean_kl, "clip_frac": float((((ratio.detach() - 1).abs() > clip_eps).float() * m).sum() / m.sum().clamp(min=1))}


@dataclass(frozen=True, kw_only=True)
class GRPOUpdateConfig:
    """The knobs of :func:`grpo_update`.

    Attributes:
        kl_coef: β of the KL penalty to the reference.  clip_eps: ε of the clipped ratio.
        temperature: the sampling temperature (log-probs use logits / temperature).
        iterations: optimiser steps on one sampled batch.  max_grad_norm: gradient-norm clip.
        loss_type: ``"dapo"`` or ``"grpo"`` (see :func:`grpo_loss`).
        suppress_ids: tokens removed from the distribution as in sampling (the audio
            placeholder; HyPeR's PAUSE token).
    """

    kl_coef: float
    clip_eps: float = 0.2
    temperature: float = 1.0
    iterations: int = 1
    max_grad_norm: float = 1.0
    loss_type: str = "dapo"
    suppress_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name, positive in (("kl_coef", False), ("clip_eps", False), ("temperature", True), ("max_grad_norm", True)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (positive and v == 0):
                raise ConfigError(f"GRPOUpdateConfig.{name}: expected a finite number {'> 0' if positive else '>= 0'}, "
                                  f"found {v!r}")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise ConfigError(f"GRPOUpdateConfig.iterations: expected an integer >= 1, found {self.iterations!r}")
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"GRPOUpdateConfig.loss_type: expected one of {list(LOSS_TYPES)}, found {self.loss_type!r}")
        ids = tuple(self.suppress_ids)
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            raise ConfigError(f"GRPOUpdateConfig.suppress_ids: expected token ids (integers >= 0), found {self.suppress_ids!r}")
        object.__setattr__(self, "suppress_ids", ids)


@dataclass(frozen=True, kw_only=True)
class GRPOBatch:
    """One sampled batch for :func:`grpo_update`.

    Attributes:
        prompts: the processor batch, one row per completion (:func:`repeat_batch`).
        ids, mask: the completions [rows, new] and what each row holds (:func:`sample_completions`).
        advantages: one per row (:func:`group_advantages`).
        loss_mask: the tokens that are the policy's actions (default ``mask``; a forced PAUSE is
            in ``mask``, not here).
    """

    prompts: Mapping[str, Any]
    ids: Any
    mask: Any
    advantages: Any
    loss_mask: Any = None

    def __post_init__(self) -> None:
        rows = self.prompts["input_ids"].shape[0]
        shapes = {"ids": tuple(self.ids.shape), "mask": tuple(self.mask.shape)}
        if self.loss_mask is not None:
            shapes["loss_mask"] = tuple(self.loss_mask.shape)
        if len(set(shapes.values())) != 1 or shapes["ids"][0] != rows:
            raise ConfigError(f"GRPOBatch: expected ids, mask and loss_mask of one shape [{rows}, new] (the prompts' "
                              f"rows), found {shapes}")
        if tuple(self.advantages.shape) != (rows,):
            raise ConfigError(f"GRPOBatch.advantages: expected shape ({rows},), found {tuple(self.advantages.shape)}")

    @property
    def action_mask(self):
        """``loss_mask``, or ``mask`` where none was given."""
        return self.mask if self.loss_mask is None else self.loss_mask


def grpo_update(policy, ref, opt, batch: GRPOBatch, cfg: GRPOUpdateConfig) -> dict[str, float]:
    """``cfg.iterations`` optimiser steps of GRPO on one sampled ``batch``: the log-probs of its
    completions under ``ref`` (once) and ``policy``, :func:`grpo_loss` over its action tokens."""
    import torch

    lmask = batch.action_mask
    with torch.no_grad():
        ref_logp = completion_logprobs(ref, batch.prompts, batch.ids, batch.mask, temperature=cfg.temperature,
                                       suppress_ids=cfg.suppress_ids, loss_mask=lmask)
        old_logp = None
    stats: dict[str, float] = {}
    policy.train()
    for _ in range(cfg.iterations):
        logp = completion_logprobs(policy, batch.prompts, batch.ids, batch.mask, temperature=cfg.temperature,
                                   suppress_ids=cfg.suppress_ids, loss_mask=lmask)
        if old_logp is None:
            old_logp = logp.detach()
        loss, stats = grpo_loss(logp, old_logp, ref_logp, batch.advantages.to(logp.device), lmask,
                                kl_coef=cfg.kl_coef, clip_eps=cfg.clip_eps, loss_type=cfg.loss_type)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
        opt.step()
        stats["loss"] = float(loss.detach())
    policy.eval()
    return stats
