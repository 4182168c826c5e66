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
section says what a vLLM backend would need to return and what it would cost.

**A recorder on the kernel statistic.** :func:`install_kernel_backend` selects, once and for the
decoder only, an attention backend that computes each call's *output* with the kernel itself and,
when a recorder is listening, the statistic alongside (``"lse"``: the output call's own
``flex_attention`` log-sum-exp plus one LSE call per time bin over the audio keys; ``"value_channel"``:
one ``scaled_dot_product_attention`` call over the values with the audio-indicator channels appended,
whose first ``head_dim`` channels are the output and the rest the yields). This is how a serving
engine works: the backend is chosen at load and never swapped. :class:`KernelYieldRecorder` then
only hands the backend each request's audio keys (the engine's per-request metadata) and collects
the yields; entering and leaving it changes no attention function and no config. With no recorder
listening the backend is one plain kernel call. Eager only (the backend is Python around the kernel;
the compiled path is :class:`~auralens.interp.attention_yield.YieldRecorder`'s custom op).

Written by hand: no library computes a per-head attention share over a key subset from a kernel's
statistics.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.attention.flex_attention import AuxRequest, create_block_mask, flex_attention

from auralens.interp import compat
from auralens.interp.arch import Architecture, describe
from auralens.interp.attention_yield import Rows, YieldRecorder, attention_configs, mask_rows_bias
from auralens.interp.errors import ArchitectureError, ConfigError

__all__ = ["BACKENDS", "KernelYieldRecorder", "install_kernel_backend", "yield_from_lse", "yield_from_value_channel"]


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
        assert aux.lse is not None
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


# --------------------------------------------------------------------------------------------
# An attention backend that returns the statistic, and the recorder that reads it
# --------------------------------------------------------------------------------------------

#: method -> the attention-implementation name of its backend (registered by install_kernel_backend)
BACKENDS = {"lse": "auralens_kernel_lse", "value_channel": "auralens_kernel_value_channel"}
#: id(attention module) -> the (recorder, slot) pairs listening to it (the per-request metadata)
_LISTENERS: dict[int, list[tuple[KernelYieldRecorder, int]]] = {}


def _allowed_rows(mask: torch.Tensor | None, b: int, q: int, t: int, device: torch.device) -> torch.Tensor:
    """``[batch, q, t]`` bool from the mask the backend received (sdpa's mask function: None =
    causal over the last ``q`` keys, or a 4-D bool mask)."""
    if mask is not None and mask.dtype != torch.bool:
        raise ArchitectureError(f"kernel backend: expected a boolean attention mask, found {mask.dtype}")
    bias = torch.empty(b, q, t, device=device, dtype=torch.float32)
    mask_rows_bias(mask, torch.arange(t - q, t, device=device), b, t, bias)
    return bias == 0


def _bin_keys(rec: KernelYieldRecorder, b: int, t: int, device: torch.device) -> torch.Tensor:
    """``[batch, t, bins]`` float: the recorder's audio time-bin indicators over ``t`` keys
    (keys past the prompt are never audio)."""
    w = rec._weights(device)
    return torch.nn.functional.pad(w, (0, 0, 0, t - w.shape[1]))


def _lse_backend(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                 **_: Any) -> tuple[torch.Tensor, None]:
    b, h, q, _d = query.shape
    t = key.shape[2]
    gqa = h != key.shape[1]
    ok = _allowed_rows(attention_mask, b, q, t, query.device)
    dev = str(query.device)

    def run(q_rows: torch.Tensor, allowed: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = q_rows.shape[2]
        block = create_block_mask(lambda bi, hi, qi, ki: allowed[bi, qi, ki], b, None, n, t, device=dev)
        out, aux = flex_attention(q_rows, key, v, block_mask=block, scale=scaling, enable_gqa=gqa,
                                  return_aux=AuxRequest(lse=True))
        assert aux.lse is not None
        return out, aux.lse.float()  # [b, h, n, d], [b, h, n]

    out, lse_all = run(query, ok, value)
    one = value[..., :1]
    for rec, slot in _LISTENERS.get(id(module), ()):
        where = rec._locate(slot, q, t, b)
        if where is None:  # no row of this call is recorded: no statistic to compute
            continue
        lo, p0 = where  # only the rows kept (a prefill keeps its last row): one LSE call per bin over them
        bins = _bin_keys(rec, b, t, query.device) > 0  # [b, t, bins]
        ys = []
        for j in range(bins.shape[-1]):
            allowed = ok[:, lo:] & bins[:, None, :, j]
            _unused, lse_j = run(query[:, :, lo:], allowed, one)
            has = allowed.any(-1)[:, None, :]  # [b, 1, rows]
            ys.append(torch.where(has, torch.exp(lse_j - lse_all[..., lo:]), torch.zeros_like(lse_j)))
        rec._store(slot, p0, torch.stack(ys, -1).transpose(1, 2))  # [b, rows, h, bins]
    return out.transpose(1, 2).contiguous(), None


def _value_channel_backend(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, scaling: float | None = None,
                           dropout: float = 0.0, **_: Any) -> tuple[torch.Tensor, None]:
    b, h, q, d = query.shape
    t, kv = key.shape[2], key.shape[1]
    listeners = _LISTENERS.get(id(module), ())
    widths = []
    v = value
    if listeners:
        chans = [_bin_keys(rec, b, t, query.device) for rec, _ in listeners]  # [b, t, bins] each
        widths = [c.shape[-1] for c in chans]
        ind = torch.cat(chans, -1).to(value.dtype)[:, None].expand(b, kv, t, sum(widths))
        pad = -sum(widths) % 8  # kernels' head-size constraints: a multiple of 8 channels
        v = torch.cat([value, ind, value.new_zeros(b, kv, t, pad)], -1)
    mask = attention_mask
    if mask is None and 1 < q < t:  # causal over the last q keys (SDPA's is_causal aligns top-left)
        mask = _allowed_rows(None, b, q, t, query.device)[:, None]
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, v, attn_mask=mask, is_causal=mask is None and q > 1, scale=scaling, enable_gqa=h != kv)
    if listeners:
        c0 = d
        for (rec, slot), w in zip(listeners, widths):
            rec._take(slot, q, t, b, out[..., c0 : c0 + w].float().transpose(1, 2))  # [b, q, h, bins]
            c0 += w
        out = out[..., :d]
    return out.transpose(1, 2).contiguous(), None


_FNS = {"lse": _lse_backend, "value_channel": _value_channel_backend}


def install_kernel_backend(model: Any, method: str = "lse", arch: Architecture | None = None) -> str:
    """Select the kernel-statistic backend ``method`` (``"lse"`` or ``"value_channel"``) for the
    decoder's attention, once, as a serving engine selects its backend at load; returns its name.
    The audio encoder keeps its own implementation. Outputs equal SDPA's (the tests check
    generated tokens); no statistic is computed until a :class:`KernelYieldRecorder` listens."""
    if method not in BACKENDS:
        raise ConfigError(f"kernel backend method {method!r}: expected one of {sorted(BACKENDS)}")
    arch = arch if arch is not None else describe(model)
    name = BACKENDS[method]
    if name not in compat.registered_attention_names():
        compat.register_attention(name, _FNS[method], "sdpa")
    for cfg in attention_configs(model, arch, [arch.attention(model, layer) for layer in range(arch.n_layers)]):
        compat.set_attn_impl(cfg, name)
    return name


class KernelYieldRecorder(YieldRecorder):
    """:class:`~auralens.interp.attention_yield.YieldRecorder`'s results (same rows, time bins,
    buffers and :attr:`result`) from the statistic of a kernel backend chosen once with
    :func:`install_kernel_backend`, instead of an attention function swapped in per context::

        install_kernel_backend(model, "lse")          # once, at load
        with KernelYieldRecorder(model, arch, audio_mask) as rec:
            model.generate(**inputs, max_new_tokens=64)
        rec.result.total                                # [batch, 64, layer, head]

    Eager decoding with the default dynamic cache or a static cache; nests with other recorders.
    """

    _registry = _LISTENERS

    def __init__(self, model: Any, arch: Architecture | None, audio_mask: torch.Tensor, *,
                 rows: Rows = "last_and_generated", time_bins: int = 1,
                 layers: tuple[int, ...] | list[int] | None = None) -> None:
        super().__init__(model, arch, audio_mask, rows=rows, time_bins=time_bins, layers=layers)

    def _current_impl(self) -> str:
        impls = {compat.get_attn_impl(c) for c in self._configs}
        names = set(BACKENDS.values())
        if len(impls) != 1 or not impls <= names:
            raise ArchitectureError(
                f"KernelYieldRecorder: the decoder's attention implementation is {sorted(map(str, impls))}; "
                f"expected one of {sorted(names)}: call auralens.interp.kernel_stat.install_kernel_backend(model) once first"
            )
        return str(impls.pop())

    def __enter__(self) -> KernelYieldRecorder:
        if self._active:
            raise ConfigError("KernelYieldRecorder: this recorder is already active; nest a second one instead")
        self._current_impl()
        self._start()
        try:
            self._attach()  # listen in the backend's table; no attention function or config changes
        except BaseException:
            self._restore()
            raise
        self._active = True
        return self

    def _restore(self) -> None:
        self._detach()

    def _take(self, slot: int, q_len: int, key_len: int, batch: int, y: torch.Tensor) -> None:
        """Keep the rows of one call's kernel-computed yields ``y`` [b, q, h, bins] that the
        recorder's ``rows`` ask for."""
        where = self._locate(slot, q_len, key_len, batch)
        if where is not None:
            lo, p0 = where
            self._store(slot, p0, y[:, lo:])
