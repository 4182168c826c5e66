"""Adding a steering vector during ``generate`` (with the KV cache): ``h <- h + alpha * v``.

One context manager, two engines that compute exactly the same thing::

    with apply_vector(lm, vec, alpha=4.0, positions="last_prompt") as steer:
        out = lm.model.generate(**batch, max_new_tokens=32)     # or steer.generate(...)

- ``backend="torch"``: plain torch hooks on the vector's sites (a forward hook on decoder layer
  ``L`` for ``hook_resid_post``, a forward pre-hook on layer ``L`` for ``hook_resid_pre``, a
  forward pre-hook on its ``o_proj`` for ``attn.hook_z``; sites resolved by
  :meth:`auralens.interp.arch.Architecture.hook_point`, hooks installed by
  :func:`auralens.interp.capture.site_hooks`).  Every forward of the model inside
  the block is steered; the hooks are removed when the block exits, whatever happens in it.
- ``backend="nnsight"``: each ``generate`` call inside the block runs as one nnsight trace
  (``nnsight.NNsight(model).trace(fn=<generate>, **inputs)``) whose body loops over the
  generation steps with ``for step in tracer.iter[:]`` and assigns the steered value to the
  site's ``.output`` (resid_post) or ``.input`` (resid_pre, hook_z) in layer order.  So that
  ``lm.model.generate(...)`` in the block goes through it, the model instance's ``generate``
  attribute is shadowed for the duration of the block (and deleted on exit, whatever happens).
  The steering itself is fully expressed in nnsight (step iteration + value assignment, KV
  cache untouched).  What it cannot do is reach a call that does not go through the envoy:
  nnsight's per-module controllers are inert outside a trace, so a plain forward
  (``lm.model(**batch)``) in the block is *not* steered by this backend, only ``generate`` is
  (a forward is ``generate(max_new_tokens=1, output_logits=True, return_dict_in_generate=True)``).
  An open-ended ``tracer.iter[:]`` loop ends by a dangling request for the step after the last,
  which nnsight 0.8 reports as a warning by design; we silence that one message.

Positions (``positions=``), for a batch left-padded as the processor pads it:

- ``"last_prompt"``: only the final prompt token, during the prefill (the forward whose query
  covers the whole prompt).  With left padding that is column ``-1`` of every row.
- ``"generated"``: every generated token, i.e. each decoding step's single query position (the
  token generated at step ``t-1`` read back at step ``t``).  The last generated token is never
  read back, so it is never steered.
- ``"both"``: the two together.
- ``"all"``: every position: all prompt columns at the prefill (padding included; padded
  columns are masked out of attention, so what they carry reaches no other position) and every
  decoding step.  This is what llama.cpp does with a control vector (``build_cvec`` adds it to
  every token's block output, prompt included), so ``positions="all"`` is the mode whose
  results carry over to an exported GGUF control vector (:mod:`auralens.steering.formats`).
- ``"answer"``: only the decoding steps that emit the answer: in each row, every decoding step
  from the one whose query token completes the text ``answer :`` in that row's *generated*
  tokens (the marker of every answer format, :mod:`auralens.interp.cafe.formats`; for ``direct`` the
  first two generated tokens) to the end.  So the first answer token and everything after it are
  produced by steered forwards; the prompt and the tokens before the marker are not steered,
  and a row that never writes ``answer :`` is never steered.  The marker is found by decoding
  the row's generated tokens so far with the model's tokenizer (case-insensitive regex
  ``answer\s*:\s*$``), so it does not depend on how a tokenizer splits ``answer :``.

A forward is a prefill when its query length is > 1 and a decoding step when it is 1 (with the
KV cache, ``generate``'s default; ``use_cache=False`` is refused because every step would then
look like a prefill).  Both engines share one function, :func:`steer_tensor`, so the arithmetic
is identical to the bit.

Adaptive alpha (``adaptive=AdaptiveAlpha(heads=..., gain=...)``): ``alpha_t = alpha * g_t`` per
row, where ``g_t`` is driven by the *listening signal* ``y`` = the mean audio attention yield of
the specialist heads (Glazer, Aharon, Fetaya 2026), measured live during the same ``generate``
by a :class:`~auralens.interp.attention_yield.YieldRecorder` over the specialists' layers
(:meth:`~auralens.interp.attention_yield.YieldRecorder.latest` before each forward)::

    g_t = 1 + gain * clip(1 - y_{t-1} / y_0, 0, 1)

``y_0`` is the row's yield at the last prompt token (the prefill), ``y_{t-1}`` the yield at the
query of the previous step (the most recent complete forward; the one-step lag keeps the gate
causal whatever the specialists' layers are relative to the steered layer).  So the push is
``alpha`` while the heads listen as much as they did when the question was asked, and grows
linearly with the relative loss of listening (perception decay) up to ``(1 + gain) * alpha``
when they have stopped listening altogether; it never drops below ``alpha``.  At the prefill
(``last_prompt``) ``g = 1`` by definition.  Rows whose ``y_0`` is below ``floor`` (heads that
never listened) get ``g = 1``.  The gate closes the loop: ``y`` is measured on the steered
model.  The gains of every call are kept in ``Steering.gains`` and the recorder's yields in
``Steering.yields``.  The recorder is built per call from its ``input_ids``, so adaptive alpha
steers ``generate`` calls only (``generate`` is shadowed in the block with either engine; a
plain forward raises).

Input errors are raised before any generation: a vector for another architecture, width or
missing layer (:meth:`~auralens.steering.vector.SteeringVector.check_compatible`), a non-finite alpha,
an unknown position mode or backend, layers the vector does not have.

Public API: :data:`POSITION_MODES`, :data:`BACKENDS`, :class:`AdaptiveAlpha`,
:class:`~auralens.steering.rows.FoldedRows` (re-exported), :class:`Steering`, :func:`apply_vector`, :func:`steer_tensor`,
:func:`steered_generate`.
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from nnsight import NNsight
from torch import Tensor

from auralens.interp import compat
from auralens.interp.arch import get_attr_path, site_name
from auralens.interp.attention_yield import YieldRecorder, audio_mask_from_ids
from auralens.interp.capture import site_hooks
from auralens.interp.errors import ConfigError
from auralens.steering.checks import check_heads, parse_heads
from auralens.steering.registry import BACKENDS
from auralens.steering.rows import FoldedRows
from auralens.steering.vector import SteeringVector

__all__ = [
    "BACKENDS",
    "POSITION_MODES",
    "AdaptiveAlpha",
    "FoldedRows",
    "Steering",
    "apply_vector",
    "steer_tensor",
    "steered_generate",
]

#: the position rules implemented here (the built-in entries of :data:`auralens.steering.registry.POSITIONS`)
POSITION_MODES: tuple[str, ...] = ("last_prompt", "generated", "both", "answer", "all")
ANSWER_MARKER = re.compile(r"answer\s*:\s*$", re.IGNORECASE)
_DANGLING = r".*was never reached: the loop asked for a step the run did not make.*"


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AdaptiveAlpha:
    """``alpha_t = alpha * (1 + gain * clip(1 - y_{t-1} / y_0, 0, 1))`` (see the module docstring).

    Attributes:
        heads: the specialist heads as (layer, head) pairs whose mean audio yield is ``y``.
        gain: how much stronger the push gets when listening has stopped (``>= 0``).
        floor: rows with ``y_0 < floor`` are not gated (``g = 1``).
    """

    heads: tuple[tuple[int, int], ...]
    gain: float = 1.0
    floor: float = 1e-4

    def __post_init__(self) -> None:
        heads = parse_heads(self.heads)
        if not heads:
            raise ConfigError("AdaptiveAlpha.heads: expected at least one (layer, head), found none")
        object.__setattr__(self, "heads", heads)
        for name in ("gain", "floor"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"AdaptiveAlpha.{name}: expected a finite number >= 0, found {v!r}")
            object.__setattr__(self, name, float(v))

    def gate(self, y0: Tensor, y_prev: Tensor) -> Tensor:
        """``g`` per row from the reference and the previous step's yield (float32 tensors)."""
        y0, y_prev = y0.float(), y_prev.float()
        ok = y0 >= self.floor
        ratio = torch.where(ok, y_prev / torch.where(ok, y0, torch.ones_like(y0)), torch.ones_like(y0))
        return 1.0 + self.gain * (1.0 - ratio).clamp(0.0, 1.0)


