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

from dataclasses import dataclass
from typing import Any, Literal, no_type_check

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


def mask_rows_bias(
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
    mask_rows_bias(attention_mask, query_positions, b, t, bias)
    scale = d**-0.5 if scaling is None else float(scaling)
    return _yield_rows(query, key, bias, weights, scale, chunk_bytes)


# --------------------------------------------------------------------------------------------
# The recorder
# --------------------------------------------------------------------------------------------

#: decode-step yields are written into per-layer buffers of 8, 8, 16, 32, then 64 rows (each
#: the size of all before it, up to 64; allocated as needed): the buffers hold at most
#: ``max(2 N, 8)`` rows per layer for ``N`` steps
_CHUNK_ROWS = 64
_CHUNK_SIZES = (8, 8, 16, 32)


def attention_configs(model: Any, arch: Architecture, modules: Any) -> list[Any]:
    """The distinct configs an attention implementation is read from: each of ``modules``'
    (decoder attention modules) and the text model's."""
    configs: dict[int, Any] = {id(m.config): m.config for m in modules}
    text = arch.text_config(model)
    configs.setdefault(id(text), text)
    return list(configs.values())


def _chunk_of(step: int) -> tuple[int, int, int]:
    """(buffer index, offset in it, buffer rows) of step row ``step``."""
    start = 0
    for c, size in enumerate(_CHUNK_SIZES):
        if step < start + size:
            return c, step - start, size
        start += size
    extra, off = divmod(step - start, _CHUNK_ROWS)
    return len(_CHUNK_SIZES) + extra, off, _CHUNK_ROWS


#: id(attention module) -> the (recorder, slot) pairs recording it; read by the dispatcher
_WATCHERS: dict[int, list[tuple[YieldRecorder, int]]] = {}
#: registered dispatcher name -> number of live contexts using it (unregistered at zero)
_NAMES: dict[str, int] = {}
_OP: Any = None


def _record_call(module_id: int, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None,
                 scale: float) -> None:
    for rec, slot in _WATCHERS.get(module_id, ()):
        rec._record(slot, query, key, mask, scale)


@no_type_check  # traced by dynamo: no run-time type-check wrapper from the test suite's import hook
def _record_op() -> Any:
    """``torch.ops.auralens.record_yield``: the recorder's per-call work as one opaque custom op,
    so a compiled decode step (``torch.compile``, inductor) calls it without a graph break.  The
    op mutates a one-element counter (``sink``: ops without outputs or mutations may be removed
    as dead code) and runs the eager Python of :meth:`YieldRecorder._record` on real tensors."""
    global _OP
    if _OP is None:
        # the schema is spelled out: annotations are strings here (postponed evaluation)
        schema = "(Tensor(a!) sink, Tensor query, Tensor key, Tensor? mask, float scale, int module_id) -> ()"

        @torch.library.custom_op("auralens::record_yield", mutates_args=("sink",), schema=schema)
        def record_yield(sink, query, key, mask, scale, module_id):
            _record_call(module_id, query, key, mask, scale)
            sink.add_(1)

        @record_yield.register_fake
        def _(sink, query, key, mask, scale, module_id):
            return None

        _OP = record_yield
    return _OP


_SINKS: dict[torch.device, torch.Tensor] = {}
#: attention module class -> the ``eager_attention_forward`` of its modeling file
_EAGER_FNS: dict[type, Any] = {}


@no_type_check  # traced by dynamo: no run-time type-check wrapper from the test suite's import hook
def _dispatcher(base_impl: str):
    """The attention function registered while recording: the model's own kernel for the output,
    then the yields of the rows this call computes (eagerly, or through the custom op when traced)."""

    functions = compat.attention_functions()
    base = functions[base_impl] if base_impl in functions else None  # None: "eager"

    def dispatch(module, query, key, value, attention_mask, **kwargs):
        fn = base if base is not None else _EAGER_FNS[type(module)]  # eager: the modeling file's own
        out = fn(module, query, key, value, attention_mask, **kwargs)
        scale = kwargs.get("scaling")
        scale = query.shape[-1] ** -0.5 if scale is None else float(scale)
        if torch.compiler.is_compiling():
            _OP(_SINKS[query.device], query, key, attention_mask, scale, id(module))
        else:
            _record_call(id(module), query, key, attention_mask, scale)
        return out

    return dispatch


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

    Yields are computed **when each attention call runs** (its recorded query rows against the
    keys that call attends to, with the mask the kernel received) and only the yields are kept:
    ``L * B * H * N * bins`` float32 (in buffers of 8, 8, 16, 32, then 64 rows per layer), plus the ``[B, P, bins]``
    indicator of audio keys; no query row and no reference to the KV cache outlives the call
    (:meth:`held_bytes` sums what is retained).  No final pass over stored queries remains: at
    exit the per-layer buffers are only stacked into :attr:`result`.  (:func:`audio_yield`, the
    plain-tensor function, is the same formula for queries and keys captured elsewhere.)

    Works with the default ``DynamicCache`` and with ``cache_implementation="static"``, eager
    or inside a compiled decode step (``torch.compile``: the per-call work is the custom op
    ``auralens::record_yield``, no graph break; under a static cache the step index is counted
    by the recorder from the prefill, which the model's pre-forward hook detects).

    Results are available when the context exits normally (:attr:`result`); an exception inside
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
        self._configs = attention_configs(model, self.arch, self._modules)
        self._current_impl()  # refuse unsupported implementations now, before anything runs
        self._weights_on: dict[torch.device, torch.Tensor] = {self.weights.device: self.weights}
        self._result: AttentionYield | None = None
        self._active = False
        self._static = False
        self._clear()

    def _current_impl(self) -> str:
        impls = {compat.get_attn_impl(c) for c in self._configs}
        if len(impls) != 1:
            raise ArchitectureError(
                f"decoder attention implementations differ across layers: {sorted(map(str, impls))}"
            )
        impl = impls.pop() or "sdpa"
        if impl.startswith(_PREFIX):  # inside another recorder's context: the same dispatcher
            impl = impl[len(_PREFIX) :]
        if "flex" in impl or impl.startswith("paged"):
            raise ArchitectureError(
                f"attention implementation {impl!r} is not supported by the yield recorder; "
                "expected sdpa, eager or flash_attention_* (auralens.interp.kernel_stat."
                "KernelYieldRecorder records from a kernel's log-sum-exp)"
            )
        return impl

    def _weights(self, device: torch.device) -> torch.Tensor:
        w = self._weights_on.get(device)
        if w is None:
            w = self._weights_on[device] = self.weights.to(device)
        return w

    def _clear(self) -> None:
        n = len(self._modules)
        self._chunks: list[list[torch.Tensor]] = [[] for _ in range(n)]  # step rows (buffers of _chunk_of)
        self._n_rows = [0] * n  # step rows written per slot
        self._prompt_rows: list[torch.Tensor | None] = [None] * n  # [b, P, h, bins] (all_prompt)
        self._pos = [0] * n  # positions seen in this sequence (static caches)
        self._last: list[int | None] = [None] * n  # position of the most recent recorded row

    # --- context protocol ---------------------------------------------------------------------

    def __enter__(self) -> YieldRecorder:
        if self._active:
            raise ConfigError(
                "YieldRecorder: this recorder is already active; nest a second YieldRecorder instead"
            )
        impl = self._current_impl()
        if impl not in compat.attention_functions():
            for m in self._modules:
                fn = compat.eager_attention_forward(m)
                if fn is None:
                    raise ArchitectureError(
                        f"attention implementation {impl!r}: {type(m).__module__} has no "
                        "eager_attention_forward to wrap"
                    )
                _EAGER_FNS[type(m)] = fn
        mask_impl = impl if impl in compat.mask_functions() else "sdpa"
        # One stable name per kernel (a compiled step traced with it stays valid for the next
        # recorder); the kernel's name comes last so flash-attention checks on the name hold.
        self._name = f"{_PREFIX}{impl}"
        self._start()
        self._saved = [(c, compat.get_attn_impl(c)) for c in self._configs]
        try:
            if self._name not in _NAMES:
                compat.register_attention(self._name, _dispatcher(impl), mask_impl)
            _NAMES[self._name] = _NAMES.get(self._name, 0) + 1
            self._registered = True
            device = self.audio_mask.device
            for m in self._modules:
                for p in m.parameters():
                    device = p.device
                    break
            if device not in _SINKS:  # a normal tensor even when first entered under inference_mode: a
                # later compiled step outside it mutates the sink ("Inplace update to inference tensor")
                with torch.inference_mode(False):
                    _SINKS[device] = torch.zeros(1, dtype=torch.int64, device=device)
            _record_op()  # defined eagerly: a traced step may call it
            for cfg, _ in self._saved:
                compat.set_attn_impl(cfg, self._name)
            self._attach()
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

    def _start(self) -> None:
        """A new recording: no rows, no result, no hook or watched module yet."""
        self._clear()
        self._result = None
        self._first_row = 0 if self.config.rows == "all_prompt" else self.audio_mask.shape[1] - 1
        self._hook = None
        self._watching: list[int] = []

    #: id(attention module) -> the (recorder, slot) pairs its per-call work feeds
    _registry: dict[int, list[tuple[Any, int]]] = _WATCHERS

    def _attach(self) -> None:
        """Listen to every recorded module (in :attr:`_registry`) and hook the model's forward."""
        self._watching = []
        for slot, m in enumerate(self._modules):
            self._registry.setdefault(id(m), []).append((self, slot))
            self._watching.append(id(m))
        self._hook = self.model.register_forward_pre_hook(self._pre_forward, with_kwargs=True)

    def _detach(self) -> None:
        """Undo :meth:`_attach` (whatever part of it ran)."""
        self._active = False
        hook = getattr(self, "_hook", None)
        if hook is not None:
            hook.remove()
            self._hook = None
        for mid in getattr(self, "_watching", []):
            left = [w for w in self._registry.get(mid, []) if w[0] is not self]
            if left:
                self._registry[mid] = left
            else:
                self._registry.pop(mid, None)
        self._watching = []

    def _restore(self) -> None:
        self._detach()
        for cfg, value in getattr(self, "_saved", []):
            compat.set_attn_impl(cfg, value)
        self._saved = []
        if getattr(self, "_registered", False):
            self._registered = False
            _NAMES[self._name] -= 1
            if _NAMES[self._name] == 0:
                del _NAMES[self._name]
                compat.unregister_attention(self._name)

    # --- per attention call (eager Python; inside a compiled step, the custom op's body) --------

    def _locate(self, slot: int, q_len: int, key_len: int, batch: int) -> tuple[int, int] | None:
        """Which rows of this attention call to keep: ``(lo, p0)``, skip the first ``lo`` query rows,
        row ``lo`` is absolute position ``p0``; None when the call has none to keep."""
        if self._static:  # keys are the whole pre-allocated cache: count positions instead
            start = self._pos[slot]
            self._pos[slot] += q_len
        else:
            start = key_len - q_len
        if start == 0:  # a new sequence: forget the previous one
            self._chunks[slot], self._n_rows[slot], self._prompt_rows[slot] = [], 0, None
            self._last[slot] = None
        lo = max(0, self._first_row - start)
        if lo >= q_len:
            return None
        if batch != self.audio_mask.shape[0]:
            raise PromptError(
                f"{type(self).__name__}: the model ran on batch size {batch}, audio_mask has batch size "
                f"{self.audio_mask.shape[0]}"
            )
        return lo, start + lo

    def _record(self, slot: int, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None,
                scale: float) -> None:
        q_len = query.shape[2]
        b, t = key.shape[0], key.shape[2]
        where = self._locate(slot, q_len, t, b)
        if where is None:
            return
        lo, p0 = where
        if lo > 0:
            query = query[:, :, lo:]
            if mask is not None and mask.ndim == 4:
                mask = mask[:, :, lo:]
        r = q_len - lo
        bias = torch.empty(b, r, t, device=key.device, dtype=torch.float32)
        mask_rows_bias(mask, torch.arange(p0, p0 + r, device=key.device), b, t, bias)
        y = _yield_rows(query, key, bias, self._weights(key.device), scale, self.config.chunk_bytes)
        self._store(slot, p0, y)

    def _store(self, slot: int, p0: int, y: torch.Tensor) -> None:
        """Keep the yields ``y`` [b, r, h, bins] of positions ``p0 ...``: prompt rows (all_prompt)
        in one [b, P, h, bins] tensor, step rows (positions >= P - 1) in the buffers of :func:`_chunk_of`."""
        b, r, h, k = y.shape
        p = self.audio_mask.shape[1]
        self._last[slot] = p0 + r - 1
        if self.config.rows == "all_prompt" and p0 < p:
            rows = self._prompt_rows[slot]
            if rows is None:
                rows = self._prompt_rows[slot] = torch.full((b, p, h, k), float("nan"), device=y.device)
            n = min(r, p - p0)
            rows[:, p0 : p0 + n] = y[:, :n]
        s0 = p0 - (p - 1)
        if s0 < 0:
            if r + s0 <= 0:
                return
            y, s0 = y[:, -s0:], 0
        chunks = self._chunks[slot]
        i = 0
        while i < y.shape[1]:
            c, off, size = _chunk_of(s0 + i)
            while len(chunks) <= c:
                n_buf = _chunk_of(sum(x.shape[1] for x in chunks))[2]
                chunks.append(torch.full((b, n_buf, h, k), float("nan"), device=y.device))
            n = min(y.shape[1] - i, size - off)
            chunks[c][:, off : off + n] = y[:, i : i + n]
            i += n
        self._n_rows[slot] = max(self._n_rows[slot], s0 + y.shape[1])

    def _pre_forward(self, module, args, kwargs):
        if torch.compiler.is_compiling():  # a compiled decode step: the prefill was checked eagerly
            return None
        self._static = compat.is_static_cache(kwargs)
        if not compat.is_prefill(kwargs):  # decode step: the prompt was checked at prefill
            return None
        self._pos = [0] * len(self._modules)
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if not isinstance(input_ids, torch.Tensor):
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

    # --- results ----------------------------------------------------------------------------------

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

    def held_bytes(self) -> int:
        """Bytes of the tensors this recorder retains right now (each storage counted once): the
        yield buffers and the audio-key indicator.  The measure :mod:`auralens.bench` checks
        against ``L * B * H * N * bins * 4`` (it also walks the object graph independently)."""
        tensors = [t for c in self._chunks for t in c] + [t for t in self._prompt_rows if t is not None]
        tensors += list(self._weights_on.values()) + [self.audio_mask]
        seen: dict[int, int] = {}
        for t in tensors:
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
        return sum(seen.values())

    def latest(self, layer: int) -> Float[torch.Tensor, "batch head bin"]:
        """Yield of every head of ``layer`` at the most recent query row recorded so far.

        For live use inside the context (e.g. a gate that reacts to the listening signal while
        ``generate`` runs): the row was computed when its attention call ran, so this is a copy."""
        if layer not in self.layers:
            raise ConfigError(f"layer {layer!r}: not recorded; this recorder records {self.layers}")
        slot = self.layers.index(layer)
        pos = self._last[slot]
        if pos is None:
            raise ConfigError(f"layer {layer}: no query row recorded yet (run a forward first)")
        s = pos - (self.audio_mask.shape[1] - 1)
        if s < 0:
            rows = self._prompt_rows[slot]
            assert rows is not None
            return rows[:, pos].clone()
        c, off, _ = _chunk_of(s)
        return self._chunks[slot][c][:, off].clone()

    def _finalize(self) -> AttentionYield:
        b, p = self.audio_mask.shape
        n_layers, n_heads, n_bins = len(self.layers), self.arch.n_heads, self.config.time_bins
        n_steps = max(self._n_rows)
        device = self.weights.device
        for chunks in self._chunks:
            if chunks:
                device = chunks[0].device
                break
        steps = torch.full((b, n_steps, n_layers, n_heads, n_bins), float("nan"), device=device)
        for slot, chunks in enumerate(self._chunks):
            n = self._n_rows[slot]
            if n:
                steps[:, :n, slot] = torch.cat(chunks, 1)[:, :n]
        prompt = None
        if self.config.rows == "all_prompt":
            prompt = torch.full((b, p, n_layers, n_heads, n_bins), float("nan"), device=device)
            for slot, rows in enumerate(self._prompt_rows):
                if rows is not None:
                    prompt[:, :, slot] = rows
        return AttentionYield(binned=steps, prompt_binned=prompt, layers=self.layers, prompt_len=p)
