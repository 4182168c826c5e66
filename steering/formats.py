"""Steering-vector files: safetensors, llama.cpp GGUF control vectors, npz.  No pickle anywhere.

:func:`export` writes a :class:`~auralens.steering.vector.SteeringVector` in the format named by the
argument or the file extension; :func:`load_vector` reads any of the three, recognising the
format by its magic bytes.  Every loader validates what it reads (metadata present and typed,
no tensor missing or unexpected, 1-D tensors of the recorded width and dtype, finite values)
and raises :class:`~auralens.interp.errors.VectorFileError` naming the file otherwise.  Writes go to a
temporary file that replaces the target only once complete.

safetensors (``.safetensors``)
    One tensor ``direction.{L}`` per decoder layer ``L`` (default), or one stacked tensor
    ``directions`` of shape ``[len(layers), width]`` whose row ``i`` is layer ``layers[i]``.
    Directions keep their dtype.  All metadata sits in the header's ``__metadata__`` as strings:
    ``auralens.format = "steering_vector"``, ``auralens.format_version = "1"``, ``layout``
    (``"per_layer"`` | ``"stacked"``), string fields as they are (``model_id``,
    ``architecture``, ``site``, ``dtype``, ``method``, ``data_fingerprint``,
    ``auralens_version``) and the others as JSON (``d_model``, ``n_layers``, ``default_alpha``,
    ``heads``, ``extra``, ``layers``).

npz (``.npz``)
    ``numpy.savez`` archive: one array ``direction.{L}`` per layer and ``metadata``, a 1-element
    unicode string array holding the JSON of :meth:`SteeringVector.metadata` plus
    ``auralens.format``/``auralens.format_version``.  numpy has no bfloat16, so bfloat16
    directions are stored as float32 (an exact widening) and cast back on load.  Loaded with
    ``allow_pickle=False``.

GGUF (``.gguf``), llama.cpp's control-vector convention
    Written with ``gguf.GGUFWriter``, exactly as llama.cpp's ``cvector-generator`` and repeng's
    ``ControlVector.export_gguf`` write them:

    - ``general.architecture`` = ``"controlvector"`` (string)
    - ``controlvector.model_hint`` (string): the llama.cpp architecture of the decoder the vector
      steers (:func:`llama_cpp_arch`: ``"qwen2"`` for Qwen2-Audio's and micro's decoder,
      ``"llama"`` for smol-audio's SmolLM2), which is what ``cvector-generator`` writes (the
      model's ``general.architecture``) and what repeng writes and reads back as its
      ``model_type`` (the HF ``config.model_type`` of the causal LM, the same names for these
      models); llama.cpp's loader does not read it
    - ``controlvector.layer_count`` (uint32) = number of direction tensors in the file (repeng
      writes it so; ``cvector-generator`` as int32; llama.cpp's loader does not read it)
    - one F32 1-D tensor ``direction.N`` of ``n_embd`` elements per steered layer

    Layer numbering, from llama.cpp's source (``common/common.cpp``
    ``common_control_vector_load_one``, ``src/llama-adapter.cpp`` ``llama_adapter_cvec``, and the
    per-architecture graph builders such as ``src/models/qwen2.cpp``):

    - the loader parses ``N`` from ``direction.N``, rejects ``N == 0`` ("invalid (zero) direction
      tensor layer index") and stores the tensor at ``data[(N - 1) * n_embd]``;
    - ``llama_adapter_cvec::apply`` copies that slot into ``tensors[N]`` (``tensors[0]`` is always
      null: "there's never a tensor for layer 0");
    - every graph builder loops ``for (int il = 0; il < n_layer; ++il)`` over its blocks and ends
      each with ``cur = ggml_add(cur, ffn_inp); cur = build_cvec(cur, il); cb(cur, "l_out", il)``,
      i.e. ``tensors[il]`` is added to the *output* of the 0-based block ``il``, after its
      residual add, at every token position.

    So ``direction.N`` is added to the output of 0-based decoder layer ``N``, which is our
    ``lm.blocks.{N}.hook_resid_post``.  The mapping we write is therefore

    - site ``lm.blocks.{L}.hook_resid_post``: ``N = L``; valid for ``1 <= L <= n_layers - 1``
    - site ``lm.blocks.{L}.hook_resid_pre`` (input of layer L = output of layer L - 1):
      ``N = L - 1``; valid for ``2 <= L <= n_layers - 1``

    and the output of decoder layer 0 cannot be steered by a llama.cpp control vector (export
    raises).  This is also repeng's convention (its ``direction.{L}`` indexes ``model.layers[L]``,
    fitted on ``hidden_states[L + 1]`` and added to that layer's output).  Beware that llama.cpp's
    own ``cvector-generator`` fits ``direction.{i+1}`` on ``l_out-i`` (see ``run_pca`` in
    ``tools/cvector-generator/pca.hpp``), i.e. the direction it writes for layer N was measured one
    layer earlier than where the loader adds it; files imported from it keep the loader's
    meaning.  ``attn.hook_z`` vectors have no control-vector form and are refused.

    Positions: llama.cpp adds every ``direction.N`` at every token position, the prompt's
    included (``positions="all"`` of :func:`auralens.steering.apply.apply_vector`), while a
    fitted vector was measured at some positions (``extra['positions']``, e.g. the last prompt
    token) and ``steer eval`` applies it at its position modes (default ``last_prompt``).
    :func:`llama_cpp_notes` lists how llama.cpp will apply a vector differently from how it was
    fitted and evaluated (positions, ``default_alpha``, an unknown model hint); ``auralens export
    --format gguf`` prints them as one warning line on stderr and returns them (``--json``).
    A vector whose ``extra['apply_positions']`` is ``"all"`` (evaluated as llama.cpp applies it)
    gets no positions note.

    llama.cpp applies the file with its own strength (``--control-vector-scaled FILE S``) and
    layer range (``--control-vector-layer-range``, default 1..n_layer), so ``default_alpha`` is
    *not* baked into the tensors.  The directions must be exactly representable in float32
    (float16/bfloat16 widen exactly; a float64 vector that is not raises, convert it with
    ``vec.to(torch.float32)``).  Everything else auralens knows is stored under ``auralens.*``
    keys, which llama.cpp ignores, so a round trip restores the vector exactly.  A control vector
    without ``auralens.*`` keys (llama.cpp, repeng) loads as an imported vector:
    ``architecture`` = ``model_id`` = the model hint, ``site`` resid_post with ``L = N``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFValueType
from safetensors import safe_open
from safetensors.torch import save_file

import auralens.interp
from auralens.interp.errors import AuralensError, ConfigError, VectorFileError
from auralens.interp.runs import atomic_write_with
from auralens.steering.registry import VECTOR_FORMATS
from auralens.steering.vector import (
    SITE_PATTERNS,
    SUPPORTED_DTYPES,
    SteeringVector,
    fingerprint,
)

__all__ = [
    "FORMATS",
    "GGUF_ARCHITECTURE",
    "convert",
    "detect_format",
    "export",
    "export_report",
    "gguf_layer_index",
    "llama_cpp_arch",
    "llama_cpp_notes",
    "load_gguf",
    "load_npz",
    "load_safetensors",
    "load_vector",
    "save_gguf",
    "save_npz",
    "save_safetensors",
]

FORMATS: dict[str, str] = VECTOR_FORMATS
FORMAT_NAME = "steering_vector"
FORMAT_VERSION = 1
GGUF_ARCHITECTURE = "controlvector"

_STR_FIELDS = (
    "model_id",
    "architecture",
    "site",
    "dtype",
    "method",
    "data_fingerprint",
    "auralens_version",
)
_JSON_FIELDS = ("d_model", "n_layers", "default_alpha", "heads", "extra", "layers")
_DIRECTION_RE = re.compile(r"direction\.(\d+)")


# --- shared helpers ----------------------------------------------------------------------
def _fail(path: Path, what: str) -> VectorFileError:
    return VectorFileError(f"steering-vector file {str(path)!r}: {what}")


def _atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    atomic_write_with(path, lambda tmp: write(Path(tmp)))
    return path


def _check_meta_types(meta: Mapping[str, Any], path: Path) -> None:
    """Expected Python types of the decoded metadata (before SteeringVector's own checks)."""
    for key in _STR_FIELDS:
        if not isinstance(meta.get(key), str):
            raise _fail(path, f"metadata {key!r}: expected a string, found {meta.get(key)!r}")
    for key in ("d_model", "n_layers"):
        if isinstance(meta[key], bool) or not isinstance(meta[key], int):
            raise _fail(path, f"metadata {key!r}: expected an integer, found {meta[key]!r}")
    alpha = meta["default_alpha"]
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise _fail(path, f"metadata 'default_alpha': expected a number, found {alpha!r}")
    if not isinstance(meta["heads"], list):
        raise _fail(path, f"metadata 'heads': expected a list of [layer, head], found {meta['heads']!r}")
    if not isinstance(meta["extra"], dict):
        raise _fail(path, f"metadata 'extra': expected a JSON object, found {meta['extra']!r}")
    layers = meta["layers"]
    if (
        not isinstance(layers, list)
        or not layers
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers)
        or len(set(layers)) != len(layers)
    ):
        raise _fail(path, f"metadata 'layers': expected a non-empty list of distinct integers, found {layers!r}")