@dataclass(frozen=True, kw_only=True)
class _Target:
    layer: int
    point: Any  # auralens.interp.arch.HookPoint: module path from the top model, "output" | "input"
    delta: Tensor | None  # alpha * v ([width], or [batch, width] per input), in the model's dtype and on its device
    fold: FoldedRows | None = None  # delta formed at the first prefill (see FoldedRows)


@dataclass(kw_only=True, eq=False)
class Steering:
    """What :func:`apply_vector` yields: the plan, a ``generate`` that is steered with either
    backend, and what happened (``n_edits``: site edits that added something; ``gains``: the
    adaptive gate's ``[batch]`` gains, one list per generate call, one tensor per step)."""

    lm: Any
    vector: Any
    alpha: float
    positions: str
    layers: tuple[int, ...]
    backend: str
    adaptive: AdaptiveAlpha | None
    targets: tuple[_Target, ...]
    n_edits: int = 0
    gains: list[list[Tensor]] = field(default_factory=list)
    yields: list[Any] = field(default_factory=list)
    _original_generate: Any = None
    _gate: Any = None
    _answer: Any = None
    _folded: dict[int, Tensor] = field(default_factory=dict)  # layer -> alpha * s(x) formed at the prefill
    _fold_check: Any = None

    def generate(self, **kwargs: Any) -> Any:
        """``lm.model.generate(**kwargs)``, steered."""
        _check_generate_kwargs(kwargs)
        engine = _nnsight_generate if self.backend == "nnsight" else _torch_generate
        if self._gate is None:
            return engine(self, kwargs)
        with self._gate.recording(kwargs):
            return engine(self, kwargs)

    # called by both engines at every site visit
    def _steer(self, h: Tensor, target: _Target) -> Tensor:
        delta = target.delta if target.fold is None else self._fold_delta(h, target)
        if delta.ndim == 2 and delta.shape[0] != h.shape[0]:
            raise ConfigError(
                f"per_row steering: the directions have {delta.shape[0]} rows, the batch has {h.shape[0]}"
            )
        scale = self._gate.scale(h, target.layer) if self._gate is not None else None
        if self._answer is not None and h.shape[-2] == 1:  # a decoding step: only rows past the marker
            mask = self._answer.mask(h)
            if not bool(mask.any()):
                return h
            scale = mask if scale is None else scale * mask
        out = steer_tensor(h, delta, self.positions, scale)
        if out is not h:
            self.n_edits += 1
        return out

    def _fold_delta(self, h: Tensor, target: _Target) -> Tensor:
        """``alpha * s(x)`` of a folded target: formed from the still unsteered ``h`` at the
        context's first prefill (column ``-1``: the last prompt token), kept afterwards."""
        fold = target.fold
        got = self._folded.get(target.layer)
        if got is not None:
            return got
        if h.shape[-2] == 1:
            raise ConfigError("folded per-input steering: a decoding step before any prefill; expected "
                              "generate's prefill of the prompts first")
        if h.shape[0] != fold.n_rows:
            raise ConfigError(
                f"per_row steering: the directions have {fold.n_rows} rows, the batch has {h.shape[0]}"
            )
        real = h[:, -1, :].float()
        s = fold.direction(real - fold.silence.to(device=real.device, dtype=torch.float32))
        delta = (self.alpha * s.to(torch.float32)).to(dtype=next(self.lm.model.parameters()).dtype)
        self._folded[target.layer] = delta
        return delta


