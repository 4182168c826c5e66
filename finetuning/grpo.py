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
here (:func:`auralens.finetuning.recipe.finetune`) is ~100 lines around ``model.generate`` and
``model(**batch)`` and passes every processor output through.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from auralens.finetuning.config import LOSS_TYPES
from auralens.interp.errors import ConfigError

__all__ = [
    "completion_logprobs",
    "completion_mask",
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


def _eos_ids(model, tokenizer) -> set[int]:
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
    return rep, ids, completion_mask(ids, _eos_ids(model, tokenizer))


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


def grpo_update(policy, ref, opt, batch, ids, mask, advantages, *, kl_coef: float, clip_eps: float = 0.2,
                temperature: float = 1.0, iterations: int = 1, max_grad_norm: float = 1.0,
                suppress_ids: Sequence[int] = (), loss_type: str = "dapo", loss_mask=None) -> dict[str, float]:
    """``iterations`` optimiser steps of GRPO on one sampled batch (completions ``ids`` with
    ``mask`` for the rows of ``batch``, and their ``advantages``).  ``loss_mask`` (default
    ``mask``): the tokens that are the policy's actions (a forced PAUSE is in ``mask``, not here)."""
    import torch

    lmask = mask if loss_mask is None else loss_mask
    with torch.no_grad():
        ref_logp = completion_logprobs(ref, batch, ids, mask, temperature=temperature, suppress_ids=suppress_ids,
                                       loss_mask=lmask)
        old_logp = None
    stats: dict[str, float] = {}
    policy.train()
    for _ in range(iterations):
        logp = completion_logprobs(policy, batch, ids, mask, temperature=temperature, suppress_ids=suppress_ids,
                                   loss_mask=lmask)
        if old_logp is None:
            old_logp = logp.detach()
        loss, stats = grpo_loss(logp, old_logp, ref_logp, advantages.to(logp.device), lmask,
                                kl_coef=kl_coef, clip_eps=clip_eps, loss_type=loss_type)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm)
        opt.step()
        stats["loss"] = float(loss.detach())
    policy.eval()
    return stats
