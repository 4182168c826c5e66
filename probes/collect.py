"""Activation collection for probes: residual stream per layer, reduced to a few positions.

Everything is read through the one capture engine, :func:`auralens.interp.capture.capture` (plain torch
hooks at the canonical sites, resolved by :mod:`auralens.interp.arch`): one forward per batch reads the
output of every requested layer and reduces it to positions *inside the hook*, so only the
reduced ``[batch, slot, d_model]`` tensors are kept and a 7B model with long audio never
materialises ``[batch, pos, d_model]`` for every layer at once; the forward stops after the
deepest requested layer. :func:`trace_sites` reads the same sites through **nnsight**, an
independent implementation the tests compare the engine with.

Positions (one row of features per item and format, or per item, format and reasoning step):

- ``audio_mean``   mean over the audio-token positions (``input_ids == arch.audio_token_id``);
                   for audio-encoder sites, mean over the encoder's valid frames
- ``last_prompt``  the last prompt token (where the answer is about to be generated)
- ``step_mean``    mean over the tokens of reasoning step ``s`` of the model's own greedy
                   generation: generate first, then one forward over prompt + generation,
                   steps from :func:`auralens.interp.steps.token_steps`. The residual at a generated
                   token's position is the one computed while reading that token.

Capture hooks run before any other hook on the same module: with a steering hook registered
on decoder layer L (``register_forward_hook``), ``lm.blocks.{L}.hook_resid_post`` here is the
unsteered output of layer L, while layers after L see the steered stream.

Left padding: the processor left-pads; we pass ``position_ids`` derived from the attention
mask (exactly as ``generate`` does; :func:`auralens.interp.capture.with_position_ids`), so a row's
activations do not depend on what else is in its batch (checked to 1e-5 in the tests).

Streaming and resume: rows (item x format) are cut into chunks of ``chunk_size`` rows; each
chunk is one safetensors file under ``<run>/activations/``, written atomically, and
``activations/index.json`` lists the finished chunks. A resumed collection skips every chunk the
index lists whose file exists with the same rows. Memory is bounded by one chunk.

Public API: :data:`POSITIONS`, :data:`LM_SITE`, :data:`AUDIO_SITE`, :class:`CollectConfig`,
:class:`BatchActivations`, :func:`wrap`, :func:`trace_sites`, :func:`prepare_batch`,
:func:`collect_batch`, :func:`collect_activations`, and (from :mod:`auralens.probes.store`, the folder
format) :class:`ActivationStore`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Float
from tqdm.auto import tqdm

from auralens.interp import compat, distributed as dist
from auralens.interp.arch import get_attr_path
from auralens.interp.cafe.formats import FORMATS
from auralens.interp.capture import SiteShapeError, capture, stop_ids, trim_at_stop, with_position_ids
from auralens.interp.errors import ArchitectureError, ConfigError, ProbeError, PromptError
from auralens.interp.generation import AUDIO_MODES, GenerationConfig, cast_features, generate_batch, model_inputs
from auralens.interp.runs import RunFolder, RunFolderError
from auralens.interp.steps import StepConfig, token_steps
from auralens.interp.tokenizer import clean_decoded
from auralens.probes.store import (  # the folder format; re-exported here, where collections are written
    ACTIVATIONS_DIR,
    AUDIO_SITE,
    FORMAT_VERSION,
    INDEX_NAME,
    LM_SITE,
    ActivationStore,
    read_index,
)

__all__ = [
    "AUDIO_SITE",
    "LM_SITE",
    "POSITIONS",
    "ActivationStore",
    "BatchActivations",
    "CollectConfig",
    "PreparedBatch",
    "collect_activations",
    "collect_batch",
    "prepare_batch",
    "trace_sites",
    "wrap",
]

POSITIONS: tuple[str, ...] = ("audio_mean", "last_prompt", "step_mean")
STORAGE_DTYPES = ("float32", "float16", "bfloat16")
# Why a site's value cannot be reduced per item (added to the engine's error).
_SHAPE_HINT = (
    " (audio encoders that batch by window rather than by item cannot be reduced per item; "
    "collect decoder layers only with audio_layers=())"
)


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CollectConfig:
    """What to collect.

    Attributes:
        positions: any of :data:`POSITIONS`.
        layers: decoder layers to read (``None``: all of them).
        audio_layers: audio-encoder layers to read (``()``: none, ``None``: all); only the
            ``audio_mean`` position applies to them.
        formats: answer formats of the prompts (``auralens.interp.cafe.formats.FORMATS``); one row per
            item and format. ``step_mean`` needs a format that reasons (``cot``/``structured``).
        batch_size: items per forward pass.
        chunk_size: rows per chunk file (the memory bound of the collection).
        max_new_tokens: greedy generation length for ``step_mean``.
        max_steps: reasoning steps kept per row (later steps are counted, not stored).
        sentences: also split steps after ". " (for models that reason in one paragraph).
        storage_dtype: dtype of the stored activations.
        audio_mode: ``"real"`` (the item's audio) or ``"silence"`` (digital silence of the same
            length, :func:`auralens.interp.audio.silence_like`): the activations of the silence
            control (a probe applied to them must fall to chance).
    """

    positions: tuple[str, ...] = POSITIONS
    layers: tuple[int, ...] | None = None
    audio_layers: tuple[int, ...] | None = ()
    formats: tuple[str, ...] = ("cot",)
    batch_size: int = 8
    chunk_size: int = 64
    max_new_tokens: int = 96
    max_steps: int = 8
    sentences: bool = False
    storage_dtype: str = "float32"
    audio_mode: str = "real"

    def __post_init__(self) -> None:

        for name in ("positions", "formats"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, Sequence) or not value:
                raise ConfigError(f"CollectConfig.{name}: expected a non-empty tuple, found {value!r}")
            object.__setattr__(self, name, tuple(value))
        bad = [p for p in self.positions if p not in POSITIONS]
        if bad or len(set(self.positions)) != len(self.positions):
            raise ConfigError(
                f"CollectConfig.positions: expected distinct names among {POSITIONS}, found "
                f"{list(self.positions)}"
            )
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or len(set(self.formats)) != len(self.formats):
            raise ConfigError(
                f"CollectConfig.formats: expected distinct names among {FORMATS}, found {list(self.formats)}"
            )
        for name in ("layers", "audio_layers"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                raise ConfigError(f"CollectConfig.{name}: expected a tuple of layer indices, found {value!r}")
            if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in value):
                raise ConfigError(f"CollectConfig.{name}: expected integer layer indices, found {list(value)}")
            if len(set(value)) != len(value):
                raise ConfigError(f"CollectConfig.{name}: expected distinct layers, found {list(value)}")
            object.__setattr__(self, name, tuple(sorted(int(v) for v in value)))
        if self.layers is not None and not self.layers:
            raise ConfigError("CollectConfig.layers: expected at least one decoder layer (or None for all)")
        for name, minimum in (("batch_size", 1), ("chunk_size", 1), ("max_new_tokens", 1), ("max_steps", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise ConfigError(f"CollectConfig.{name}: expected an integer >= {minimum}, found {value!r}")
        if self.storage_dtype not in STORAGE_DTYPES:
            raise ConfigError(
                f"CollectConfig.storage_dtype: expected one of {STORAGE_DTYPES}, found {self.storage_dtype!r}"
            )
        if self.audio_mode not in AUDIO_MODES:
            raise ConfigError(f"CollectConfig.audio_mode: expected one of {AUDIO_MODES}, found {self.audio_mode!r}")

    @property
    def generates(self) -> bool:
        return "step_mean" in self.positions

    @property
    def n_slots(self) -> int:
        """Reduction slots per row: audio_mean, last_prompt, then one per reasoning step."""
        return 2 + (self.max_steps if self.generates else 0)

    def step_config(self):

        return StepConfig(sentences=self.sentences)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["audio_mode"] == "real":  # collections written before the option existed resume
            del d["audio_mode"]
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    def resolve(self, arch) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(decoder layers, audio-encoder layers), checked against the model."""
        layers = tuple(range(arch.n_layers)) if self.layers is None else self.layers
        bad = [L for L in layers if not 0 <= L < arch.n_layers]
        if bad:
            raise ProbeError(
                f"layers: decoder layer(s) {bad} out of range: {arch.name} has {arch.n_layers} "
                f"decoder layers (0..{arch.n_layers - 1})"
            )
        audio = tuple(range(arch.n_audio_layers)) if self.audio_layers is None else self.audio_layers
        bad = [L for L in audio if not 0 <= L < arch.n_audio_layers]
        if bad:
            raise ProbeError(
                f"audio_layers: audio-encoder layer(s) {bad} out of range: {arch.name} has "
                f"{arch.n_audio_layers} audio-encoder layers (0..{arch.n_audio_layers - 1})"
            )
        return layers, audio


