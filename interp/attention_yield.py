"""Audio attention yield: the share of each head's attention that lands on audio tokens.

Definition (DESIGN.md, "The science"): the yield of head ``h`` in decoder layer ``l`` at query
position ``t`` is the sum of its softmax attention weights over the audio-token key positions,
i.e. the positions where ``input_ids == arch.audio_token_id``.  It lies in [0, 1].

How it is measured without giving up SDPA / flash attention
----------------------------------------------------------
While a :class:`YieldRecorder` is active, the decoder's config points at a private attention
implementation registered with transformers' ``AttentionInterface`` (and the *same* mask
function as the model's own implementation registered with ``AttentionMaskInterface``).  That
function calls the model's original kernel (sdpa, flash, ...) for the output, so the model
computes exactly what it computes without the recorder, and only *keeps references* to the query
rows that are needed (the last prompt token and every decode step; all prompt rows on request)
together with the mask the kernel received.  The KV cache already holds every key, so when the
context exits the yields are computed in one batched pass per layer:

    logits = q @ K^T * scale + mask      (float32, only the recorded query rows, chunked)
    yield  = softmax(logits) @ W         (W: [pos, bin] indicator of audio keys per time bin)

Grouped-query attention is handled by viewing q as [batch, kv_head, n_rep * rows, d] against
the un-repeated keys (no ``repeat_kv``).  Nothing of size [T, T] per head is ever built: at most
``chunk_bytes`` of logits exist at once.  Per layer and decode step the hot path adds a dict
look-up and a list append, no tensor op and no device sync.

Rows of the result: row 0 is the query at the last prompt token (the attention that produced
generated token 1); row ``i`` is the query at generated token ``i`` (producing token ``i+1``).
``generate`` with ``N`` new tokens yields ``N`` rows.  A plain forward over prompt + ``N``
teacher-forced tokens yields ``N + 1`` rows (its last query produces a token ``generate`` never
computes).  With ``time_bins=K`` the audio keys of each row are cut into ``K`` contiguous bins of
(nearly) equal size, and the bins sum to the total yield.

Supported: the decoders of every class with an :mod:`auralens.interp.arch` table, greedy or sampled
``generate`` or plain forwards, batched and left-padded inputs, the default ``DynamicCache``.
Not supported (refused before anything runs): static/compileable caches, sliding-window or
flex attention layers, beam search (the recorded rows would follow beams that get reordered).

Public API: :class:`YieldConfig`, :class:`AttentionYield`, :class:`YieldRecorder` (with
:meth:`YieldRecorder.latest` for live use),
:func:`audio_mask_from_ids`, :func:`time_bin_weights`, :func:`audio_yield`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int

from auralens.interp import compat
from auralens.interp.arch import Architecture, describe
from auralens.interp.errors import ArchitectureError, ConfigError, PromptError

__all__ = [
    "ROWS",
    "AttentionYield",
    "YieldConfig",
    "YieldRecorder",
    "audio_mask_from_ids",
    "audio_yield",
    "time_bin_weights",
]

Rows = Literal["last_and_generated", "all_prompt"]
ROWS: tuple[str, ...] = ("last_and_generated", "all_prompt")
_PREFIX = "auralens_yield_"
_counter = itertools.count(1)


# --------------------------------------------------------------------------------------------
# Configuration and result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class YieldConfig:
    """What a :class:`YieldRecorder` records.

    rows: ``"last_and_generated"`` (the last prompt token and every generated token) or
        ``"all_prompt"`` (those, plus every prompt position, for heatmaps).
    time_bins: split the audio keys of each row into this many contiguous bins (1 = no split).
    layers: decoder layers to record (default: all), in any order; results follow this order.
    chunk_bytes: memory budget for the float32 logits of one chunk of query rows when the
        yields are computed at the end of the context.
    """

    rows: Rows = "last_and_generated"
    time_bins: int = 1
    layers: tuple[int, ...] | None = None
    chunk_bytes: int = 256 * 2**20

    def __post_init__(self) -> None:
        if self.rows not in ROWS:
            raise ConfigError(f"rows={self.rows!r}: expected one of {', '.join(ROWS)}")
        if isinstance(self.time_bins, bool) or not isinstance(self.time_bins, int) or self.time_bins < 1:
            raise ConfigError(f"time_bins={self.time_bins!r}: expected an integer >= 1")
        if self.layers is not None:
            layers = tuple(self.layers)
            if not layers:
                raise ConfigError("layers=(): expected None (all layers) or at least one layer")
            bad = [x for x in layers if isinstance(x, bool) or not isinstance(x, int) or x < 0]
            if bad:
                raise ConfigError(f"layers={layers!r}: expected non-negative integers, found {bad}")
            if len(set(layers)) != len(layers):
                raise ConfigError(f"layers={layers!r}: expected each layer at most once")
            object.__setattr__(self, "layers", layers)
        if not isinstance(self.chunk_bytes, int) or self.chunk_bytes < 1:
            raise ConfigError(f"chunk_bytes={self.chunk_bytes!r}: expected a positive integer")


@dataclass(frozen=True, kw_only=True)
class AttentionYield:
    """Yields recorded by one :class:`YieldRecorder` context (float32, on the model's device).

    ``binned[b, i, j, h, k]``: yield of head ``h`` of layer ``layers[j]`` at step row ``i`` of
    batch row ``b``, restricted to audio time bin ``k``.  ``prompt_binned`` is the same for every
    prompt position (``rows="all_prompt"`` only); rows at padding positions are NaN.
    """

    binned: Float[torch.Tensor, "batch step layer head bin"]
    prompt_binned: Float[torch.Tensor, "batch pos layer head bin"] | None
    layers: tuple[int, ...]
    prompt_len: int

    @property
    def total(self) -> Float[torch.Tensor, "batch step layer head"]:
        """Total audio yield per step row (the bins summed)."""
        return self.binned.sum(-1)

    @property
    def prompt_total(self) -> Float[torch.Tensor, "batch pos layer head"]:
        if self.prompt_binned is None:
            raise ConfigError("prompt yields were not recorded: use rows='all_prompt'")
        return self.prompt_binned.sum(-1)

    @property
    def n_steps(self) -> int:
        return int(self.binned.shape[1])


# --------------------------------------------------------------------------------------------
# Plain-tensor helpers
# --------------------------------------------------------------------------------------------


def audio_mask_from_ids(
    input_ids: Int[torch.Tensor, "batch pos"], arch: Architecture
) -> Bool[torch.Tensor, "batch pos"]:
    """Audio-token positions of a processed prompt: ``input_ids == arch.audio_token_id``."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise PromptError(f"input_ids: expected a [batch, pos] integer tensor, found {shape}")
    return input_ids == arch.audio_token_id


def _check_audio_mask(audio_mask: Any, time_bins: int) -> torch.Tensor:
    if not isinstance(audio_mask, torch.Tensor):
        raise PromptError(
            f"audio_mask: expected a bool tensor [batch, pos], found {type(audio_mask).__name__}"
        )
    if audio_mask.ndim != 2:
        raise PromptError(
            f"audio_mask: expected shape [batch, pos], found {tuple(audio_mask.shape)}"
        )
    if audio_mask.dtype != torch.bool:
        raise PromptError(
            f"audio_mask: expected dtype torch.bool (e.g. input_ids == arch.audio_token_id), "
            f"found {audio_mask.dtype}"
        )
    counts = audio_mask.sum(1).tolist()
    empty = [i for i, c in enumerate(counts) if c == 0]
    if empty:
        raise PromptError(
            f"audio_mask: batch row(s) {empty} contain no audio token; expected at least one "
            "audio placeholder per row (did the processor receive the audio?)"
        )
    short = [i for i, c in enumerate(counts) if c < time_bins]
    if short:
        raise PromptError(
            f"audio_mask: batch row(s) {short} have {[counts[i] for i in short]} audio tokens, "
            f"fewer than time_bins={time_bins}"
        )
    return audio_mask


def time_bin_weights(
    audio_mask: Bool[torch.Tensor, "batch pos"], time_bins: int = 1
) -> Float[torch.Tensor, "batch pos bin"]:
    """Indicator of audio keys per contiguous time bin (one-hot over bins, zero off audio).

    The ``n`` audio tokens of a row, in position order, are cut into ``time_bins`` contiguous
    groups: token of rank ``r`` goes to bin ``floor(r * time_bins / n)``.
    """
    mask = _check_audio_mask(audio_mask, time_bins)
    counts = mask.sum(1, keepdim=True)
    rank = mask.long().cumsum(1) - 1
    bins = torch.div(rank.clamp(min=0) * time_bins, counts, rounding_mode="floor").clamp(max=time_bins - 1)
    weights = torch.nn.functional.one_hot(bins, time_bins).to(torch.float32)
    return weights * mask.unsqueeze(-1)


def _mask_rows_bias(
    mask: torch.Tensor | None,
    positions: torch.Tensor,
    batch: int,
    kv_total: int,
    out: torch.Tensor,
) -> None:
    """Write the additive float32 bias of some query rows into ``out`` [batch, rows, kv_total].

    ``mask`` is what the attention kernel received for those rows: ``None`` (causal: a query at
    absolute position ``p`` sees keys ``<= p``), a 4-D bool mask [b|1, 1, rows, kv] (True =
    attend), a 4-D additive float mask, or a 2-D padding mask [batch, kv] (flash kernels; causal
    on top).  Keys past the mask's length are never attended.
    """
    keys = torch.arange(kv_total, device=out.device)
    if mask is None:
        causal = keys.unsqueeze(0) <= positions.to(out.device).unsqueeze(1)
        out.copy_(torch.where(causal, 0.0, float("-inf")).unsqueeze(0).expand_as(out))
        return
    kv = mask.shape[-1]
    out[..., kv:] = float("-inf")
    head = out[..., :kv]
    if mask.ndim == 2:
        causal = keys[:kv].unsqueeze(0) <= positions.to(out.device).unsqueeze(1)
        allowed = mask.to(out.device).bool().unsqueeze(1) & causal.unsqueeze(0)
        head.copy_(torch.where(allowed, 0.0, float("-inf")))
    elif mask.ndim == 4:
        rows = mask[:, 0].to(out.device)
        if rows.dtype == torch.bool:
            head.copy_(torch.where(rows, 0.0, float("-inf")).expand_as(head))
        else:
            head.copy_(rows.to(torch.float32).expand_as(head))
    else:
        raise ArchitectureError(
            f"attention mask: expected None, [batch, kv] or [batch, 1, q, kv], found "
            f"{tuple(mask.shape)}"
        )


def _yield_rows(
    query: torch.Tensor,
    key: torch.Tensor,
    bias: torch.Tensor,
    weights: torch.Tensor,
    scale: float,
    chunk_bytes: int,
) -> torch.Tensor:
    """Yields [batch, rows, head, bin] of query rows [batch, head, rows, d] against all keys.

    ``key`` is [batch, kv_head, T, d] (not repeated), ``bias`` [batch, rows, T] float32,
    ``weights`` [batch, P, bin] float32 with P <= T (keys >= P are never audio).
    """
    b, n_heads, n_rows, d = query.shape
    kv_heads, t = key.shape[1], key.shape[2]
    if n_heads % kv_heads:
        raise ArchitectureError(
            f"attention: {n_heads} query heads are not a multiple of {kv_heads} key/value heads"
        )
    rep = n_heads // kv_heads
    p, n_bins = weights.shape[1], weights.shape[2]
    k_t = key.to(torch.float32).transpose(-1, -2)  # [b, kv_heads, d, T]
    w = weights.to(device=key.device, dtype=torch.float32)
    out = torch.empty(b, n_rows, n_heads, n_bins, device=key.device, dtype=torch.float32)
    per_row = max(1, b * n_heads * t * 4 * 2)  # logits + probabilities
    step = max(1, min(n_rows, chunk_bytes // per_row))
    for r0 in range(0, n_rows, step):
        r1 = min(n_rows, r0 + step)
        r = r1 - r0
        q = query[:, :, r0:r1].to(torch.float32).reshape(b, kv_heads, rep * r, d)
        logits = torch.matmul(q, k_t).view(b, kv_heads, rep, r, t)
        logits = logits * scale + bias[:, None, None, r0:r1]
        probs = torch.softmax(logits, dim=-1)
        y = torch.bmm(probs[..., :p].reshape(b, n_heads * r, p), w)  # [b, heads * r, bins]
        out[:, r0:r1] = y.view(b, n_heads, r, n_bins).transpose(1, 2)
    return out


def audio_yield(
    query: Float[torch.Tensor, "batch head q d_head"],
    key: Float[torch.Tensor, "batch kv_head key d_head"],
    audio_mask: Bool[torch.Tensor, "batch pos"],
    *,
    attention_mask: torch.Tensor | None = None,
    scaling: float | None = None,
    query_positions: Int[torch.Tensor, " q"] | None = None,
    time_bins: int = 1,
    chunk_bytes: int = 256 * 2**20,
) -> Float[torch.Tensor, "batch q head bin"]:
    """Audio yield of every (query row, head) of one attention call, from plain tensors.

    ``query``/``key`` as an attention kernel receives them (after rotary embedding; keys not
    repeated for GQA).  ``attention_mask`` in any format the kernels receive (None = causal;
    4-D bool True = attend; 4-D additive float; 2-D padding mask).  ``query_positions`` are the
    absolute key indices of the query rows (default: the last ``q`` keys).  ``audio_mask`` covers
    the first ``pos`` keys.
    """
    if query.ndim != 4 or key.ndim != 4 or query.shape[0] != key.shape[0]:
        raise ConfigError(
            f"audio_yield: expected query [batch, head, q, d] and key [batch, kv_head, key, d], "
            f"found {tuple(query.shape)} and {tuple(key.shape)}"
        )
    weights = time_bin_weights(audio_mask, time_bins)
    b, _, n_rows, d = query.shape
    t = key.shape[2]
    if weights.shape[0] != b or weights.shape[1] > t:
        raise PromptError(
            f"audio_mask: expected [batch={b}, pos<={t}], found {tuple(audio_mask.shape)}"
        )
    if query_positions is None:
        query_positions = torch.arange(t - n_rows, t, device=key.device)
    bias = torch.empty(b, n_rows, t, device=key.device, dtype=torch.float32)
    _mask_rows_bias(attention_mask, query_positions, b, t, bias)
    scale = d**-0.5 if scaling is None else float(scaling)
    return _yield_rows(query, key, bias, weights, scale, chunk_bytes)


# --------------------------------------------------------------------------------------------
# The recorder
# --------------------------------------------------------------------------------------------


class YieldRecorder:
    """Context manager recording the audio attention yield of every decoder head.

    ::

        arch = describe(model)
        inputs = processor(text=..., audio=..., return_tensors="pt")
        rec = YieldRecorder(model, arch, audio_mask_from_ids(inputs["input_ids"], arch))
        with rec:
            out = model.generate(**inputs, max_new_tokens=64)
        rec.result.total          # [batch, 64, layer, head]

    ``audio_mask`` is over the *prompt* (``input_ids`` as the processor returned them, left
    padding included); the recorder checks it against the ``input_ids`` of the first forward.
    Results are computed when the context exits normally (:attr:`result`); an exception inside
    the context discards them.  Re-entering the context starts a new recording; inside one
    context, a forward that starts again at position 0 (a new ``generate``) replaces what was
    recorded, so the result is that of the last sequence.  Recorders may be active on several
    models at once, and may nest on one model (each sees every call).
    """

    def __init__(
        self,
        model: Any,
        arch: Architecture | None,
        audio_mask: Bool[torch.Tensor, "batch pos"],
        *,
        rows: Rows = "last_and_generated",
        time_bins: int = 1,
        layers: tuple[int, ...] | list[int] | None = None,
        chunk_bytes: int = 256 * 2**20,
    ) -> None:
        config = YieldConfig(
            rows=rows,
            time_bins=time_bins,
            layers=None if layers is None else tuple(layers),
            chunk_bytes=chunk_bytes,
        )
        self._setup(model, arch, audio_mask, config)

    # --- set-up (validation happens here, before anything runs) -----------------------------

    def _setup(self, model: Any, arch: Architecture | None, audio_mask: Any, config: YieldConfig) -> None:
        self.model = model
        self.arch = arch if arch is not None else describe(model)
        self.config = config
        self.audio_mask = _check_audio_mask(audio_mask, config.time_bins)
        self.weights = time_bin_weights(audio_mask, config.time_bins)
        self.layers: tuple[int, ...] = (
            tuple(range(self.arch.n_layers)) if config.layers is None else config.layers
        )
        for layer in self.layers:
            self.arch.check_layer(layer)
        self._modules = [self.arch.attention(model, layer) for layer in self.layers]
        self._slots: dict[Any, int] = {m: i for i, m in enumerate(self._modules)}
        for layer, module in zip(self.layers, self._modules):
            if getattr(module, "sliding_window", None) is not None:
                raise ArchitectureError(
                    f"decoder layer {layer} uses sliding-window attention "
                    f"(window {module.sliding_window}); the yield recorder supports full "
                    "causal attention only"
                )
            if not hasattr(module, "config"):
                raise ArchitectureError(
                    f"decoder layer {layer}: attention module {type(module).__name__} has no "
                    "config; expected a transformers attention module dispatching through "
                    "AttentionInterface"
                )
        configs: dict[int, Any] = {id(m.config): m.config for m in self._modules}
        text_cfg = self.arch.text_config(model)
        configs.setdefault(id(text_cfg), text_cfg)
        self._configs = list(configs.values())
        self._current_impl()  # refuse unsupported implementations now, before anything runs
        self._weights_on: dict[torch.device, torch.Tensor] = {self.weights.device: self.weights}
        self._result: AttentionYield | None = None
        self._active = False
        self._clear()

    def _current_impl(self) -> str:
        impls = {compat.get_attn_impl(c) for c in self._configs}
        if len(impls) != 1:
            raise ArchitectureError(
                f"decoder attention implementations differ across layers: {sorted(map(str, impls))}"
            )
        impl = impls.pop() or "sdpa"
        if "flex" in impl or impl.startswith("paged"):
            raise ArchitectureError(
                f"attention implementation {impl!r} is not supported by the yield recorder; "
                "expected sdpa, eager or flash_attention_*"
            )
        return impl

    def _weights(self, device: torch.device) -> torch.Tensor:
        w = self._weights_on.get(device)
        if w is None:
            w = self._weights_on[device] = self.weights.to(device)
        return w

    def _clear(self) -> None:
        n = len(self._modules)
        self._calls: list[list[tuple[torch.Tensor, int, torch.Tensor | None]]] = [[] for _ in range(n)]
        self._keys: list[torch.Tensor | None] = [None] * n
        self._scales: list[float | None] = [None] * n

    # --- context protocol ---------------------------------------------------------------------

    def __enter__(self) -> YieldRecorder:
        if self._active:
            raise ConfigError(
                "YieldRecorder: this recorder is already active; nest a second YieldRecorder instead"
            )
        # Read now, not at construction: inside another recorder's context this wraps that one.
        impl = self._current_impl()
        functions = compat.attention_functions()
        if impl in functions:
            orig = functions[impl]
        else:  # "eager": the modeling file's own function
            orig = compat.eager_attention_forward(self._modules[0])
            if orig is None:
                raise ArchitectureError(
                    f"attention implementation {impl!r}: {type(self._modules[0]).__module__} has no "
                    "eager_attention_forward to wrap"
                )
        mask_impl = impl if impl in compat.mask_functions() else "sdpa"
        self._orig = orig
        # Unique per context (two recorders on two models at once must not share a name); the
        # original name comes last so flash-attention checks on the name still hold.
        self._name = f"{_PREFIX}{next(_counter)}+{impl}"
        self._clear()
        self._result = None
        self._first_row = 0 if self.config.rows == "all_prompt" else self.audio_mask.shape[1] - 1
        self._saved = [(c, compat.get_attn_impl(c)) for c in self._configs]
        self._hook = None
        try:
            compat.register_attention(self._name, self._attention, mask_impl)
            for cfg, _ in self._saved:
                compat.set_attn_impl(cfg, self._name)
            self._hook = self.model.register_forward_pre_hook(self._pre_forward, with_kwargs=True)
        except BaseException:
            self._restore()
            raise
        self._active = True
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._restore()
        try:
            if exc_type is None:
                self._result = self._finalize()
        finally:
            self._clear()

    def _restore(self) -> None:
        self._active = False
        hook = getattr(self, "_hook", None)
        if hook is not None:
            hook.remove()
            self._hook = None
        for cfg, value in getattr(self, "_saved", []):
            compat.set_attn_impl(cfg, value)
        self._saved = []
        name = getattr(self, "_name", None)
        if name is not None:
            compat.unregister_attention(name)

    # --- hot path -----------------------------------------------------------------------------

    def _attention(self, module, query, key, value, attention_mask, **kwargs):
        out = self._orig(module, query, key, value, attention_mask, **kwargs)
        slot = self._slots.get(module)
        if slot is not None:
            q_len = query.shape[2]
            start = key.shape[2] - q_len
            calls = self._calls[slot]
            if start == 0:
                calls.clear()
            lo = self._first_row - start
            if lo < q_len:
                if lo > 0:
                    query = query[:, :, lo:]
                    if attention_mask is not None and attention_mask.ndim == 4:
                        attention_mask = attention_mask[:, :, lo:]
                    if start == 0:  # prefill: keep one row, not the whole prompt's queries
                        query = query.clone()
                else:
                    lo = 0
                calls.append((query, start + lo, attention_mask))
            self._keys[slot] = key
            self._scales[slot] = kwargs.get("scaling")
        return out

    def _pre_forward(self, module, args, kwargs):
        if compat.is_static_cache(kwargs):
            raise ConfigError(
                f"YieldRecorder: the KV cache is a {type(compat.find_cache(kwargs)).__name__} "
                "(static/compileable); expected the default DynamicCache (query positions are read "
                "from the cache length)"
            )
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if not isinstance(input_ids, torch.Tensor):
            return None
        if not compat.is_prefill(kwargs):  # decode step: the prompt was checked at prefill
            return None
        b, p = self.audio_mask.shape
        if input_ids.ndim != 2 or input_ids.shape[0] != b or input_ids.shape[1] < p:
            raise PromptError(
                f"YieldRecorder: input_ids of shape {tuple(input_ids.shape)} do not match "
                f"audio_mask of shape {(b, p)}; expected [batch={b}, pos>={p}]"
            )
        found = input_ids[:, :p] == self.arch.audio_token_id
        if not torch.equal(found.to(self.audio_mask.device), self.audio_mask):
            rows = (found.cpu() != self.audio_mask.cpu()).any(1).nonzero().flatten().tolist()
            raise PromptError(
                f"YieldRecorder: audio_mask differs from input_ids == {self.arch.audio_token_id} "
                f"(the audio placeholder id) in batch row(s) {rows}"
            )
        return None

    # --- finalisation ---------------------------------------------------------------------------

    @property
    def result(self) -> AttentionYield:
        if self._result is None:
            raise ConfigError(
                "YieldRecorder: no result yet; run the model inside `with recorder:` and read "
                "the result after the block exits normally"
            )
        return self._result

    @property
    def yields(self) -> Float[torch.Tensor, "batch step layer head"]:
        """Total audio yield per step row (shortcut for ``result.total``)."""
        return self.result.total

    def latest(self, layer: int) -> Float[torch.Tensor, "batch head bin"]:
        """Yield of every head of ``layer`` at the most recent query row recorded so far.

        For live use inside the context (e.g. a gate that reacts to the listening signal while
        ``generate`` runs): computes that one row on demand, with the formula of the final pass.
        """
        if layer not in self.layers:
            raise ConfigError(f"layer {layer!r}: not recorded; this recorder records {self.layers}")
        slot = self.layers.index(layer)
        calls, key = self._calls[slot], self._keys[slot]
        if not calls or key is None:
            raise ConfigError(f"layer {layer}: no query row recorded yet (run a forward first)")
        q, start, mask = calls[-1]
        r = q.shape[2]
        if isinstance(mask, torch.Tensor) and mask.ndim == 4:
            mask = mask[:, :, r - 1 :]
        kv_total = key.shape[2]
        bias = torch.empty(q.shape[0], 1, kv_total, device=key.device, dtype=torch.float32)
        _mask_rows_bias(mask, torch.tensor([start + r - 1], device=key.device), q.shape[0], kv_total, bias)
        scale = self._scales[slot]
        scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
        y = _yield_rows(q[:, :, r - 1 :], key, bias, self._weights(key.device), scale, self.config.chunk_bytes)
        return y[:, 0]

    def _finalize(self) -> AttentionYield:
        b, p = self.audio_mask.shape
        n_layers, n_heads, n_bins = len(self.layers), self.arch.n_heads, self.config.time_bins
        # per slot: (slot, its calls, keys, mask bias, query positions), None for a slot not called
        plans: list[
            tuple[int, list[tuple[torch.Tensor, int, torch.Tensor | None]], torch.Tensor, torch.Tensor, list[int]] | None
        ] = []
        bias_cache: dict[tuple, torch.Tensor] = {}
        n_steps = 0
        for slot, calls in enumerate(self._calls):
            key = self._keys[slot]
            if not calls or key is None:
                plans.append(None)
                continue
            if key.shape[0] != b:
                raise PromptError(
                    f"YieldRecorder: the model ran on batch size {key.shape[0]}, audio_mask has "
                    f"batch size {b}"
                )
            t = key.shape[2]
            positions = [pos for q, start, _ in calls for pos in range(start, start + q.shape[2])]
            n_steps = max(n_steps, max(positions) - (p - 1) + 1)
            sig = (t,) + tuple((id(m), start, q.shape[2]) for q, start, m in calls)
            bias = bias_cache.get(sig)
            if bias is None:
                bias = torch.empty(b, len(positions), t, device=key.device, dtype=torch.float32)
                r0 = 0
                for q, start, m in calls:
                    r = q.shape[2]
                    pos = torch.arange(start, start + r, device=key.device)
                    _mask_rows_bias(m, pos, b, t, bias[:, r0 : r0 + r])
                    r0 += r
                bias_cache[sig] = bias
            plans.append((slot, calls, key, bias, positions))

        device = self.weights.device
        for plan in plans:
            if plan is not None:
                device = plan[2].device
                break
        steps = torch.full((b, n_steps, n_layers, n_heads, n_bins), float("nan"), device=device)
        prompt = None
        if self.config.rows == "all_prompt":
            prompt = torch.full((b, p, n_layers, n_heads, n_bins), float("nan"), device=device)
        for plan in plans:
            if plan is None:
                continue
            slot, calls, key, bias, positions = plan
            query = torch.cat([q for q, _, _ in calls], dim=2) if len(calls) > 1 else calls[0][0]
            scale = self._scales[slot]
            scale = query.shape[-1] ** -0.5 if scale is None else float(scale)
            y = _yield_rows(query, key, bias, self._weights(key.device), scale, self.config.chunk_bytes)
            rows = [i for i, pos in enumerate(positions) if pos >= p - 1]
            if rows:
                src = torch.tensor(rows, device=y.device)
                dst = torch.tensor([positions[i] - (p - 1) for i in rows], device=y.device)
                steps[:, :, slot].index_copy_(1, dst, y.index_select(1, src))
            if prompt is not None:
                rows = [i for i, pos in enumerate(positions) if pos < p]
                if rows:
                    src = torch.tensor(rows, device=y.device)
                    dst = torch.tensor([positions[i] for i in rows], device=y.device)
                    prompt[:, :, slot].index_copy_(1, dst, y.index_select(1, src))
        return AttentionYield(binned=steps, prompt_binned=prompt, layers=self.layers, prompt_len=p)