def _check_generate_kwargs(kwargs: dict[str, Any]) -> None:
    if kwargs.get("use_cache") is False:
        raise ConfigError(
            "generate(use_cache=False): steering positions are told apart by the KV cache (prefill vs "
            "one-token decoding steps); expected use_cache=True (the default)"
        )


# --------------------------------------------------------------------------------------------
# The one function both engines use
# --------------------------------------------------------------------------------------------


def steer_tensor(
    h: Float[Tensor, "batch pos width"],
    delta: Float[Tensor, " width"] | Float[Tensor, "batch width"],
    positions: str,
    scale: Float[Tensor, " batch"] | None = None,
) -> Float[Tensor, "batch pos width"]:
    """``h`` with ``delta`` (times ``scale`` per row) added where ``positions`` says: one
    direction ``[width]`` for every row, or one per row ``[batch, width]`` (per-input and folded
    steering).

    A forward with more than one query position is the prefill (``last_prompt`` edits its last
    column); one with a single position is a decoding step (``generated`` edits it); ``all``
    edits every column of every forward.  Returns
    ``h`` itself when nothing is to be added at this forward."""
    prefill = h.shape[-2] > 1
    if positions == "all":  # every column of every forward, as llama.cpp's build_cvec
        add = delta if scale is None else scale.to(h.dtype)[:, None] * delta
        return h + (add if add.ndim == 1 else add[:, None, :])
    if positions == "answer":  # the row mask (which rows are past ``answer :``) comes as ``scale``
        positions = "generated"
    if prefill and positions in ("last_prompt", "both"):
        add = delta if scale is None else scale.to(h.dtype)[:, None] * delta
        out = h.clone()
        out[:, -1, :] = h[:, -1, :] + add
        return out
    if not prefill and positions in ("generated", "both"):
        add = delta if scale is None else scale.to(h.dtype)[:, None] * delta
        return h + (add if add.ndim == 1 else add[:, None, :])
    return h