# --------------------------------------------------------------------------------------------
# nnsight (the independent reference)
# --------------------------------------------------------------------------------------------


def wrap(model):
    """``nnsight.NNsight(model)``: the envoy every trace of this module goes through.

    Wrapping installs nnsight's controller on each submodule once (inert outside a trace: no
    forward hooks, so plain calls and ``generate`` are untouched); wrapping again is cheap.
    ``NNsight`` rather than ``TransformersModel``/``LanguageModel``: those build inputs through
    a transformers pipeline and refuse to batch multimodal encodings, while we hand the model
    processor outputs we built ourselves (``trace(**inputs)`` passes them straight through).
    """
    from nnsight import NNsight  # imported here: importing nnsight patches torch globally

    return NNsight(model)


def trace_sites(
    lm,
    inputs: dict[str, Any],
    sites: Sequence[str],
    *,
    weights: dict[str, Any] | None = None,
    envoy=None,
) -> dict[str, Any]:
    """One nnsight trace over ``inputs``; the value at every site (the reference the capture
    engine, :func:`auralens.interp.capture.capture`, is tested against).

    Without ``weights`` each site gives its full ``[batch, pos, width]`` value (float32). With
    ``weights={site: W}`` (``W``: ``[batch, slot, pos]``) each site gives ``W @ value``
    (``[batch, slot, width]``, float32), computed inside the trace so only the reduction is
    kept; ``W`` may also be a function of the site's value returning the weights (for sites
    whose length is only known when they run, e.g. audio-encoder frames). A site whose value
    is not ``[batch, pos, width]`` with the inputs' batch size is a :class:`ProbeError` naming
    it. Sites are read in execution order whatever order they are given in.
    """
    import nnsight
    import torch


    points = lm.arch.hook_points(sites)  # execution order
    envoy = envoy if envoy is not None else wrap(lm.model)
    ordered = [p.site for p in points]
    plan = []
    for p in points:
        w = None if weights is None else weights.get(p.site)
        plan.append((p.site, get_attr_path(envoy, p.path), p.kind, w))
    batch = int(inputs["input_ids"].shape[0])
    saved: dict[str, Any] = {}
    shapes: dict[str, tuple] = {}
    with torch.inference_mode():
        # The body of this block is compiled and run by nnsight, interleaved with the forward
        # pass: each `.output`/`.input` read waits for that module to run. Names bound inside
        # the block do not survive it unless saved, so results go into `saved` (made outside).
        with envoy.trace(**inputs):
            for site, env, kind, w in plan:
                value = env.output if kind == "output" else env.input
                if isinstance(value, tuple):  # older transformers return (hidden, ...) tuples
                    value = value[0]
                shapes[site] = tuple(value.shape)
                if value.ndim != 3 or value.shape[0] != batch:
                    continue  # reported below, outside the trace
                # a copy: a model may change a module's output in place after the module returns
                # (Granite Speech's encoder adds its mid-layer CTC term to the middle block's output)
                value = value.to(torch.float32, copy=True)
                if w is not None:
                    value = torch.bmm(w(value) if callable(w) else w, value)
                saved[site] = nnsight.save(value)
    bad = {s: shapes.get(s) for s in ordered if s not in saved}
    if bad:
        raise ProbeError(
            f"{lm.arch.name}: expected [batch={batch}, pos, width] values at every site, found "
            + ", ".join(f"{s}: {v}" for s, v in bad.items())
            + _SHAPE_HINT
        )
    return saved


