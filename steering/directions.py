"""Audio-minus-silence directions, and the controls they are compared with.

The direction at decoder layer ``L`` is the mean over items of

    h_L(x with its audio)  -  h_L(x with the audio replaced by silence of the same length)

read at one position of the prompt.  The silent twin of a prompt is token-for-token identical
(same number of audio placeholder tokens, same text), so the two activations are compared at the
same position and differ only by what the audio encoder heard.

Sites (what ``h_L`` is):

- ``hook_resid_post``: the output of decoder layer ``L`` ([d_model]).
- ``attn.hook_z``: the per-head attention output of layer ``L``, i.e. the input of ``o_proj``
  ([head * head_dim]; head ``h`` owns the slice ``h*head_dim:(h+1)*head_dim``).

Positions (one row of features per item):

- ``"last_prompt"``: the final prompt token (the position the paper steers; the answer's first
  token is read from it);
- ``"audio_mean"``: the mean over the audio placeholder positions;
- an ``int`` ``p``: the ``p``-th real token of the prompt (``p < 0`` counts from the end, so
  ``-1`` is ``"last_prompt"``); padding is never counted.

A comma-separated mix such as ``"last_prompt,audio_mean"`` averages the named reductions.

Head restriction (``heads=[(layer, head), ...]``, e.g. the audio specialists of
:func:`auralens.interp.listening.top_k`): only those heads' outputs are used, every other head's slice of
``z`` is zeroed before the difference is taken.

- at ``attn.hook_z`` the direction is the masked mean difference itself: it is non-zero only in
  the chosen heads' ``head_dim`` slices and is added to the input of ``o_proj``;
- at ``hook_resid_post`` the direction is that masked difference *mapped through o_proj*:
  ``v_L = W_O^L @ (mask_L * mean_i Δz_i^L)`` (``W_O`` is ``o_proj.weight``; a bias, where an
  architecture has one, cancels in a difference), i.e. the chosen heads' direct write into the
  residual stream.  Added at the output of layer ``L`` it bypasses layer ``L``'s MLP, which sees
  the hook_z version.  Only heads of the steered layers count: a head of layer ``L`` is used by
  the direction of layer ``L``.

Normalisation: ``"none"`` (the raw mean difference), ``"unit"`` (L2 norm 1), or ``"resid_norm"``
(L2 norm equal to the mean norm, over items with their audio, of the activation at that site,
layer and position — restricted to the chosen heads for ``attn.hook_z`` — so ``alpha = 1`` adds
a vector as large as a typical activation there).  Raw and target norms go to ``extra``.

Controls, built the same way: :func:`random_direction` (seeded Gaussian direction with the same
norm per layer and the same support) and :func:`random_heads` (audio-minus-silence restricted to
the same number of heads per layer, drawn with a seed from the heads *not* in the original set,
overlapping it as little as possible when too few remain, then rescaled to the vector's norm at every layer, so the control differs
in which heads are used and not in size).

Capture goes through the one engine, :func:`auralens.interp.capture.capture` (torch hooks on the
decoder-layer outputs and ``o_proj`` inputs, resolved by :mod:`auralens.interp.arch`), reducing
``[batch, pos, width]`` to ``[batch, width]`` inside the hook; the forward stops after the
deepest requested layer.  Left padding: ``position_ids`` are derived from the attention mask
exactly as ``generate`` derives them (:func:`auralens.interp.capture.with_position_ids`), so a row's
features do not depend on its batch (checked against one-by-one capture in the tests).

Public API: :data:`POSITIONS`, :data:`NORMALIZATIONS`, :data:`SITES`, :class:`PairedActivations`,
:func:`collect_paired`, :func:`direction_from`, :func:`audio_minus_silence`,
:func:`random_direction`, :func:`random_heads`, :func:`fit_with_controls`, :func:`parse_positions`,
:func:`parse_heads`, :func:`per_input_directions`, :func:`can_fold`, :func:`silence_rows`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from auralens.interp import distributed as dist
from auralens.interp.arch import site_name
from auralens.interp.capture import capture, with_position_ids
from auralens.interp.datasets import fingerprint
from auralens.interp.errors import ConfigError, PromptError
from auralens.interp.generation import batches, cast_features, model_inputs
from auralens.steering.checks import (  # noqa: F401 (POSITIONS, METHODS: re-exported)
    METHODS,
    NORMALIZATIONS,
    POSITIONS,
    SITES,
    Position,
    check_heads,
    check_layers,
    check_site,
    parse_heads,
    parse_positions,
)
from auralens.steering.rows import FoldedRows
from auralens.steering.vector import SITE_PATTERNS, SteeringVector

__all__ = [
    "NORMALIZATIONS",
    "POSITIONS",
    "SITES",
    "PairedActivations",
    "audio_minus_silence",
    "can_fold",
    "collect_paired",
    "direction_from",
    "fit_with_controls",
    "parse_heads",
    "parse_positions",
    "per_input_directions",
    "random_direction",
    "random_heads",
    "silence_rows",
]


# --------------------------------------------------------------------------------------------
# Capture
# --------------------------------------------------------------------------------------------


@dataclass(kw_only=True, eq=False)
class PairedActivations:
    """Per-item activations with the audio and with silence, reduced to one position.

    ``resid[mode]``: ``[item, layer, d_model]`` (output of each decoder layer in ``layers``),
    ``z[mode]``: ``[item, layer, head*head_dim]`` (input of each layer's ``o_proj``), for
    ``mode`` in ``("real", "silence")``; float32 on the CPU.
    """

    layers: tuple[int, ...]
    positions: tuple[Position, ...]
    fmt: str
    item_ids: list[str]
    data_fingerprint: str
    resid: dict[str, Float[Tensor, "item layer d_model"]]
    z: dict[str, Float[Tensor, "item layer hz"]]
    #: each item's prompt tokens (padding excluded), when the items were one local batch
    prompts: tuple[tuple[int, ...], ...] | None = None
    #: the floating-point model inputs (audio features) of the last mode collected, when one local batch
    features: dict[str, Tensor] | None = None

    def layer_index(self, layer: int) -> int:
        if layer not in self.layers:
            raise ConfigError(f"layer {layer}: expected one of the collected layers {list(self.layers)}")
        return self.layers.index(layer)

    def diff(self, kind: str) -> Float[Tensor, "item layer width"]:
        src = self.resid if kind == "resid" else self.z
        return src["real"] - src["silence"]


def _position_weights(
    ids: Tensor, mask: Tensor, audio_token_id: int, positions: Sequence[Position], item_ids: Sequence[str]
) -> Float[Tensor, "batch pos"]:
    """[batch, pos] averaging weights of the requested position reduction(s)."""
    b, t = ids.shape
    w = torch.zeros((b, t), dtype=torch.float32)
    mask = mask.cpu()
    audio = ((ids.cpu() == audio_token_id) & (mask == 1)).float()
    lengths = mask.sum(-1)
    for p in positions:
        part = torch.zeros((b, t), dtype=torch.float32)
        if p == "last_prompt":
            part[:, t - 1] = 1.0
        elif p == "audio_mean":
            n = audio.sum(-1, keepdim=True)
            empty = [item_ids[i] for i in range(b) if n[i] == 0]
            if empty:
                raise PromptError(
                    f"items {empty}: expected audio tokens (id {audio_token_id}) for position "
                    "'audio_mean', found none"
                )
            part = audio / n
        else:
            for i in range(b):
                n_i = int(lengths[i])
                if not -n_i <= p < n_i:
                    raise ConfigError(
                        f"position {p}: item {item_ids[i]!r} has {n_i} prompt tokens, expected "
                        f"{-n_i} <= position < {n_i}"
                    )
                col = t + p if p < 0 else (t - n_i) + p
                part[i, col] = 1.0
        w += part
    return w / len(positions)


def _capture_batch(lm, inputs: dict[str, Any], layers: Sequence[int], weights: Tensor, sites: Sequence[str]):
    """One forward through the capture engine; {site: [batch, layer, width]} (float32, CPU)."""

    names = {(hook, L): site_name(L, hook) for hook in sites for L in layers}
    got = capture(lm, inputs, list(names.values()), weights={s: weights for s in names.values()})
    return {hook: torch.stack([got[names[(hook, L)]].cpu() for L in layers], dim=1) for hook in sites}


def _capture_chunk(lm, chunk, *, layers, positions, fmt: str, modes, sites):
    """One batch of items through each of ``modes`` (real / silence): the reduced activations
    ``{mode: {site: tensor}}``, the last mode's prompt tokens per row (padding excluded) and its
    floating-point inputs.  The passes must have the same input_ids (same audio length)."""

    out: dict[str, dict[str, Tensor]] = {}
    prompts: list[tuple[int, ...]] = []
    features: dict[str, Tensor] | None = None
    ids_ref = None
    for mode in modes:
        batch = model_inputs(lm, chunk, fmt, mode)
        inputs = with_position_ids(lm.arch, cast_features(lm, batch))
        ids = inputs["input_ids"]
        if mode == modes[-1]:
            mask = inputs["attention_mask"].bool()
            prompts = [tuple(int(t) for t in ids[i][mask[i]].tolist()) for i in range(ids.shape[0])]
            features = {k: v for k, v in inputs.items() if isinstance(v, Tensor) and v.is_floating_point()}
        if ids_ref is None:
            ids_ref = ids
        elif not torch.equal(ids_ref, ids):
            raise PromptError(
                f"items {[it.item_id for it in chunk]}: expected the silent prompt to have the same "
                "tokens as the real one (same audio length), found different input_ids"
            )
        w = _position_weights(ids, inputs["attention_mask"], lm.arch.audio_token_id, positions,
                              [it.item_id for it in chunk])
        out[mode] = _capture_batch(lm, inputs, layers, w, sites)
    return out, prompts, features


def _gather_parts(parts, mine: list[int], *, n_chunks: int, modes, sites):
    """Every rank's captured batches (``parts[site][mode]``, this rank's batches ``mine``) gathered
    to every rank, in batch order (:mod:`auralens.interp.distributed`)."""

    got = dist.gather_objects({j: {s: {m: parts[s][m][i].cpu() for m in parts[s]} for s in sites}
                               for i, j in enumerate(mine)})
    by_batch = {j: v for part in got for j, v in part.items()}
    return {s: {m: [by_batch[j][s][m] for j in range(n_chunks)] for m in modes} for s in sites}


def collect_paired(
    lm,
    items: Sequence[Any],
    *,
    layers: Sequence[int],
    positions: Position | Sequence[Position] = "last_prompt",
    fmt: str = "direct",
    batch_size: int = 8,
    progress: bool = False,
    modes: Sequence[str] = ("real", "silence"),
) -> PairedActivations:
    """Activations of every item with its audio and with silence of the same length, at each
    of ``layers``, reduced to ``positions`` (see the module docstring).

    ``modes``: which passes to run (default both; ``("silence",)`` for the folded per-input
    path, :func:`silence_rows`, whose real pass is the generation's own prefill)."""

    if not items:
        raise ConfigError("items: expected at least one item to fit a direction on, found none")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size: expected a positive integer, found {batch_size!r}")
    layers = check_layers(lm.arch, layers)
    pos = parse_positions(positions)
    modes = tuple(modes)
    if not modes or len(set(modes)) != len(modes) or any(m not in ("real", "silence") for m in modes):
        raise ConfigError(f"modes: expected distinct values among ['real', 'silence'], found {list(modes)}")
    sites = ("hook_resid_post", "attn.hook_z")
    parts: dict[str, dict[str, list[Tensor]]] = {s: {m: [] for m in modes} for s in sites}
    prompts: list[tuple[int, ...]] = []
    features: dict[str, Tensor] | None = None

    chunks = list(batches(list(items), batch_size))
    # under a multi-process launch each rank captures every world-th batch; the per-item
    # reductions are gathered to every rank below, in batch order (auralens.interp.distributed)
    split = dist.collective()
    mine = dist.shard(list(range(len(chunks)))) if split else list(range(len(chunks)))
    bar = None
    if progress:

        bar = tqdm(total=sum(len(chunks[j]) for j in mine), desc="audio-minus-silence", unit="item")
    for chunk in [chunks[j] for j in mine]:
        got, chunk_prompts, features = _capture_chunk(lm, chunk, layers=layers, positions=pos, fmt=fmt, modes=modes,
                                                      sites=sites)
        prompts.extend(chunk_prompts)
        for mode in modes:
            for s in sites:
                parts[s][mode].append(got[mode][s])
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    if split:
        parts = _gather_parts(parts, mine, n_chunks=len(chunks), modes=modes, sites=sites)
    cat = {s: {m: torch.cat(v) for m, v in parts[s].items()} for s in sites}
    one_batch = len(chunks) == 1 and not split
    return PairedActivations(
        layers=layers,
        positions=pos,
        fmt=fmt,
        item_ids=[it.item_id for it in items],
        data_fingerprint=fingerprint(list(items)),
        resid=cat["hook_resid_post"],
        z=cat["attn.hook_z"],
        prompts=tuple(prompts) if one_batch else None,
        features=features if one_batch else None,
    )


# --------------------------------------------------------------------------------------------
# Directions
# --------------------------------------------------------------------------------------------


def head_mask(arch, layer: int, heads: Sequence[tuple[int, int]]) -> Tensor:
    """[head*head_dim] bool mask of the slices of ``heads`` at ``layer``."""
    m = torch.zeros(arch.n_heads * arch.head_dim, dtype=torch.bool)
    for L, h in heads:
        if L == layer:
            m[h * arch.head_dim : (h + 1) * arch.head_dim] = True
    return m


def _o_proj_weight(lm, layer: int) -> Tensor:
    w = lm.arch.o_proj(lm.model, layer).weight
    return w.detach().float().cpu()  # [d_model, head*head_dim]


def _pos_label(pos: Sequence[Position]) -> str:
    return ",".join(str(p) for p in pos)


def _target_norm(acts: PairedActivations, arch, L: int, i: int, *, hook: str, heads, normalize: str,
                 norm: float) -> float:
    """The norm a direction of raw norm ``norm`` at layer ``L`` (index ``i`` of ``acts``) is scaled
    to: 1 (``unit``) or the mean norm of the real activations there (``resid_norm``; the heads'
    slices for a head-restricted ``attn.hook_z`` direction).  A zero difference is refused."""
    if not norm > 0:
        raise ConfigError(
            f"normalize={normalize!r}: the audio-minus-silence difference at layer {L} is zero "
            "(the model ignores the audio there?); expected a non-zero direction"
        )
    if normalize == "unit":
        return 1.0
    real = acts.z["real"][:, i] if hook == "attn.hook_z" else acts.resid["real"][:, i]
    if hook == "attn.hook_z" and heads:
        real = real * head_mask(arch, L, heads).float()
    return float(torch.linalg.vector_norm(real, dim=-1).mean())


def direction_from(
    acts: PairedActivations,
    lm,
    *,
    site: str = "hook_resid_post",
    heads: Sequence[tuple[int, int]] | None = None,
    layers: Sequence[int] | None = None,
    normalize: str = "none",
    method: str = "audio_minus_silence",
    extra: dict[str, Any] | None = None,
):
    """The audio-minus-silence :class:`~auralens.steering.vector.SteeringVector` from collected
    activations (see the module docstring for sites, heads and normalisation)."""
    hook = check_site(site)
    if normalize not in NORMALIZATIONS:
        raise ConfigError(f"normalize: expected one of {list(NORMALIZATIONS)}, found {normalize!r}")
    arch = lm.arch
    heads = tuple(heads or ())
    check_heads(arch, heads)
    if layers is None:
        layers = sorted({L for L, _ in heads}) if heads else acts.layers
    layers = check_layers(arch, layers)
    if heads:
        empty = [L for L in layers if not any(hl == L for hl, _ in heads)]
        if empty:
            raise ConfigError(
                f"layers {empty}: a head-restricted direction needs chosen heads in each steered layer, "
                f"found heads only in layers {sorted({L for L, _ in heads})}"
            )
    dz = acts.diff("z").mean(0)  # [layer, hz]
    dr = acts.diff("resid").mean(0)  # [layer, d_model]
    directions: dict[int, Tensor] = {}
    raw_norm: dict[str, float] = {}
    target: dict[str, float] = {}
    for L in layers:
        i = acts.layer_index(L)
        if heads:
            mask = head_mask(arch, L, heads).float()
            masked = dz[i] * mask
            v = masked if hook == "attn.hook_z" else _o_proj_weight(lm, L) @ masked
        else:
            v = dz[i] if hook == "attn.hook_z" else dr[i]
        norm = float(torch.linalg.vector_norm(v))
        raw_norm[str(L)] = norm
        if normalize != "none":
            goal = _target_norm(acts, arch, L, i, hook=hook, heads=heads, normalize=normalize, norm=norm)
            target[str(L)] = goal
            v = v * (goal / norm)
        directions[L] = v.float().contiguous()
    used_heads = tuple(h for h in heads if h[0] in layers)
    meta = {
        "positions": _pos_label(acts.positions),
        "normalize": normalize,
        "format": acts.fmt,
        "n_items": len(acts.item_ids),
        "n_heads": arch.n_heads,
        "head_dim": arch.head_dim,
        "raw_norm": raw_norm,
        **({"target_norm": target} if target else {}),
        **(extra or {}),
    }
    return SteeringVector(
        directions=directions,
        model_id=lm.model_id,
        architecture=arch.name,
        d_model=arch.d_model,
        n_layers=arch.n_layers,
        method=method,
        data_fingerprint=acts.data_fingerprint,
        site=SITE_PATTERNS[hook],
        dtype=torch.float32,
        heads=used_heads,
        extra=meta,
    )


def audio_minus_silence(
    lm,
    items: Sequence[Any],
    *,
    layers: Sequence[int] | None = None,
    positions: Position | Sequence[Position] = "last_prompt",
    site: str = "hook_resid_post",
    heads: Any = None,
    normalize: str = "none",
    fmt: str = "direct",
    batch_size: int = 8,
    progress: bool = False,
):
    """Collect activations on ``items`` and return the audio-minus-silence vector.

    ``layers`` defaults to the layers of ``heads`` when heads are given (else required)."""
    heads = parse_heads(heads)
    if layers is None:
        if not heads:
            raise ConfigError("layers: expected the decoder layers to steer (or heads to take them from), found none")
        layers = sorted({L for L, _ in heads})
    acts = collect_paired(lm, items, layers=layers, positions=positions, fmt=fmt, batch_size=batch_size, progress=progress)
    return direction_from(acts, lm, site=site, heads=heads, layers=layers, normalize=normalize)


# --------------------------------------------------------------------------------------------
# Controls
# --------------------------------------------------------------------------------------------


def random_direction(vec, *, seed: int = 0):
    """A seeded Gaussian direction with the same norm as ``vec`` at every layer.

    Same support: for a head-restricted ``attn.hook_z`` vector only the same heads' slices are
    non-zero; otherwise the whole width.  Method ``"random_direction"``."""

    g = torch.Generator().manual_seed(int(seed))
    out = {}
    for L, v in vec.directions.items():
        r = torch.randn(v.shape[0], generator=g, dtype=torch.float32)
        if vec.hook == "attn.hook_z" and vec.heads:
            hd = _head_dim_from(vec)
            mask = torch.zeros(v.shape[0], dtype=torch.bool)
            for hl, h in vec.heads:
                if hl == L:
                    mask[h * hd : (h + 1) * hd] = True
            r = r * mask.float()
        norm = float(torch.linalg.vector_norm(v.float()))
        rn = float(torch.linalg.vector_norm(r))
        out[L] = (r * (norm / rn if rn > 0 else 0.0)).to(v.dtype)
    keep_heads = vec.heads if vec.hook == "attn.hook_z" else ()
    extra = {**vec.extra, "control_of": vec.method, "seed": int(seed)}
    return replace(vec, directions=out, method="random_direction", heads=keep_heads, extra=extra, source=None)


def _head_dim_from(vec) -> int:
    n = vec.extra.get("head_dim")
    if isinstance(n, int) and n > 0 and vec.width % n == 0:
        return n
    raise ConfigError(
        f"random_direction: vector {vec.describe()} is head-restricted at attn.hook_z but does not "
        f"record its head width; expected extra['head_dim'] dividing {vec.width}, found {n!r}"
    )


def draw_random_heads(arch, heads: Sequence[tuple[int, int]], *, seed: int = 0) -> tuple[tuple[int, int], ...]:
    """As many heads per layer as ``heads`` has, drawn without replacement (seeded) from the
    heads of that layer not in ``heads``.  When fewer remain than are needed (more than half
    the layer's heads chosen), all the others are taken and the rest drawn from the chosen
    ones, so the overlap with ``heads`` is the smallest possible (the set differs from
    ``heads`` unless every head of the layer was chosen)."""
    rng = np.random.default_rng(int(seed))
    out: list[tuple[int, int]] = []
    for L in sorted({L for L, _ in heads}):
        chosen = sorted({h for hl, h in heads if hl == L})
        others = [h for h in range(arch.n_heads) if h not in chosen]
        k = len(chosen)
        if len(others) >= k:
            picked = [int(h) for h in rng.choice(others, size=k, replace=False)]
        else:
            picked = others + [int(h) for h in rng.choice(chosen, size=k - len(others), replace=False)]
        out.extend((L, h) for h in sorted(picked))
    return tuple(out)


def random_heads(acts: PairedActivations, lm, vec, *, seed: int = 0):
    """Audio-minus-silence restricted to random heads (same number per layer as ``vec``),
    built exactly like ``vec`` (same site, layers, normalisation).  Method ``"random_heads"``."""
    if not vec.heads:
        raise ConfigError(
            f"random_heads: vector {vec.describe()} is not head-restricted; expected a vector with heads"
        )

    drawn = draw_random_heads(lm.arch, vec.heads, seed=seed)
    overlap = len(set(drawn) & set(vec.heads))
    ctrl = direction_from(
        acts, lm, site=vec.hook, heads=drawn, layers=vec.layers,
        normalize=vec.extra.get("normalize", "none"), method="random_heads",
        extra={"control_of": vec.method, "seed": int(seed), "heads_shared_with_vector": overlap,
               **{k: v for k, v in vec.extra.items() if k == "fit"}},
    )
    # same norm as the vector at every layer: the control differs in *which* heads, not in size
    dirs = {}
    for L, v in ctrl.directions.items():
        n_ctrl = float(torch.linalg.vector_norm(v))
        n_vec = float(torch.linalg.vector_norm(vec.directions[L].float()))
        dirs[L] = v * (n_vec / n_ctrl) if n_ctrl > 0 else v
    return replace(ctrl, directions=dirs, extra={**ctrl.extra, "matched_norm": True})


def fit_with_controls(
    lm,
    items: Sequence[Any],
    *,
    layers: Sequence[int] | None = None,
    positions: Position | Sequence[Position] = "last_prompt",
    site: str = "hook_resid_post",
    heads: Any = None,
    normalize: str = "none",
    fmt: str = "direct",
    batch_size: int = 8,
    seed: int = 0,
    controls: bool = True,
    extra: dict[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The audio-minus-silence vector and, with ``controls``, its controls, from one collection:
    ``{"audio_minus_silence": v, "random_direction": r, "random_heads": h}`` (the last only
    for a head-restricted vector)."""
    heads = parse_heads(heads)
    check_heads(lm.arch, heads)
    if layers is None:
        if not heads:
            raise ConfigError("layers: expected the decoder layers to steer (or heads to take them from), found none")
        layers = sorted({L for L, _ in heads})
    acts = collect_paired(lm, items, layers=layers, positions=positions, fmt=fmt, batch_size=batch_size, progress=progress)
    vec = direction_from(acts, lm, site=site, heads=heads, layers=layers, normalize=normalize, extra=extra)
    out = {"audio_minus_silence": vec}
    if controls:
        out["random_direction"] = random_direction(vec, seed=seed)
        if vec.heads:
            out["random_heads"] = random_heads(acts, lm, vec, seed=seed)
    return out


# --------------------------------------------------------------------------------------------
# Per-input directions s(x)
# --------------------------------------------------------------------------------------------


def _check_per_input(vec, layers: Sequence[int] | None) -> tuple[int, ...]:
    if vec.hook != "hook_resid_post" or vec.heads:
        raise ConfigError(
            f"per-input steering: expected a residual-stream vector without heads (hook_resid_post), "
            f"found {vec.describe()}"
        )
    layers = tuple(vec.layers if layers is None else layers)
    missing = [L for L in layers if L not in vec.layers]
    if missing:
        raise ConfigError(f"layers {missing}: the vector has directions at layers {list(vec.layers)} only")
    return layers


def _scale_like(vec, layer: int, s: Tensor) -> Tensor:
    """``s`` scaled like ``vec`` at ``layer`` (``target_norm / raw_norm`` when ``vec`` was normalised)."""
    raw = vec.extra.get("raw_norm", {}) or {}
    target = vec.extra.get("target_norm", {}) or {}
    if str(layer) in target and float(raw.get(str(layer), 0.0)) > 0:
        s = s * (float(target[str(layer)]) / float(raw[str(layer)]))
    return s


def per_input_directions(
    lm,
    items: Sequence[Any],
    vec,
    *,
    layers: Sequence[int] | None = None,
    fmt: str | None = None,
    batch_size: int = 8,
) -> dict[int, Float[Tensor, "item d_model"]]:
    """The per-input direction ``s(x) = h_L(x) - h_L(x with silence of the same length)`` of
    every item, at each of ``layers`` (default: ``vec``'s), read at ``vec``'s fit positions
    (``extra['positions']``, e.g. the last prompt token) — the same quantity whose mean over the
    calibration split is ``vec`` (the paper's adaptive variant: one silence forward per item,
    beside the real one, both through :func:`collect_paired`).  :func:`silence_rows` is the
    folded variant that runs only the silence forward (the real one is the generation's prefill).

    Scaled like ``vec``: when ``vec`` was normalised (``unit``/``resid_norm``), ``s(x)`` at
    layer ``L`` is multiplied by the same factor ``target_norm[L] / raw_norm[L]``, so that the
    calibration mean of ``s(x)`` is ``vec`` and one beta means the same push on average.
    Residual-stream vectors only (``hook_resid_post``, no head restriction)."""
    layers = _check_per_input(vec, layers)
    pos = parse_positions(vec.extra.get("positions", "last_prompt"))
    acts = collect_paired(lm, items, layers=layers, positions=pos, fmt=fmt or vec.extra.get("format", "direct"),
                          batch_size=batch_size)
    diff = acts.diff("resid")  # [item, layer, d_model]
    out = {}
    for i, L in enumerate(acts.layers):
        out[L] = _scale_like(vec, L, diff[:, i]).float().contiguous()
    return out


def can_fold(vec, layers: Sequence[int] | None) -> bool:
    """Whether ``s(x)``'s real pass can be folded into the generation's prefill exactly: one
    steered layer (so nothing upstream of it is modified when it is read), a residual-stream
    vector without heads read at the last prompt token (``extra['positions']`` ``last_prompt``
    or ``-1``: with left padding the prefill's column ``-1`` of every row)."""
    if vec.hook != "hook_resid_post" or vec.heads:
        return False
    layers = tuple(vec.layers if layers is None else layers)
    if len(layers) != 1 or layers[0] not in vec.layers:
        return False
    try:
        pos = parse_positions(vec.extra.get("positions", "last_prompt"))
    except ConfigError:
        return False
    return pos in (("last_prompt",), (-1,))


def silence_rows(
    lm,
    items: Sequence[Any],
    vec,
    *,
    layer: int,
    fmt: str | None = None,
    batch_size: int = 8,
    finish: Any = None,
):
    """The folded per-input direction (:class:`auralens.steering.rows.FoldedRows`): only
    ``h_L(silence)`` at the last prompt token is computed here (one forward per item, through
    :func:`collect_paired` exactly as :func:`per_input_directions` computes it); the real
    ``h_L`` is read by the steering hook from the generation's own prefill, where
    ``s(x) = h_L(real) - h_L(silence)`` is formed and scaled like ``vec``, then passed through
    ``finish(layer, s)`` when given (the matched random control of
    :class:`auralens.steering.evaluate.PerInput`).  Refused unless :func:`can_fold` (``vec``, ``[layer]``)."""
    _check_per_input(vec, [layer])
    if not can_fold(vec, [layer]):
        raise ConfigError(
            f"folded per-input steering: expected one layer of a residual-stream vector read at the last "
            f"prompt token, found layer {layer} of {vec.describe()} at positions {vec.extra.get('positions')!r}"
        )
    pos = parse_positions(vec.extra.get("positions", "last_prompt"))
    acts = collect_paired(lm, items, layers=[layer], positions=pos, fmt=fmt or vec.extra.get("format", "direct"),
                          batch_size=batch_size, modes=("silence",))
    L = int(layer)

    def direction(s: Tensor) -> Tensor:
        s = _scale_like(vec, L, s).float()
        return s if finish is None else finish(L, s)

    return FoldedRows(layer=L, silence=acts.resid["silence"][:, 0].float().contiguous(), direction=direction,
                      prompts=acts.prompts, features=acts.features)
