"""Audio yield from a statistic an attention kernel returns (a prototype toward serving engines).

The yield recorder (:mod:`auralens.interp.attention_yield`) replaces the attention function of
every call, which a serving engine (vLLM, SGLang) does not allow: its attention backend is a fused
kernel over a paged KV cache. Two routes need only what such a kernel can return:

- :func:`yield_from_lse`: two calls of one kernel that returns its log-sum-exp, one over all the
  keys a row attends to and one over the audio keys among them; the yield of a row and head is
  ``exp(LSE_audio - LSE_all)``. Here the kernel is PyTorch's ``flex_attention``
  (``return_aux=AuxRequest(lse=True)``, the audio restriction a ``mask_mod``); FlashAttention's
  ``return_softmax_lse`` and FlashInfer's ``return_lse`` are the same statistic.
- :func:`yield_from_value_channel`: one call of any kernel (here ``scaled_dot_product_attention``)
  over values with one extra channel holding the audio indicator (1 at audio keys, 0 elsewhere);
  that output channel is the yield. The channel is padded to a multiple of 8 for the kernels'
  head-size constraints.

Both are checked against the plain softmax and :func:`~auralens.interp.attention_yield.audio_yield`
in ``tests/unit/test_kernel_stat.py`` (GQA, left padding, causal rows). The README's performance
section says what a vLLM backend would need to return and what it would cost. Not yet wired into
a recorder: the per-call path still goes through the replaceable attention function.

Written by hand: no library computes a per-head attention share over a key subset from a kernel's
statistics.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.attention.flex_attention import AuxRequest, create_block_mask, flex_attention

from auralens.interp.errors import ConfigError

__all__ = ["yield_from_lse", "yield_from_value_channel"]


def _check(query: torch.Tensor, key: torch.Tensor, audio_mask: torch.Tensor, allowed: torch.Tensor | None) -> None:
    if query.ndim != 4 or key.ndim != 4 or query.shape[0] != key.shape[0] or query.shape[1] % key.shape[1]:
        raise ConfigError(f"query [batch, head, q, d] and key [batch, kv_head, key, d] expected (head a multiple of "
                          f"kv_head), found {tuple(query.shape)} and {tuple(key.shape)}")
    if audio_mask.shape != (key.shape[0], key.shape[2]):
        raise ConfigError(f"audio_mask: expected [batch={key.shape[0]}, key={key.shape[2]}], found "
                          f"{tuple(audio_mask.shape)}")
    if allowed is not None and allowed.shape != (query.shape[0], query.shape[2], key.shape[2]):
        raise ConfigError(f"allowed: expected [batch, q={query.shape[2]}, key={key.shape[2]}] bool, found "
                          f"{tuple(allowed.shape)}")


def _allowed(query: torch.Tensor, key: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """``[batch, q, key]`` bool: the keys each row attends to (None: causal, rows at the last q keys)."""
    if allowed is not None:
        return allowed.bool()
    q, k = query.shape[2], key.shape[2]
    causal = torch.arange(k, device=key.device)[None, :] <= torch.arange(k - q, k, device=key.device)[:, None]
    return causal[None].expand(query.shape[0], q, k)


def yield_from_lse(query: torch.Tensor, key: torch.Tensor, audio_mask: torch.Tensor, *,
                   allowed: torch.Tensor | None = None, scaling: float | None = None) -> torch.Tensor:
    """``[batch, q, head]`` yields from two ``flex_attention`` log-sum-exps (all keys; audio keys).

    ``allowed``: ``[batch, q, key]`` bool, True where the row attends (None: causal). A row that
    attends to no audio key has yield 0."""
    _check(query, key, audio_mask, allowed)
    ok = _allowed(query, key, allowed)
    audio = audio_mask.bool()
    b, h, q, _ = query.shape
    k = key.shape[2]
    value = torch.zeros(b, key.shape[1], k, 1, dtype=query.dtype, device=query.device)

    def lse(mask_mod: Any) -> torch.Tensor:
        block = create_block_mask(mask_mod, b, None, q, k, device=str(query.device))
        _, aux = flex_attention(query, key, value, block_mask=block, scale=scaling, enable_gqa=h != key.shape[1],
                                return_aux=AuxRequest(lse=True))
        return aux.lse.float()  # [batch, head, q]

    lse_all = lse(lambda bi, hi, qi, ki: ok[bi, qi, ki])
    lse_audio = lse(lambda bi, hi, qi, ki: ok[bi, qi, ki] & audio[bi, ki])
    has_audio = (ok & audio[:, None, :]).any(-1)[:, None, :]  # [batch, 1, q]
    y = torch.where(has_audio, torch.exp(lse_audio - lse_all), torch.zeros_like(lse_all))
    return y.transpose(1, 2)


def yield_from_value_channel(query: torch.Tensor, key: torch.Tensor, audio_mask: torch.Tensor, *,
                             allowed: torch.Tensor | None = None, scaling: float | None = None) -> torch.Tensor:
    """``[batch, q, head]`` yields as the output of one ``scaled_dot_product_attention`` call
    over an audio-indicator value channel (padded to 8 channels)."""
    _check(query, key, audio_mask, allowed)
    ok = _allowed(query, key, allowed)
    b, kv, k, _ = key.shape
    value = torch.zeros(b, kv, k, 8, dtype=query.dtype, device=query.device)
    value[..., 0] = audio_mask.to(query.dtype)[:, None, :]
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=ok[:, None], scale=scaling, enable_gqa=query.shape[1] != kv)
    return out[..., 0].float().transpose(1, 2)