# --------------------------------------------------------------------------------------------
# One batch
# --------------------------------------------------------------------------------------------


@dataclass(kw_only=True, eq=False)
class PreparedBatch:
    """Model inputs of one batch plus the bookkeeping of its positions."""

    inputs: dict[str, Any]  # what the traced forward receives (incl. position_ids when used)
    prompt_len: int  # columns of the (left-padded) prompt; generated tokens follow
    audio_mask: Any  # [batch, pos] bool
    token_steps: list[np.ndarray]  # per row: step of each kept generated token
    n_steps: list[int]
    texts: list[str]
    generated: list[list[int]]


@dataclass(kw_only=True, eq=False)
class BatchActivations:
    """Reduced activations of one batch of rows.

    ``lm[position]`` is ``[batch, layer, d_model]`` for the prompt positions; ``lm_steps`` is
    ``[batch, step, layer, d_model]`` with ``step_present`` ``[batch, step]`` saying which
    steps exist; ``audio`` is ``[batch, audio_layer, d_audio]`` (audio-encoder audio mean).
    """

    layers: tuple[int, ...]
    audio_layers: tuple[int, ...]
    lm: dict[str, Float[Any, "batch layer d_model"]]
    lm_steps: Float[Any, "batch step layer d_model"] | None
    step_present: Any
    audio: Float[Any, "batch audio_layer d_audio"] | None
    n_steps: list[int]
    texts: list[str]
    generated: list[list[int]]