# --------------------------------------------------------------------------------------------
# Planning and validation (before any generation)
# --------------------------------------------------------------------------------------------


def _plan(lm, vec, alpha: float, positions: str, layers: Sequence[int] | None, backend: str,
          per_row: Any = None) -> tuple[_Target, ...]:
    if not isinstance(vec, SteeringVector):
        raise ConfigError(f"vector: expected a auralens.steering.vector.SteeringVector, found {type(vec).__name__}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(float(alpha)):
        raise ConfigError(f"alpha: expected a finite real number, found {alpha!r}")
    if positions not in POSITION_MODES:
        raise ConfigError(f"positions: expected one of {list(POSITION_MODES)}, found {positions!r}")
    if backend not in BACKENDS:
        raise ConfigError(f"backend: expected one of {list(BACKENDS)}, found {backend!r}")
    vec.check_compatible(lm.arch)
    if layers is None:
        layers = vec.layers
    layers = tuple(int(L) for L in layers)
    missing = [L for L in layers if L not in vec.layers]
    if missing or not layers:
        raise ConfigError(
            f"layers: expected a non-empty subset of the vector's layers {list(vec.layers)}, found {list(layers)}"
        )

    param = next(lm.model.parameters())
    if isinstance(per_row, FoldedRows):
        if vec.hook != "hook_resid_post" or tuple(sorted(set(layers))) != (per_row.layer,):
            raise ConfigError(
                f"per_row: folded per-input directions steer exactly their layer {per_row.layer} "
                f"(hook_resid_post); found layers {sorted(set(layers))} of {vec.describe()}"
            )
        if per_row.silence.ndim != 2 or per_row.silence.shape[1] != vec.width:
            raise ConfigError(f"per_row: expected [batch, {vec.width}] silence activations, found "
                              f"{tuple(per_row.silence.shape)}")
        point = lm.arch.hook_point(site_name(per_row.layer, vec.hook))
        return (_Target(layer=per_row.layer, point=point, delta=None, fold=per_row),)
    rows = _check_per_row(vec, layers, per_row)
    targets = []
    for L in sorted(set(layers)):
        point = lm.arch.hook_point(site_name(L, vec.hook))
        d = vec.directions[L] if rows is None else rows[L]
        delta = (float(alpha) * d.to(torch.float32)).to(device=param.device, dtype=param.dtype)
        targets.append(_Target(layer=L, point=point, delta=delta))
    return tuple(targets)


def _check_per_row(vec, layers: Sequence[int], per_row: Any) -> dict[int, Tensor] | None:
    """Per-input directions ``{layer: [batch, width]}`` (one row per batch row), or ``None``."""
    if per_row is None:
        return None
    if not isinstance(per_row, dict):
        raise ConfigError(f"per_row: expected {{layer: [batch, width] tensor}} or None, found {type(per_row).__name__}")
    out: dict[int, Tensor] = {}
    sizes = set()
    for L in layers:
        t = per_row.get(L)
        if not isinstance(t, Tensor) or t.ndim != 2 or t.shape[1] != vec.width:
            raise ConfigError(
                f"per_row[{L}]: expected a [batch, {vec.width}] tensor for each steered layer, found "
                f"{None if t is None else tuple(getattr(t, 'shape', ()))}"
            )
        if not torch.isfinite(t).all():
            raise ConfigError(f"per_row[{L}]: expected finite values")
        sizes.add(int(t.shape[0]))
        out[L] = t
    if len(sizes) != 1:
        raise ConfigError(f"per_row: expected the same batch size at every layer, found {sorted(sizes)}")
    return out


# --------------------------------------------------------------------------------------------
# torch engine
# --------------------------------------------------------------------------------------------


def _torch_hooks(steer: Steering):
    """The torch engine: one hook per target, removed when the returned context exits."""

    return site_hooks(steer.lm.model, [(t.point, lambda h, t=t: steer._steer(h, t)) for t in steer.targets])


# --------------------------------------------------------------------------------------------
# nnsight engine
# --------------------------------------------------------------------------------------------


def _torch_generate(steer: Steering, kwargs: dict[str, Any]) -> Any:
    return steer._original_generate(**kwargs)


def _envoy(model):
    """``nnsight.NNsight(model)`` (imported here: importing nnsight patches torch globally)."""

    return NNsight(model)


def _nnsight_generate(steer: Steering, kwargs: dict[str, Any]) -> Any:
    """One ``generate`` as an nnsight trace that edits every site at every step."""

    _check_generate_kwargs(kwargs)
    envoy = _envoy(steer.lm.model)
    sites = [(get_attr_path(envoy, t.point.path), t) for t in steer.targets]
    generate = steer._original_generate
    results: list[Any] = []

    def run(**kw: Any) -> Any:
        out = generate(**kw)
        results.append(out)
        return out

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DANGLING)
        # The block below is captured and run by nnsight in a worker interleaved with
        # generate(): each `.output`/`.input` read parks until that module runs in the current
        # step (`tracer.iter[:]` moves the step pointer: step 0 is the prefill, step k the k-th
        # decoding step); assigning to it replaces what the module passes on.  The loop is
        # open-ended and ends when generate stops asking for steps.
        with envoy.trace(fn=run, **kwargs) as tracer:
            for _step in tracer.iter[:]:
                for env, t in sites:
                    if t.point.kind == "output":
                        env.output = steer._steer(env.output, t)
                    else:
                        env.input = steer._steer(env.input, t)
    if not results:
        raise RuntimeError("nnsight steering: generate did not run")  # pragma: no cover
    return results[0]