def _check_direction(t: torch.Tensor, name: str, width: int, dtype: torch.dtype, path: Path) -> torch.Tensor:
    if t.ndim != 1 or t.shape[0] != width:
        raise _fail(path, f"tensor {name!r}: expected shape [{width}], found {list(t.shape)}")
    if t.dtype != dtype:
        raise _fail(path, f"tensor {name!r}: expected dtype {dtype}, found {t.dtype}")
    if not bool(torch.isfinite(t).all()):
        raise _fail(path, f"tensor {name!r}: expected finite values, found NaN or inf")
    return t


def _check_names(found: set[str], expected: set[str], path: Path) -> None:
    missing = sorted(expected - found)
    if missing:
        raise _fail(path, f"missing tensors {missing} (expected {sorted(expected)})")
    unexpected = sorted(found - expected)
    if unexpected:
        raise _fail(path, f"unexpected tensors {unexpected} (expected {sorted(expected)})")


def _build(meta: Mapping[str, Any], directions: dict[int, torch.Tensor], path: Path) -> SteeringVector:
    """SteeringVector from decoded metadata; its validation errors become VectorFileError."""
    try:
        return SteeringVector(
            directions=directions,
            model_id=meta["model_id"],
            architecture=meta["architecture"],
            site=meta["site"],
            d_model=meta["d_model"],
            n_layers=meta["n_layers"],
            dtype=meta["dtype"],
            method=meta["method"],
            default_alpha=meta["default_alpha"],
            data_fingerprint=meta["data_fingerprint"],
            auralens_version=meta["auralens_version"],
            heads=[tuple(h) if isinstance(h, list) else h for h in meta["heads"]],
            extra=meta["extra"],
            source=str(path),
        )
    except ConfigError as exc:
        raise _fail(path, f"invalid steering vector: {exc}") from None