def prepare_batch(
    lm,
    items: Sequence[Any],
    fmt: str,
    cfg: CollectConfig,
    *,
    generations: Sequence[Sequence[int]] | None = None,
) -> PreparedBatch:
    """Processor inputs for ``items`` in ``fmt``; with ``step_mean``, the greedy generation
    (or the given ``generations``: token ids per item) appended and segmented into steps."""
    import torch


    batch = cast_features(lm, model_inputs(lm, items, fmt, cfg.audio_mode))
    inputs = dict(batch)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    prompt_len = int(ids.shape[1])
    audio_mask = (ids == lm.arch.audio_token_id) & (mask == 1)
    empty = [items[i].item_id for i in range(len(items)) if not bool(audio_mask[i].any())]
    if empty:
        raise PromptError(
            f"items {empty}: expected audio tokens (id {lm.arch.audio_token_id}) in the prompt, found none"
        )
    steps: list[np.ndarray] = [np.zeros(0, dtype=np.int64) for _ in items]
    n_steps, texts = [0] * len(items), [""] * len(items)
    generated: list[list[int]] = [[] for _ in items]
    if cfg.generates:
        if generations is None:
            new, _ = generate_batch(
                lm, batch, GenerationConfig(max_new_tokens=cfg.max_new_tokens, batch_size=len(items))
            )
            # also stop at a generated audio placeholder: fed back, it would ask the model for
            # audio features it does not have (an untrained model does emit it)
            stops = stop_ids(lm) | {int(lm.arch.audio_token_id)}
            generated = [trim_at_stop(row, stops) for row in new]
        else:
            if len(generations) != len(items):
                raise ProbeError(
                    f"generations: expected one token list per item ({len(items)}), found {len(generations)}"
                )
            generated = [[int(t) for t in g] for g in generations]
            bad = [items[i].item_id for i, g in enumerate(generated) if lm.arch.audio_token_id in g]
            if bad:
                raise ProbeError(
                    f"generations of items {bad}: expected no audio placeholder token "
                    f"(id {lm.arch.audio_token_id}) in generated text, found one"
                )
        scfg = cfg.step_config()
        for i, g in enumerate(generated):
            if g:
                st, text = token_steps(g, lm.tokenizer, scfg)
                steps[i], texts[i], n_steps[i] = st, text, int(st.max()) + 1
        width = max((len(g) for g in generated), default=0)
        if width:
            pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
            gen_ids = torch.full((len(items), width), int(pad), dtype=ids.dtype, device=ids.device)
            gen_mask = torch.zeros((len(items), width), dtype=mask.dtype, device=mask.device)
            for i, g in enumerate(generated):
                if g:
                    gen_ids[i, : len(g)] = torch.tensor(g, dtype=ids.dtype)
                    gen_mask[i, : len(g)] = 1
            # prompt left-padded, generation right-padded: real tokens stay contiguous per row
            # and the pads at the end are masked and never read
            inputs["input_ids"] = torch.cat([ids, gen_ids], dim=1)
            inputs["attention_mask"] = torch.cat([mask, gen_mask], dim=1)
    inputs = with_position_ids(lm.arch, inputs)
    return PreparedBatch(
        inputs=inputs, prompt_len=prompt_len, audio_mask=audio_mask, token_steps=steps,
        n_steps=n_steps, texts=texts, generated=generated,
    )