# --------------------------------------------------------------------------------------------
# The context manager
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def apply_vector(
    lm,
    vec,
    *,
    alpha: float,
    positions: str = "last_prompt",
    layers: Sequence[int] | None = None,
    adaptive: AdaptiveAlpha | None = None,
    backend: str = "torch",
    per_row: dict[int, Tensor] | None = None,
) -> Iterator[Steering]:
    """Steer ``lm`` with ``vec`` (``h <- h + alpha * v``) inside the block; see the module docstring.

    ``layers`` restricts steering to some of the vector's layers (default: all of them).
    ``per_row``: per-input directions ``{layer: [batch, width]}`` that replace ``vec``'s at those
    layers, row ``i`` added to batch row ``i`` (``h <- h + alpha * s(x_i)``, see
    :func:`auralens.steering.directions.per_input_directions`); every generate call in the block must
    then have that batch size.  Or a :class:`FoldedRows` (one layer, the only one steered):
    ``s(x)`` is formed from the block's first prefill (see :class:`FoldedRows`).
    Everything is validated before the block runs; the hooks (torch) or the ``generate``
    shadow (nnsight) are removed on exit, also when the block raises."""
    targets = _plan(lm, vec, alpha, positions, layers, backend, per_row)
    if adaptive is not None:
        if not isinstance(adaptive, AdaptiveAlpha):
            raise ConfigError(f"adaptive: expected an AdaptiveAlpha or None, found {type(adaptive).__name__}")
        check_heads(lm.arch, adaptive.heads)
    model = lm.model
    steer = Steering(
        lm=lm, vector=vec, alpha=float(alpha), positions=positions, layers=tuple(t.layer for t in targets),
        backend=backend, adaptive=adaptive, targets=targets,
    )
    # generate is shadowed when each call must be wrapped: by an nnsight trace, or by the
    # yield recorder that feeds the adaptive gate (it needs each call's audio positions)
    shadow = backend == "nnsight" or adaptive is not None
    if shadow and "generate" in model.__dict__:
        raise ConfigError(
            "apply_vector: the model's generate is already shadowed (nested steering with the nnsight "
            "backend or adaptive alpha?); expected one such steering context at a time on a model"
        )
    steer._original_generate = model.generate
    handles: list[Any] = []
    stack = contextlib.ExitStack()
    try:
        if adaptive is not None:
            steer._gate = _Gate(steer, adaptive)
            handles.append(model.register_forward_pre_hook(steer._gate.on_forward, with_kwargs=True))
        folds = [t.fold for t in targets if t.fold is not None]
        if folds:
            steer._fold_check = _FoldCheck(steer, folds[0])
            handles.append(model.register_forward_pre_hook(steer._fold_check.on_forward, with_kwargs=True))
        if positions == "answer":
            steer._answer = AnswerMask(lm)
            handles.append(model.register_forward_pre_hook(steer._answer.on_forward, with_kwargs=True))
        if backend == "torch":
            stack.enter_context(_torch_hooks(steer))
        if shadow:

            def generate(*args: Any, **kwargs: Any) -> Any:
                if args:
                    raise ConfigError("generate under steering: pass the inputs as keywords (**batch)")
                return steer.generate(**kwargs)

            model.__dict__["generate"] = generate
        yield steer
    finally:
        stack.close()
        for h in handles:
            h.remove()
        if shadow:
            model.__dict__.pop("generate", None)
        if steer._gate is not None:
            steer._gate.close()