def _dtype_of(meta: Mapping[str, Any], path: Path) -> torch.dtype:
    name = meta["dtype"]
    if name not in SUPPORTED_DTYPES:
        raise _fail(path, f"metadata 'dtype': expected one of {sorted(SUPPORTED_DTYPES)}, found {name!r}")
    return SUPPORTED_DTYPES[name]


def _width_of(meta: Mapping[str, Any], tensors: Mapping[str, Any]) -> int:
    if meta["site"] != SITE_PATTERNS["attn.hook_z"]:
        return meta["d_model"]
    first = next(iter(tensors.values()))
    return int(first.shape[-1]) if getattr(first, "ndim", 0) >= 1 else -1


# --- safetensors -------------------------------------------------------------------------
def save_safetensors(vec: SteeringVector, path: str | os.PathLike[str], *, stacked: bool = False) -> Path:
    """Write ``vec`` as safetensors (per-layer ``direction.{L}`` tensors, or one stacked tensor)."""

    meta = vec.metadata()
    header = {"auralens.format": FORMAT_NAME, "auralens.format_version": str(FORMAT_VERSION)}
    header["layout"] = "stacked" if stacked else "per_layer"
    for key in _STR_FIELDS:
        header[key] = meta[key]
    for key in _JSON_FIELDS:
        header[key] = json.dumps(meta[key])
    if stacked:
        tensors = {"directions": vec.stacked().cpu().contiguous()}
    else:
        tensors = {f"direction.{L}": v.cpu().contiguous().clone() for L, v in vec.directions.items()}
    return _atomic_write(Path(path), lambda p: save_file(tensors, p, metadata=header))