def _lm_weights(prep: PreparedBatch, cfg: CollectConfig):
    """[batch, slot, pos] averaging weights: slot 0 audio mean, 1 last prompt token, 2+s step s."""
    import torch

    ids = prep.inputs["input_ids"]
    b, t = ids.shape
    w = torch.zeros((b, cfg.n_slots, t), dtype=torch.float32, device=ids.device)
    am = prep.audio_mask.float()
    w[:, 0, : prep.prompt_len] = am / am.sum(-1, keepdim=True)
    w[:, 1, prep.prompt_len - 1] = 1.0
    present = torch.zeros((b, cfg.max_steps), dtype=torch.bool)
    if cfg.generates:
        for i, st in enumerate(prep.token_steps):
            for s in range(min(cfg.max_steps, prep.n_steps[i])):
                where = np.flatnonzero(st == s)
                if where.size:
                    w[i, 2 + s, prep.prompt_len + torch.as_tensor(where, device=ids.device)] = 1.0 / where.size
                    present[i, s] = True
    return w, present


def _audio_frame_weights(lm, inputs: dict[str, Any], n_rows: int, n_frames: int):
    import torch

    tower = None
    try:
        from auralens.interp.arch import get_attr_path

        tower = get_attr_path(lm.model, lm.arch.table.audio_tower)
    except ArchitectureError:
        pass
    fam = inputs.get("feature_attention_mask")
    w = torch.full((n_rows, 1, n_frames), 1.0 / n_frames, dtype=torch.float32)
    lengths = None
    if fam is not None and tower is not None:
        # valid frames after the encoder's stride-2 convolution (Whisper-style encoders)
        lengths = compat.encoder_output_lengths(tower, fam.sum(-1))
    if lengths is not None:
        for i, n in enumerate(lengths.tolist()):
            n = max(1, min(int(n), n_frames))
            w[i, 0] = 0.0
            w[i, 0, :n] = 1.0 / n
    return w