def steered_generate(
    lm,
    vec,
    batch: dict[str, Any],
    *,
    alpha: float,
    positions: str = "last_prompt",
    layers: Sequence[int] | None = None,
    adaptive: AdaptiveAlpha | None = None,
    backend: str = "torch",
    **generate_kwargs: Any,
) -> Any:
    """``lm.model.generate(**batch, **generate_kwargs)`` with ``vec`` applied."""
    with apply_vector(lm, vec, alpha=alpha, positions=positions, layers=layers, adaptive=adaptive, backend=backend) as s:
        return s.generate(**batch, **generate_kwargs)


# --------------------------------------------------------------------------------------------
# Adaptive alpha: the listening signal
# --------------------------------------------------------------------------------------------


def _latest_yield(rec, layer: int) -> Float[Tensor, "batch head"]:
    """Audio yield of every head of ``layer`` at the most recent query row the recorder holds
    (:meth:`auralens.interp.attention_yield.YieldRecorder.latest`, bins summed)."""
    return rec.latest(layer).sum(-1)


class _Gate:
    """The adaptive gate of one :func:`apply_vector` context (see the module docstring).

    A forward pre-hook on the model (:meth:`on_forward`) sets the gain of the forward about to
    run from what the recorder measured in the previous one; every site of that forward uses it.
    Each generate call runs inside :meth:`recording` (a YieldRecorder over the specialists'
    layers, built from that call's ``input_ids``)."""

    def __init__(self, steer: Steering, adaptive: AdaptiveAlpha):
        self.steer, self.adaptive = steer, adaptive
        self.layers = tuple(sorted({L for L, _ in adaptive.heads}))
        self.heads_by_layer = {L: [h for hl, h in adaptive.heads if hl == L] for L in self.layers}
        self.rec = None
        self.y0: Tensor | None = None
        self.scale_now: Tensor | None = None

    @contextlib.contextmanager
    def recording(self, kwargs: dict[str, Any]):

        ids = kwargs.get("input_ids")
        if not isinstance(ids, Tensor):
            raise ConfigError("adaptive alpha: expected generate(input_ids=...) to find the audio positions")
        lm = self.steer.lm
        rec = YieldRecorder(lm.model, lm.arch, audio_mask_from_ids(ids, lm.arch), layers=self.layers)
        self.rec, self.y0, self.scale_now = rec, None, None
        self.steer.gains.append([])
        try:
            with rec:
                yield rec
            self.steer.yields.append(rec.result)
        finally:
            self.rec, self.y0, self.scale_now = None, None, None

    def on_forward(self, module, args, kwargs):
        if self.rec is None:
            raise ConfigError(
                "adaptive alpha steers generate() calls only (the listening signal is recorded per "
                "generate call); expected lm.model.generate(...) or steering.generate(...) in the block"
            )

        if compat.is_prefill(kwargs):  # prefill: g = 1 by definition
            self.scale_now = None
            return None
        y_prev = _mean_heads(self.rec, self.layers, self.heads_by_layer)  # [batch]
        if self.y0 is None:  # the previous forward was the prefill: its row is the last prompt token
            self.y0 = y_prev
        g = self.adaptive.gate(self.y0, y_prev)
        self.scale_now = g
        self.steer.gains[-1].append(g.detach().cpu())
        return None

    def scale(self, h: Tensor, layer: int) -> Tensor | None:
        return None if self.scale_now is None else self.scale_now.to(h.device)

    def close(self) -> None:
        self.rec = None