def load_safetensors(path: str | os.PathLike[str]) -> SteeringVector:
    """Read a vector written by :func:`save_safetensors`, validating everything."""

    path = Path(path)
    try:
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
            names = set(f.keys())
            meta = _decode_safetensors_header(header, path)
            dtype = _dtype_of(meta, path)
            if header["layout"] == "stacked":
                _check_names(names, {"directions"}, path)
                stack = f.get_tensor("directions")
                width = meta["d_model"] if meta["site"] != SITE_PATTERNS["attn.hook_z"] else stack.shape[-1]
                if stack.ndim != 2 or list(stack.shape) != [len(meta["layers"]), width]:
                    raise _fail(
                        path,
                        f"tensor 'directions': expected shape [{len(meta['layers'])}, {width}], "
                        f"found {list(stack.shape)}",
                    )
                directions = {
                    L: _check_direction(row.clone(), f"directions[{i}]", width, dtype, path)
                    for i, (L, row) in enumerate(zip(meta["layers"], stack.unbind(0)))
                }
            else:
                expected = {f"direction.{L}" for L in meta["layers"]}
                _check_names(names, expected, path)
                raw = {L: f.get_tensor(f"direction.{L}") for L in meta["layers"]}
                width = _width_of(meta, raw)
                directions = {
                    L: _check_direction(t, f"direction.{L}", width, dtype, path) for L, t in raw.items()
                }
    except AuralensError:
        raise
    except Exception as exc:  # safetensors raises SafetensorError, OSError, ValueError...
        raise _fail(path, f"not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    return _build(meta, directions, path)


def _decode_safetensors_header(header: Mapping[str, str], path: Path) -> dict[str, Any]:
    if header.get("auralens.format") != FORMAT_NAME:
        raise _fail(
            path,
            f"header metadata 'auralens.format': expected {FORMAT_NAME!r}, "
            f"found {header.get('auralens.format')!r}",
        )
    if header.get("auralens.format_version") != str(FORMAT_VERSION):
        raise _fail(
            path,
            f"header metadata 'auralens.format_version': expected {str(FORMAT_VERSION)!r}, "
            f"found {header.get('auralens.format_version')!r}",
        )
    if header.get("layout") not in ("per_layer", "stacked"):
        raise _fail(path, f"header metadata 'layout': expected 'per_layer' or 'stacked', found {header.get('layout')!r}")
    meta: dict[str, Any] = {}
    for key in _STR_FIELDS + _JSON_FIELDS:
        if key not in header:
            raise _fail(path, f"header metadata {key!r} missing")
    for key in _STR_FIELDS:
        meta[key] = header[key]
    for key in _JSON_FIELDS:
        try:
            meta[key] = json.loads(header[key])
        except json.JSONDecodeError:
            raise _fail(path, f"header metadata {key!r}: expected JSON, found {header[key]!r}") from None
    _check_meta_types(meta, path)
    return meta


# --- npz ---------------------------------------------------------------------------------
def _npz_storage_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype == torch.bfloat16 else dtype


def save_npz(vec: SteeringVector, path: str | os.PathLike[str]) -> Path:
    """Write ``vec`` as an npz archive (bfloat16 widened exactly to float32)."""
    meta = {"auralens.format": FORMAT_NAME, "auralens.format_version": FORMAT_VERSION, **vec.metadata()}
    storage = _npz_storage_dtype(vec.dtype)  # type: ignore[arg-type]
    arrays: dict[str, np.ndarray] = {
        f"direction.{L}": v.detach().cpu().to(storage).numpy() for L, v in vec.directions.items()
    }
    arrays["metadata"] = np.array([json.dumps(meta)])

    def write(p: Path) -> None:
        with open(p, "wb") as fh:
            np.savez(fh, **arrays)

    return _atomic_write(Path(path), write)


def load_npz(path: str | os.PathLike[str]) -> SteeringVector:
    """Read a vector written by :func:`save_npz` (``allow_pickle=False``), validating everything."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = set(npz.files)
            if "metadata" not in names:
                raise _fail(path, "array 'metadata' missing")
            raw_meta = npz["metadata"]
            if raw_meta.dtype.kind != "U" or raw_meta.shape != (1,):
                raise _fail(
                    path,
                    f"array 'metadata': expected a 1-element unicode string array, found "
                    f"dtype {raw_meta.dtype} shape {raw_meta.shape}",
                )
            try:
                meta = json.loads(str(raw_meta[0]))
            except json.JSONDecodeError:
                raise _fail(path, "array 'metadata': expected a JSON string") from None
            if not isinstance(meta, dict):
                raise _fail(path, f"array 'metadata': expected a JSON object, found {type(meta).__name__}")
            for key, expected in (("auralens.format", FORMAT_NAME), ("auralens.format_version", FORMAT_VERSION)):
                if meta.get(key) != expected:
                    raise _fail(path, f"metadata {key!r}: expected {expected!r}, found {meta.get(key)!r}")
            for key in _STR_FIELDS + _JSON_FIELDS:
                if key not in meta:
                    raise _fail(path, f"metadata {key!r} missing")
            _check_meta_types(meta, path)
            dtype = _dtype_of(meta, path)
            expected_names = {f"direction.{L}" for L in meta["layers"]}
            _check_names(names - {"metadata"}, expected_names, path)
            raw = {L: npz[f"direction.{L}"] for L in meta["layers"]}
    except AuralensError:
        raise
    except Exception as exc:  # BadZipFile, OSError, ValueError (object arrays), EOFError...
        raise _fail(path, f"not a readable npz archive ({type(exc).__name__}: {exc})") from None
    storage = _npz_storage_dtype(dtype)
    width = _width_of(meta, raw)
    directions = {}
    for L, arr in raw.items():
        if arr.dtype.kind != "f":
            raise _fail(path, f"array 'direction.{L}': expected a float array, found dtype {arr.dtype}")
        t = _check_direction(torch.from_numpy(np.array(arr)), f"direction.{L}", width, storage, path)
        directions[L] = t.to(dtype)
    return _build(meta, directions, path)


# --- GGUF (llama.cpp control vectors) ----------------------------------------------------
def gguf_layer_index(site: str, layer: int) -> int:
    """llama.cpp ``direction.N`` index for our decoder ``layer`` at ``site`` (see module docs)."""
    if site == SITE_PATTERNS["hook_resid_post"]:
        return layer
    if site == SITE_PATTERNS["hook_resid_pre"]:
        return layer - 1
    raise ConfigError(
        f"site {site!r}: llama.cpp control vectors add to layer outputs; expected a "
        f"{SITE_PATTERNS['hook_resid_post']!r} or {SITE_PATTERNS['hook_resid_pre']!r} vector"
    )


#: llama.cpp architecture (``general.architecture`` of the decoder's own GGUF) by auralens model id,
#: then by architecture table, for vectors that do not record ``extra['decoder_model_type']``
#: (``auralens steer fit`` records it: the text config's ``model_type``, which is llama.cpp's
#: architecture name for these decoders).  smol-audio is a Qwen2-Audio class around SmolLM2.
LLAMA_CPP_ARCH_BY_MODEL: dict[str, str] = {"smol-audio": "llama"}
LLAMA_CPP_ARCH_BY_TABLE: dict[str, str] = {"qwen2_audio": "qwen2", "audioflamingo3": "qwen2", "voxtral": "llama"}


def llama_cpp_arch(vec: SteeringVector) -> str | None:
    """The llama.cpp architecture of the decoder ``vec`` steers (its GGUF ``model_hint``), or
    None when auralens does not know it (see :data:`LLAMA_CPP_ARCH_BY_MODEL`)."""
    recorded = vec.extra.get("decoder_model_type")
    if isinstance(recorded, str) and recorded:
        return recorded
    hint = vec.extra.get("model_hint") if vec.method == "llama_cpp_import" else None
    if isinstance(hint, str) and hint:
        return hint
    return LLAMA_CPP_ARCH_BY_MODEL.get(vec.model_id) or LLAMA_CPP_ARCH_BY_TABLE.get(vec.architecture)


def llama_cpp_notes(vec: SteeringVector, *, model_hint: str | None = None) -> list[str]:
    """How llama.cpp will apply ``vec`` exported as a control vector differently from how
    auralens fitted or evaluated it (empty when nothing differs); see the module docstring."""
    notes = []
    if vec.method != "llama_cpp_import" and vec.extra.get("apply_positions") != "all":
        fit = vec.extra.get("positions", "unrecorded")
        notes.append(
            f"positions: llama.cpp adds the vector at every token position (prompt included); it was fitted at "
            f"{fit!r} and auralens steers 'last_prompt' unless told otherwise: positions='all' (steer eval "
            "--positions all) is what llama.cpp does")
    if vec.hook == "hook_resid_pre":
        notes.append(
            "site: hook_resid_pre of layer L is written as direction.{L-1} (llama.cpp adds to block outputs; "
            "the output of block L-1 is the input of block L)")
    if vec.default_alpha != 1.0:
        notes.append(
            f"strength: default_alpha {vec.default_alpha:g} is not in the file; llama.cpp applies strength 1 "
            f"unless run with --control-vector-scaled FILE:{vec.default_alpha:g}")
    if model_hint is None and llama_cpp_arch(vec) is None:
        notes.append(
            f"model_hint: auralens does not know the llama.cpp architecture of {vec.model_id!r} "
            f"({vec.architecture}); wrote {vec.architecture!r}, pass model_hint= (--model-hint) to set it")
    return notes


def _layer_from_gguf(site: str, n: int) -> int:
    return n if site == SITE_PATTERNS["hook_resid_post"] else n + 1


def save_gguf(vec: SteeringVector, path: str | os.PathLike[str], *, model_hint: str | None = None) -> Path:
    """Write ``vec`` as a llama.cpp control vector (``direction.N`` F32 tensors, see module docs)."""

    path = Path(path)
    try:
        numbers = {L: gguf_layer_index(vec.site, L) for L in vec.layers}
    except ConfigError as exc:
        raise _fail(path, f"cannot write vector {vec.describe()} as a llama.cpp control vector: {exc}") from None
    bad = [L for L, n in numbers.items() if n < 1]
    if bad:
        raise _fail(
            path,
            f"cannot write vector {vec.describe()} as a llama.cpp control vector: layers {bad} at "
            f"site {vec.site!r} map to direction.0 or below, which llama.cpp rejects (it never "
            "steers the output of decoder layer 0); expected direction.N with N >= 1",
        )
    arrays = {}
    for L, v in vec.directions.items():
        f32 = v.detach().cpu().to(torch.float32)
        if not torch.equal(f32.to(v.dtype), v.detach().cpu()):
            raise _fail(
                path,
                f"direction at layer {L} is not exactly representable in float32 (GGUF control "
                f"vectors are F32, the vector is {vec.dtype_name}); convert it with "
                "vec.to(torch.float32) first",
            )
        arrays[numbers[L]] = f32.numpy()
    meta = vec.metadata()
    hint = model_hint if model_hint is not None else (llama_cpp_arch(vec) or vec.architecture)

    def write(p: Path) -> None:
        writer = gguf.GGUFWriter(p, GGUF_ARCHITECTURE)  # sets general.architecture
        try:
            writer.add_string(f"{GGUF_ARCHITECTURE}.model_hint", hint)
            writer.add_uint32(f"{GGUF_ARCHITECTURE}.layer_count", len(arrays))
            writer.add_uint32("auralens.format_version", FORMAT_VERSION)
            for key in _STR_FIELDS:
                writer.add_string(f"auralens.{key}", meta[key])
            writer.add_uint32("auralens.d_model", meta["d_model"])
            writer.add_uint32("auralens.n_layers", meta["n_layers"])
            writer.add_float64("auralens.default_alpha", meta["default_alpha"])
            writer.add_string("auralens.heads", json.dumps(meta["heads"]))
            writer.add_string("auralens.extra", json.dumps(meta["extra"]))
            for n in sorted(arrays):
                writer.add_tensor(f"direction.{n}", arrays[n])
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()

    return _atomic_write(path, write)


def _gguf_field(reader: Any, key: str, types: tuple[Any, ...], path: Path, *, required: bool = True) -> Any:
    field = reader.get_field(key)
    if field is None:
        if required:
            raise _fail(path, f"GGUF key {key!r} missing")
        return None
    if len(field.types) != 1 or field.types[0] not in types:
        found = "/".join(t.name for t in field.types)
        raise _fail(path, f"GGUF key {key!r}: expected type {'/'.join(t.name for t in types)}, found {found}")
    return field.contents()


def load_gguf(path: str | os.PathLike[str]) -> SteeringVector:
    """Read a llama.cpp control vector (ours, or llama.cpp's / repeng's), validating everything."""

    path = Path(path)
    STR, U32 = (GGUFValueType.STRING,), (GGUFValueType.UINT32,)
    INTS = (GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.UINT64, GGUFValueType.INT64)
    try:
        reader = gguf.GGUFReader(path)
        arch = _gguf_field(reader, "general.architecture", STR, path)
        if arch != GGUF_ARCHITECTURE:
            raise _fail(path, f"GGUF key 'general.architecture': expected {GGUF_ARCHITECTURE!r}, found {arch!r}")
        hint = _gguf_field(reader, f"{GGUF_ARCHITECTURE}.model_hint", STR, path, required=False)
        count = _gguf_field(reader, f"{GGUF_ARCHITECTURE}.layer_count", INTS, path, required=False)
        raw: dict[int, np.ndarray] = {}
        width = None
        for t in reader.tensors:
            m = _DIRECTION_RE.fullmatch(t.name)
            if m is None or int(m.group(1)) == 0:
                raise _fail(path, f"tensor {t.name!r}: expected names direction.N with N >= 1")
            if t.tensor_type != GGMLQuantizationType.F32:
                raise _fail(path, f"tensor {t.name!r}: expected type F32, found {t.tensor_type.name}")
            if len(t.shape) != 1:
                raise _fail(path, f"tensor {t.name!r}: expected a 1-D tensor, found shape {t.shape.tolist()}")
            width = int(t.shape[0]) if width is None else width
            if int(t.shape[0]) != width or t.data.shape != (width,):
                raise _fail(
                    path, f"tensor {t.name!r}: expected {width} elements like the others, found {t.data.shape}"
                )
            raw[int(m.group(1))] = np.array(t.data, dtype=np.float32)
        if not raw:
            raise _fail(path, "no direction.N tensors found")
        if count is not None and count != len(raw):
            raise _fail(
                path,
                f"'{GGUF_ARCHITECTURE}.layer_count' says {count} direction tensors, found {len(raw)}: "
                f"{sorted(f'direction.{n}' for n in raw)}",
            )
        ours = reader.get_field("auralens.format_version") is not None
        if ours:
            version = _gguf_field(reader, "auralens.format_version", U32, path)
            if version != FORMAT_VERSION:
                raise _fail(path, f"GGUF key 'auralens.format_version': expected {FORMAT_VERSION}, found {version}")
            meta: dict[str, Any] = {k: _gguf_field(reader, f"auralens.{k}", STR, path) for k in _STR_FIELDS}
            meta["d_model"] = _gguf_field(reader, "auralens.d_model", U32, path)
            meta["n_layers"] = _gguf_field(reader, "auralens.n_layers", U32, path)
            meta["default_alpha"] = _gguf_field(reader, "auralens.default_alpha", (GGUFValueType.FLOAT64,), path)
            for key in ("heads", "extra"):
                text = _gguf_field(reader, f"auralens.{key}", STR, path)
                try:
                    meta[key] = json.loads(text)
                except json.JSONDecodeError:
                    raise _fail(path, f"GGUF key 'auralens.{key}': expected JSON, found {text!r}") from None
        del reader
    except AuralensError:
        raise
    except Exception as exc:  # gguf raises ValueError/IndexError/KeyError on damaged files
        raise _fail(path, f"not a readable GGUF file ({type(exc).__name__}: {exc})") from None

    if not ours:
        return _imported_gguf(path, raw, hint)
    if meta["site"] not in (SITE_PATTERNS["hook_resid_post"], SITE_PATTERNS["hook_resid_pre"]):
        raise _fail(path, f"GGUF key 'auralens.site': expected a residual-stream site, found {meta['site']!r}")
    meta["layers"] = [_layer_from_gguf(meta["site"], n) for n in sorted(raw)]
    _check_meta_types(meta, path)
    dtype = _dtype_of(meta, path)
    directions = {}
    for n in sorted(raw):
        t = _check_direction(torch.from_numpy(raw[n]), f"direction.{n}", meta["d_model"], torch.float32, path)
        directions[_layer_from_gguf(meta["site"], n)] = t.to(dtype)
    return _build(meta, directions, path)


def _imported_gguf(path: Path, raw: dict[int, np.ndarray], hint: str | None) -> SteeringVector:
    """A control vector written by another tool: identity taken from its model hint."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    name = hint or "unknown"
    directions = {}
    for n in sorted(raw):
        t = torch.from_numpy(raw[n])
        if not bool(torch.isfinite(t).all()):
            raise _fail(path, f"tensor 'direction.{n}': expected finite values, found NaN or inf")
        directions[n] = t
    width = next(iter(raw.values())).shape[0]
    meta = {
        "model_id": name,
        "architecture": name,
        "site": SITE_PATTERNS["hook_resid_post"],
        "d_model": width,
        "n_layers": max(raw) + 1,
        "dtype": "float32",
        "method": "llama_cpp_import",
        "default_alpha": 1.0,
        "data_fingerprint": fingerprint({"imported_gguf_sha256": digest}),
        "auralens_version": auralens.interp.__version__,
        "heads": [],
        "extra": {"imported_from": "gguf control vector", "model_hint": hint, "file_sha256": digest},
    }
    return _build(meta, directions, path)


# --- dispatch ----------------------------------------------------------------------------
_SAVERS: dict[str, Callable[[SteeringVector, Path], Path]] = {
    "safetensors": lambda v, p: save_safetensors(v, p),
    "gguf": lambda v, p: save_gguf(v, p),
    "npz": lambda v, p: save_npz(v, p),
}
_LOADERS: dict[str, Callable[[Path], SteeringVector]] = {
    "safetensors": load_safetensors,
    "gguf": load_gguf,
    "npz": load_npz,
}


def _format_from_extension(path: Path) -> str | None:
    suffix = path.suffix.lower()
    for name, ext in FORMATS.items():
        if suffix == ext:
            return name
    return None


def export(vec: SteeringVector, path: str | os.PathLike[str], format: str | None = None) -> Path:
    """Write ``vec`` to ``path`` as ``format`` (default: from the extension). Returns the path."""
    path = Path(path)
    by_ext = _format_from_extension(path)
    if format is None:
        if by_ext is None:
            raise ConfigError(
                f"export path {str(path)!r}: expected an extension among {sorted(FORMATS.values())} "
                f"or an explicit format {sorted(FORMATS)}, found {path.suffix!r}"
            )
        format = by_ext
    _check_export_path(path, format)
    return _SAVERS[format](vec, path)


def _check_export_path(path: Path, format: str) -> None:
    by_ext = _format_from_extension(path)
    if format not in FORMATS:
        raise ConfigError(f"export format: expected one of {sorted(FORMATS)}, found {format!r}")
    if by_ext is not None and by_ext != format:
        raise ConfigError(
            f"export path {str(path)!r}: extension {path.suffix!r} means {by_ext}, but format "
            f"{format!r} was asked for; expected the extension {FORMATS[format]!r}"
        )


def export_report(vec: SteeringVector, path: str | os.PathLike[str], format: str | None = None, *,
                  model_hint: str | None = None) -> dict[str, Any]:
    """:func:`export`, and what was written: ``{"path", "format", "warnings"}`` plus, for a GGUF
    control vector, ``model_hint``, ``layer_count`` and ``directions`` (``{"direction.N": L}``);
    ``warnings`` are :func:`llama_cpp_notes` for GGUF, else empty."""
    fmt = format if format is not None else _format_from_extension(Path(path))
    if model_hint is not None and fmt != "gguf":
        raise ConfigError(f"model_hint: only a GGUF control vector has one, found format {fmt!r}")
    if model_hint is not None and (not isinstance(model_hint, str) or not model_hint.strip()):
        raise ConfigError(f"model_hint: expected a llama.cpp architecture name such as 'llama', found {model_hint!r}")
    if fmt == "gguf" and model_hint is not None:
        _check_export_path(Path(path), fmt)
        out = save_gguf(vec, path, model_hint=model_hint)
    else:
        out = export(vec, path, format)
        fmt = _format_from_extension(out) if format is None else format
    report: dict[str, Any] = {"path": str(out), "format": fmt, "warnings": []}
    if fmt == "gguf":
        report["model_hint"] = model_hint if model_hint is not None else (llama_cpp_arch(vec) or vec.architecture)
        report["layer_count"] = len(vec.layers)
        report["directions"] = {f"direction.{gguf_layer_index(vec.site, L)}": L for L in vec.layers}
        report["warnings"] = llama_cpp_notes(vec, model_hint=model_hint)
    return report


def detect_format(path: str | os.PathLike[str]) -> str:
    """``"gguf"``, ``"npz"`` or ``"safetensors"`` from the file's magic bytes."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror or exc})") from None
    if head[:4] == b"GGUF":
        return "gguf"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "npz"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    raise _fail(
        path,
        "unknown format: expected GGUF magic b'GGUF', a zip/npz header b'PK\\x03\\x04' or a "
        f"safetensors header (8-byte length then '{{'), found {head[:9]!r}"
        + (f" (extension {path.suffix!r})" if path.suffix else ""),
    )


def load_vector(path: str | os.PathLike[str]) -> SteeringVector:
    """Read a steering vector in any supported format (detected from its magic bytes)."""
    return _LOADERS[detect_format(path)](Path(path))


def convert(src: str | os.PathLike[str], dst: str | os.PathLike[str], format: str | None = None) -> Path:
    """Load ``src`` (any format) and write it to ``dst`` (format from ``format`` or extension)."""
    return export(load_vector(src), dst, format)