def collect_batch(
    lm,
    items: Sequence[Any],
    fmt: str,
    cfg: CollectConfig,
    *,
    generations: Sequence[Sequence[int]] | None = None,
) -> BatchActivations:
    """Collect the reduced activations of one batch (see the module docstring)."""
    import torch

    layers, audio_layers = cfg.resolve(lm.arch)
    if "audio_mean" not in cfg.positions:
        audio_layers = ()
    prep = prepare_batch(lm, items, fmt, cfg, generations=generations)
    w_lm, present = _lm_weights(prep, cfg)
    lm_sites = [LM_SITE.format(L=L) for L in layers]
    audio_sites = [AUDIO_SITE.format(L=L) for L in audio_layers]
    weights = {s: w_lm for s in lm_sites}
    if audio_sites:
        def w_audio(value, _inputs=prep.inputs):
            return _audio_frame_weights(lm, _inputs, value.shape[0], value.shape[1]).to(value.device)

        weights.update({s: w_audio for s in audio_sites})
    try:
        values = capture(lm, prep.inputs, lm_sites + audio_sites, weights=weights)
    except SiteShapeError as exc:
        raise ProbeError(f"{exc}{_SHAPE_HINT}") from None
    stacked = torch.stack([values[s].cpu() for s in lm_sites], dim=2)  # [batch, slot, layer, d]
    out = {}
    if "audio_mean" in cfg.positions:
        out["audio_mean"] = stacked[:, 0]
    if "last_prompt" in cfg.positions:
        out["last_prompt"] = stacked[:, 1]
    audio = None
    if audio_sites:
        audio = torch.stack([values[s][:, 0].cpu() for s in audio_sites], dim=1)
    return BatchActivations(
        layers=layers,
        audio_layers=audio_layers,
        lm=out,
        lm_steps=stacked[:, 2:] if cfg.generates else None,
        step_present=present,
        audio=audio,
        n_steps=prep.n_steps,
        texts=prep.texts,
        generated=prep.generated,
    )


# --------------------------------------------------------------------------------------------
# Streaming to a run folder
# --------------------------------------------------------------------------------------------


def _plan_rows(items: Sequence[Any], formats: Sequence[str]) -> list[tuple[int, str, str]]:
    """(item index, format, row id), format-major so a batch shares one format."""
    ids = [it.item_id for it in items]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ProbeError(f"items: expected distinct item ids (rows are grouped by item), found duplicates {dup[:5]}")
    return [(i, fmt, f"{it.item_id}|{fmt}") for fmt in formats for i, it in enumerate(items)]


def _chunks(rows: list, size: int) -> Iterator[list]:
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


def _to_storage(t, dtype: str):
    import torch

    return t.to(getattr(torch, dtype)).contiguous()


def _index_header(lm, cfg: CollectConfig, layers, audio_layers, n_rows: int, n_chunks: int) -> dict[str, Any]:
    sites = {LM_SITE: {"layers": list(layers), "width": lm.arch.d_model,
                       "positions": list(cfg.positions)}}
    if audio_layers and "audio_mean" in cfg.positions:
        sites[AUDIO_SITE] = {"layers": list(audio_layers), "width": lm.arch.d_audio, "positions": ["audio_mean"]}
    return {
        "format_version": FORMAT_VERSION,
        "model_id": lm.model_id,
        "architecture": lm.arch.name,
        "n_layers": lm.arch.n_layers,
        "config": cfg.to_dict(),
        "sites": sites,
        "n_rows": n_rows,
        "n_chunks": n_chunks,
        "chunks": [],
        "complete": False,
    }