class AnswerMask:
    """Which rows have written ``answer :`` (``positions="answer"``; see the module docstring).

    A forward pre-hook on the model reads each forward's ``input_ids``: a prefill resets the
    rows; a decoding step appends its query token to each row's generated tokens and arms the
    rows whose decoded text now ends with ``answer :``.  Armed rows stay armed."""

    def __init__(self, lm):
        self.tok = getattr(lm.processor, "tokenizer", lm.processor)
        self.history: list[list[int]] = []
        self.armed: Tensor | None = None

    def on_forward(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not isinstance(ids, Tensor):
            raise ConfigError("positions='answer': expected input_ids in every forward to find the answer marker")
        if ids.shape[-1] > 1:  # the prefill: a new generate call
            self.history = [[] for _ in range(ids.shape[0])]
            self.armed = torch.zeros(ids.shape[0], dtype=torch.bool)
            return None
        if self.armed is None or len(self.history) != ids.shape[0]:
            raise ConfigError("positions='answer': a decoding step without its prefill (or another batch size)")
        for i, t in enumerate(ids[:, -1].tolist()):
            self.history[i].append(int(t))
            if not self.armed[i]:
                text = self.tok.decode(self.history[i], skip_special_tokens=True)
                self.armed[i] = bool(ANSWER_MARKER.search(text))
        return None

    def mask(self, h: Tensor) -> Tensor:
        return self.armed.to(device=h.device, dtype=torch.float32)


class _FoldCheck:
    """The exactness check of folded per-input steering (:class:`FoldedRows`): a forward
    pre-hook on the model that, at the prefill that forms ``s(x)`` (the context's first), makes
    sure it is the prefill of the same prompts as the silence pass (row by row, padding
    excluded) and not the silent prompts themselves (their audio features)."""

    def __init__(self, steer: Steering, fold: FoldedRows):
        self.steer, self.fold = steer, fold

    def on_forward(self, module, args, kwargs):
        if self.fold.layer in self.steer._folded:  # s(x) already formed: later forwards are not checked
            return None
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not isinstance(ids, Tensor):
            raise ConfigError("folded per-input steering: expected input_ids in the prefill to check its prompts")
        if ids.shape[-1] == 1:
            return None  # a decoding step before any prefill: refused by the steering hook
        if self.fold.prompts is not None:
            mask = kwargs.get("attention_mask")
            mask = torch.ones_like(ids, dtype=torch.bool) if not isinstance(mask, Tensor) else mask.bool()
            if ids.shape[0] != len(self.fold.prompts):
                raise ConfigError(f"per_row steering: the directions have {len(self.fold.prompts)} rows, the "
                                  f"batch has {ids.shape[0]}")
            for i, want in enumerate(self.fold.prompts):
                if tuple(int(t) for t in ids[i][mask[i]].tolist()) != want:
                    raise ConfigError(
                        f"folded per-input steering: row {i} of the prefill is not the prompt its silence pass "
                        "was run on; expected generate() on the same items, in the same order"
                    )
        feats = self.fold.features or {}
        if feats and all(isinstance(kwargs.get(k), Tensor) and kwargs[k].shape == v.shape
                         and torch.equal(kwargs[k].to(v.device), v) for k, v in feats.items()):
            raise ConfigError("folded per-input steering: the prefill that forms s(x) has the silent audio; "
                              "expected generate() on the real audio first in the steering context")
        return None


def _mean_heads(rec, layers, heads_by_layer) -> Float[Tensor, " batch"]:
    """Mean live yield over the specialist heads (each head weighs the same)."""
    parts = [_latest_yield(rec, L)[:, heads_by_layer[L]] for L in layers]
    return torch.cat(parts, dim=-1).mean(-1)