def collect_activations(
    lm,
    items: Sequence[Any],
    run,
    cfg: CollectConfig = CollectConfig(),
    *,
    resume: bool = False,
    progress: bool = False,
    on_chunk: Callable[[int, int], None] | None = None,
) -> ActivationStore:
    """Collect activations of every (item, format) row into ``run``'s ``activations/`` folder.

    ``run`` is an :class:`auralens.interp.runs.RunFolder` or a folder path. With ``resume`` the chunks
    already written (listed in the index, file present, same rows) are skipped; without it, an
    existing index is an error. ``on_chunk(done, total)`` is called after each chunk is written.
    Returns the :class:`ActivationStore` over the folder.
    """

    run = run if isinstance(run, RunFolder) else RunFolder(run)
    layers, audio_layers = cfg.resolve(lm.arch)
    if "audio_mean" not in cfg.positions:
        audio_layers = ()
    if not items:
        raise ProbeError("items: expected at least one item to collect, found none")
    rows = _plan_rows(items, cfg.formats)
    planned = list(_chunks(rows, cfg.chunk_size))
    header = _index_header(lm, cfg, layers, audio_layers, len(rows), len(planned))
    done = _chunks_done(run, header, planned, resume)

    ranked = dist.collective()
    dist.barrier()  # every rank has read the old index before rank 0 rewrites it
    index = {**header, "chunks": [done[k] for k in sorted(done)]}
    def rewrite_index() -> None:
        run.write_json(INDEX_NAME, index)
        _drop_rank_indexes(run.path)

    dist.on_main(rewrite_index)
    # the chunks not done yet, dealt round-robin to the ranks (all of them without a launch);
    # a rank lists its finished chunks in activations/index.rank<r>.json, merged by rank 0 at the end
    mine = dist.shard([k for k in range(len(planned)) if k not in done])
    my_entries: list[dict[str, Any]] = []

    bar = _progress_bar(planned, mine, done, ranked) if progress else None
    with dist.rank_local():
        for k in mine:
            entry = _collect_chunk(lm, items, planned[k], k, cfg, run)
            if ranked:
                my_entries.append(entry)
                run.write_json(f"{ACTIVATIONS_DIR}/index.rank{dist.rank()}.json", {"chunks": my_entries})
            else:
                done[k] = entry
                index["chunks"] = [done[j] for j in sorted(done)]
                index["complete"] = len(done) == len(planned)
                run.write_json(INDEX_NAME, index)
            if bar is not None:
                bar.update(len(planned[k]))
            if on_chunk is not None:
                on_chunk(len(done) + len(my_entries), len(planned))
    if bar is not None:
        bar.close()
    dist.barrier()

    def complete():
        for entry in _rank_entries(run.path):
            done[entry["index"]] = entry
        index["chunks"] = [done[j] for j in sorted(done)]
        index["complete"] = True
        run.write_json(INDEX_NAME, index)
        _drop_rank_indexes(run.path)

    dist.on_main(complete)
    return ActivationStore(run.path)


def _chunks_done(
    run: RunFolder, header: dict[str, Any], planned: list[list], resume: bool
) -> dict[int, dict[str, Any]]:
    """The index entries of the planned chunks already written, by chunk index: none for a
    fresh folder; with ``resume``, those of the old index (and of the ranks' indexes) whose rows
    match the plan and whose file is present, after checking the old index describes the same
    collection; an existing index without ``resume`` is an error."""
    old = read_index(run.path)
    done: dict[int, dict[str, Any]] = {}
    if old is not None:
        if not resume:
            raise RunFolderError(
                f"run folder {str(run.path)!r}: expected no activations, found {INDEX_NAME}; "
                "pass resume=True (--resume) to continue that collection or choose another folder"
            )
        for key in ("format_version", "model_id", "architecture", "config", "sites", "n_rows"):
            if old.get(key) != header[key]:
                raise RunFolderError(
                    f"run folder {str(run.path)!r}: cannot resume the activation collection, {key} "
                    f"differs: the folder has {old.get(key)!r}, this run has {header[key]!r}"
                )
        for entry in [*old.get("chunks", []), *_rank_entries(run.path)]:
            k = entry["index"]
            if (
                k < len(planned)
                and entry["row_ids"] == [r[2] for r in planned[k]]
                and (run.path / ACTIVATIONS_DIR / entry["file"]).exists()
            ):
                done[k] = entry
    return done


def _progress_bar(planned: list[list], mine: Sequence[int], done: dict[int, Any], ranked: bool):
    """A tqdm bar over rows: this rank's chunks in a launch, else all rows starting at those done."""
    n_rows = sum(len(chunk) for chunk in planned)
    total = sum(len(planned[k]) for k in mine) if ranked else n_rows
    return tqdm(total=total, desc="activations" + (f" [rank {dist.rank()}]" if ranked else ""), unit="row",
                initial=0 if ranked else sum(len(planned[k]) for k in done))


def _rank_indexes(folder: Path) -> list[Path]:
    return sorted((Path(folder) / ACTIVATIONS_DIR).glob("index.rank*.json"))


def _rank_entries(folder: Path) -> list[dict[str, Any]]:
    """The chunks the ranks of a multi-process launch finished (their ``index.rank<r>.json``)."""
    out: list[dict[str, Any]] = []
    for p in _rank_indexes(folder):
        try:
            out += json.loads(p.read_text()).get("chunks", [])
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            continue  # unreadable: its chunks are collected again
    return out


def _drop_rank_indexes(folder: Path) -> None:
    for p in _rank_indexes(folder):
        p.unlink()


def _collect_chunk(lm, items, chunk, k: int, cfg: CollectConfig, run) -> dict[str, Any]:
    import torch


    parts: dict[str, list] = {"audio_mean": [], "last_prompt": [], "audio": [], "steps": [], "step_row": [], "step_idx": []}
    meta_rows: list[dict[str, Any]] = []
    offset = 0
    # batches inside the chunk, one format per batch
    groups: list[list[tuple[int, str, str]]] = []
    for r in chunk:
        if groups and groups[-1][0][1] == r[1] and len(groups[-1]) < cfg.batch_size:
            groups[-1].append(r)
        else:
            groups.append([r])
    for group in groups:
        fmt = group[0][1]
        batch_items = [items[i] for i, _, _ in group]
        acts = collect_batch(lm, batch_items, fmt, cfg)
        for name in ("audio_mean", "last_prompt"):
            if name in acts.lm:
                parts[name].append(acts.lm[name])
        if acts.audio is not None:
            parts["audio"].append(acts.audio)
        if acts.lm_steps is not None:
            b, s = torch.nonzero(acts.step_present, as_tuple=True)
            parts["steps"].append(acts.lm_steps[b, s])
            parts["step_row"].append(b + offset)
            parts["step_idx"].append(s)
        for j, (i, _, row_id) in enumerate(group):
            meta_rows.append({
                "row_id": row_id, "item_id": items[i].item_id, "format": fmt,
                "n_steps": int(acts.n_steps[j]), "n_generated": len(acts.generated[j]),
                "text": clean_decoded(acts.texts[j]),
            })
        offset += len(group)
    dtype = cfg.storage_dtype
    tensors: dict[str, Any] = {}
    for name in ("audio_mean", "last_prompt"):
        if parts[name]:
            tensors[f"lm.{name}"] = _to_storage(torch.cat(parts[name]), dtype)
    if parts["audio"]:
        tensors["audio_encoder.audio_mean"] = _to_storage(torch.cat(parts["audio"]), dtype)
    n_step_rows = 0
    if cfg.generates:
        d = lm.arch.d_model
        n_l = len(cfg.resolve(lm.arch)[0])
        steps = torch.cat(parts["steps"]) if parts["steps"] else torch.zeros((0, n_l, d))
        n_step_rows = int(steps.shape[0])
        if n_step_rows:  # safetensors cannot store empty tensors' data reliably; skip when none
            tensors["lm.step_mean"] = _to_storage(steps, dtype)
            tensors["lm.step_mean.row"] = torch.cat(parts["step_row"]).to(torch.int64)
            tensors["lm.step_mean.step"] = torch.cat(parts["step_idx"]).to(torch.int64)
    name = f"chunk-{k:05d}.safetensors"
    run.write_tensors(
        f"{ACTIVATIONS_DIR}/{name}", tensors,
        metadata={"format_version": str(FORMAT_VERSION), "rows": json.dumps(meta_rows)},
    )
    return {"index": k, "file": name, "row_ids": [r[2] for r in chunk], "n_rows": len(chunk),
            "n_step_rows": n_step_rows}
