"""The steering vector: per-layer directions plus everything needed to use them safely.

A :class:`SteeringVector` holds one direction per decoder layer (``directions[L]`` is a 1-D
tensor added at ``lm.blocks.{L}.<hook>``) together with the identity of the model it was fitted
on.  :meth:`SteeringVector.check_compatible` compares that identity with a resolved
:class:`~auralens.interp.arch.Architecture` and raises :class:`~auralens.interp.errors.VectorFileError` *before*
any generation runs, so a vector fitted on another model never silently steers the wrong
residual stream.

File formats (safetensors, llama.cpp GGUF control vectors, npz) live in
:mod:`auralens.steering.formats`; this module knows nothing about files.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, cast

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

import auralens.interp
from auralens.interp.arch import Architecture, parse_site
from auralens.interp.errors import ArchitectureError, ConfigError, VectorFileError

__all__ = ["SITE_PATTERNS", "SUPPORTED_DTYPES", "SteeringVector", "fingerprint", "normalize_site"]

#: canonical site patterns a steering vector can live at; ``{L}`` is the decoder layer
SITE_PATTERNS: dict[str, str] = {
    "hook_resid_post": "lm.blocks.{L}.hook_resid_post",
    "hook_resid_pre": "lm.blocks.{L}.hook_resid_pre",
    "attn.hook_z": "lm.blocks.{L}.attn.hook_z",
}
_SITE_ALIASES: dict[str, str] = {
    "resid_post": "hook_resid_post",
    "hook_resid_post": "hook_resid_post",
    "lm.blocks.{L}.hook_resid_post": "hook_resid_post",
    "resid_pre": "hook_resid_pre",
    "hook_resid_pre": "hook_resid_pre",
    "lm.blocks.{L}.hook_resid_pre": "hook_resid_pre",
    "hook_z": "attn.hook_z",
    "attn.hook_z": "attn.hook_z",
    "lm.blocks.{L}.attn.hook_z": "attn.hook_z",
}

#: dtypes a direction may have, by their short name (the name used in every file format)
SUPPORTED_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
_DTYPE_NAMES = {v: k for k, v in SUPPORTED_DTYPES.items()}
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_METHOD_RE = re.compile(r"[A-Za-z0-9_.:+-]+")


def fingerprint(description: str | Mapping[str, Any] | list[Any]) -> str:
    """sha256 (hex) of a description of the fitting data.

    A string is hashed as UTF-8; anything else as canonical JSON (sorted keys, no spaces, no
    NaN), so the same description always gives the same fingerprint.
    """
    if isinstance(description, str):
        payload = description
    else:
        try:
            payload = json.dumps(description, sort_keys=True, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"data description for the fingerprint: expected JSON-serialisable data, "
                f"found {type(description).__name__} ({exc})"
            ) from None
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def normalize_site(site: str) -> tuple[str, int | None]:
    """Map a site spelling to ``(canonical pattern, layer or None)``.

    Accepted: ``"resid_post"``, ``"hook_resid_post"``, ``"lm.blocks.{L}.hook_resid_post"`` (and
    the same for ``resid_pre`` and ``attn.hook_z``), or one concrete site such as
    ``"lm.blocks.12.hook_resid_post"``, which also returns its layer.
    """
    if not isinstance(site, str):
        raise ConfigError(f"site: expected a string, found {type(site).__name__}")
    hook = _SITE_ALIASES.get(site)
    if hook is not None:
        return SITE_PATTERNS[hook], None
    try:
        where, layer, hook = parse_site(site)
    except ArchitectureError:
        where = None
    if where != "lm" or hook is None:
        raise ConfigError(
            f"site {site!r}: expected one of {sorted(_SITE_ALIASES)} or a concrete decoder site "
            "such as 'lm.blocks.12.hook_resid_post'"
        )
    return SITE_PATTERNS[hook], layer


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected an integer, found bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ConfigError(f"{what}: expected an integer, found {type(value).__name__} {value!r}") from None


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPE_NAMES:
            raise ConfigError(f"dtype: expected one of {sorted(SUPPORTED_DTYPES)}, found {dtype}")
        return dtype
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        if name in SUPPORTED_DTYPES:
            return SUPPORTED_DTYPES[name]
    raise ConfigError(f"dtype: expected one of {sorted(SUPPORTED_DTYPES)}, found {dtype!r}")


def _as_tensor(value: Any, layer: int) -> Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, Tensor):
        raise ConfigError(
            f"directions[{layer}]: expected a 1-D float torch.Tensor, found {type(value).__name__}"
        )
    return value.detach()


@dataclass(kw_only=True, eq=False)
class SteeringVector:
    """Per-layer steering directions and the identity of the model they were fitted on.

    ``directions`` maps a 0-based decoder layer index ``L`` to a 1-D tensor added at
    ``site`` with ``L`` substituted (``lm.blocks.{L}.hook_resid_post`` = output of decoder layer
    ``L``).  A 2-D tensor of shape ``[n_layers, d_model]`` (one row per decoder layer) is accepted
    in its place and turned into the dict form.  ``dtype`` (default: the directions' own) is the
    dtype every direction is stored in; directions of another dtype are converted to it.

    Other fields: ``model_id`` (hub id or checkpoint path), ``architecture`` (architecture
    table name, e.g. ``"qwen2_audio"``, or model class), ``d_model`` and ``n_layers`` of that
    model, ``method`` (``"audio_minus_silence"``, ``"probe"``, ``"random_control"``...),
    ``default_alpha`` (h <- h + alpha * v), ``data_fingerprint`` (see :func:`fingerprint`),
    ``auralens_version``, ``heads`` ((layer, head) pairs of a head-restricted vector, in the
    caller's order, e.g. by rank), ``extra`` (free JSON metadata, stored as its JSON round trip)
    and ``source`` (the file it was loaded from, used in error messages; never saved).

    Instances compare by identity; use :meth:`equals` for an exact comparison.
    """

    directions: dict[int, Float[Tensor, " d_model"]] | Float[Tensor, "layer d_model"]
    model_id: str
    architecture: str
    d_model: int
    n_layers: int
    method: str
    data_fingerprint: str
    site: str = SITE_PATTERNS["hook_resid_post"]
    dtype: torch.dtype | str | None = None
    default_alpha: float = 1.0
    auralens_version: str = auralens.interp.__version__
    heads: tuple[tuple[int, int], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

    @property
    def by_layer(self) -> dict[int, Tensor]:
        """``directions`` as the layer -> [d_model] dict it always is after construction (a
        stacked [layer, d_model] tensor given to the constructor is split into one)."""
        return cast(dict[int, Tensor], self.directions)

    def __post_init__(self) -> None:
        for name in ("model_id", "architecture", "auralens_version"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{name}: expected a non-empty string, found {value!r}")
        if not isinstance(self.method, str) or not _METHOD_RE.fullmatch(self.method):
            raise ConfigError(
                f"method: expected a non-empty name without spaces (e.g. 'audio_minus_silence'), "
                f"found {self.method!r}"
            )
        if not isinstance(self.data_fingerprint, str) or not _SHA256_RE.fullmatch(self.data_fingerprint):
            raise ConfigError(
                "data_fingerprint: expected 64 lowercase hex digits (sha256, see "
                f"auralens.steering.vector.fingerprint), found {self.data_fingerprint!r}"
            )
        self.d_model = _as_int(self.d_model, "d_model")
        self.n_layers = _as_int(self.n_layers, "n_layers")
        if self.d_model <= 0:
            raise ConfigError(f"d_model: expected a positive integer, found {self.d_model}")
        if self.n_layers <= 0:
            raise ConfigError(f"n_layers: expected a positive integer, found {self.n_layers}")
        if isinstance(self.default_alpha, bool) or not isinstance(self.default_alpha, (int, float)):
            raise ConfigError(f"default_alpha: expected a real number, found {self.default_alpha!r}")
        self.default_alpha = float(self.default_alpha)
        if not math.isfinite(self.default_alpha):
            raise ConfigError(f"default_alpha: expected a finite number, found {self.default_alpha}")
        if self.source is not None and not isinstance(self.source, str):
            self.source = str(self.source)

        self.site, site_layer = normalize_site(self.site)
        self.directions = self._check_directions(self.directions)
        if site_layer is not None and list(self.directions) != [site_layer]:
            raise ConfigError(
                f"site {site_layer!r}: a concrete site needs exactly one direction at layer "
                f"{site_layer}, found layers {list(self.directions)}; give the pattern "
                f"{self.site!r} instead"
            )
        self.heads = self._check_heads(self.heads)
        self.extra = self._check_extra(self.extra)

    # --- validation --------------------------------------------------------------------
    def _check_directions(self, directions: Any) -> dict[int, Tensor]:
        if isinstance(directions, (Tensor, np.ndarray)):
            stacked = _as_tensor(directions, -1)
            if stacked.ndim != 2 or stacked.shape[0] != self.n_layers:
                raise ConfigError(
                    f"directions: a stacked tensor must have shape [n_layers={self.n_layers}, "
                    f"d_model], found {tuple(stacked.shape)}"
                )
            directions = dict(enumerate(stacked.unbind(0)))
        if not isinstance(directions, Mapping):
            raise ConfigError(
                "directions: expected a dict {layer: 1-D tensor} or a [n_layers, d_model] tensor, "
                f"found {type(directions).__name__}"
            )
        if not directions:
            raise ConfigError("directions: expected at least one layer, found none")
        out: dict[int, Tensor] = {}
        for key in sorted(directions, key=lambda k: _as_int(k, f"directions key {k!r}")):
            layer = _as_int(key, f"directions key {key!r}")
            if not 0 <= layer < self.n_layers:
                raise ConfigError(
                    f"directions: layer {layer} out of range for a model with n_layers="
                    f"{self.n_layers} (0..{self.n_layers - 1})"
                )
            if layer in out:
                raise ConfigError(f"directions: layer {layer} given twice")
            out[layer] = _as_tensor(directions[key], layer)
        dtype = _as_dtype(self.dtype) if self.dtype is not None else None
        width = None
        device = None
        for layer, t in out.items():
            if t.ndim != 1:
                raise ConfigError(
                    f"directions[{layer}]: expected a 1-D tensor [d_model], found shape {tuple(t.shape)}"
                )
            if not t.is_floating_point():
                raise ConfigError(f"directions[{layer}]: expected a float tensor, found {t.dtype}")
            if dtype is None:
                dtype = _as_dtype(t.dtype)
            if t.dtype != dtype:
                t = out[layer] = t.to(dtype)
            if width is None:
                width, device = t.shape[0], t.device
            if t.shape[0] != width:
                raise ConfigError(
                    f"directions[{layer}]: expected width {width} like the other layers, "
                    f"found {t.shape[0]}"
                )
            if t.device != device:
                raise ConfigError(f"directions[{layer}]: on {t.device}, the other layers are on {device}")
            if not bool(torch.isfinite(t).all()):
                raise ConfigError(f"directions[{layer}]: expected finite values, found NaN or inf")
        if self.hook != "attn.hook_z" and width != self.d_model:
            raise ConfigError(
                f"directions: expected width d_model={self.d_model} at site {self.site!r}, found {width}"
            )
        self.dtype = dtype
        return out

    def _check_heads(self, heads: Any) -> tuple[tuple[int, int], ...]:
        if heads is None:
            return ()
        if isinstance(heads, (str, bytes)) or not isinstance(heads, Iterable):
            raise ConfigError(f"heads: expected (layer, head) pairs, found {heads!r}")
        out: list[tuple[int, int]] = []
        for pair in heads:
            if isinstance(pair, (str, bytes)) or not isinstance(pair, Iterable) or len(tuple(pair)) != 2:
                raise ConfigError(f"heads: expected (layer, head) pairs, found {pair!r}")
            layer, head = (_as_int(v, f"heads entry {pair!r}") for v in pair)
            if not 0 <= layer < self.n_layers or head < 0:
                raise ConfigError(
                    f"heads entry {pair!r}: expected 0 <= layer < n_layers={self.n_layers} and "
                    f"head >= 0, found layer {layer}, head {head}"
                )
            if (layer, head) in out:
                raise ConfigError(f"heads: ({layer}, {head}) given twice")
            out.append((layer, head))
        return tuple(out)

    @staticmethod
    def _check_extra(extra: Any) -> dict[str, Any]:
        if not isinstance(extra, Mapping):
            raise ConfigError(f"extra: expected a dict of JSON-serialisable values, found {type(extra).__name__}")
        try:
            text = json.dumps(dict(extra), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"extra: expected JSON-serialisable values ({exc})") from None
        return json.loads(text)

    # --- views -------------------------------------------------------------------------
    @property
    def layers(self) -> tuple[int, ...]:
        """The decoder layers that carry a direction, ascending."""
        return tuple(self.directions)

    @property
    def hook(self) -> str:
        """``"hook_resid_post"``, ``"hook_resid_pre"`` or ``"attn.hook_z"``."""
        return self.site.removeprefix("lm.blocks.{L}.")

    @property
    def width(self) -> int:
        """Length of each direction (d_model for residual sites)."""
        return next(iter(self.directions.values())).shape[0]

    @property
    def dtype_name(self) -> str:
        return _DTYPE_NAMES[self.dtype]  # type: ignore[index]

    @property
    def device(self) -> torch.device:
        return next(iter(self.directions.values())).device

    def site_for(self, layer: int) -> str:
        """The concrete site name of ``layer`` (e.g. ``lm.blocks.12.hook_resid_post``)."""
        return self.site.replace("{L}", str(layer))

    def stacked(self) -> Float[Tensor, "layer d_model"]:
        """Directions stacked in :attr:`layers` order (row i is layer ``layers[i]``)."""
        return torch.stack(list(self.directions.values()))

    def describe(self) -> str:
        """How error messages name this vector: its file if known, else its model id."""
        if self.source:
            return f"{self.source} (fitted on {self.model_id})"
        return f"for model {self.model_id!r}"

    # --- compatibility -----------------------------------------------------------------
    def check_compatible(
        self, arch: Architecture, model_id: str | None = None, *, strict_model_id: bool = False
    ) -> SteeringVector:
        """Raise :class:`VectorFileError` if this vector cannot steer the model ``arch`` describes.

        Checked: architecture (table name or model class), d_model (or head width for
        ``attn.hook_z``), that every layer and head exists.  A different ``model_id`` with a
        matching architecture (e.g. a fine-tune) only warns, unless ``strict_model_id``.
        Returns ``self`` so calls chain.
        """
        problems: list[str] = []
        if self.architecture not in (arch.table.name, arch.table.model_class):
            problems.append(
                f"architecture: expected {arch.table.name!r} ({arch.table.model_class}), "
                f"found {self.architecture!r}"
            )
        if self.d_model != arch.d_model:
            problems.append(f"d_model: expected {arch.d_model}, found {self.d_model}")
        if self.hook == "attn.hook_z" and self.width != arch.n_heads * arch.head_dim:
            problems.append(
                f"hook_z width: expected n_heads*head_dim = {arch.n_heads * arch.head_dim}, "
                f"found {self.width}"
            )
        missing = [layer for layer in self.layers if layer >= arch.n_layers]
        if missing:
            problems.append(
                f"layers: the model has decoder layers 0..{arch.n_layers - 1}, the vector needs "
                f"{missing}"
            )
        bad_heads = [h for h in self.heads if h[0] >= arch.n_layers or h[1] >= arch.n_heads]
        if bad_heads:
            problems.append(
                f"heads: the model has {arch.n_layers} layers x {arch.n_heads} heads, the vector "
                f"names {bad_heads}"
            )
        if problems:
            target = f"model {model_id!r}" if model_id else f"this {arch.table.name} model"
            raise VectorFileError(
                f"steering vector {self.describe()} cannot be used with {target}: "
                + "; ".join(problems)
            )
        if model_id is not None and model_id != self.model_id:
            msg = (
                f"steering vector {self.describe()} was fitted on {self.model_id!r}, "
                f"applied to {model_id!r} (same architecture {arch.table.name!r})"
            )
            if strict_model_id:
                raise VectorFileError(f"{msg}; expected model id {self.model_id!r}, found {model_id!r}")
            warnings.warn(msg, UserWarning, stacklevel=2)
        if self.n_layers != arch.n_layers:
            warnings.warn(
                f"steering vector {self.describe()} was fitted on a model with {self.n_layers} "
                f"layers, this one has {arch.n_layers}",
                UserWarning,
                stacklevel=2,
            )
        return self

    # --- transforms (each returns a new vector) ----------------------------------------
    def scaled(self, alpha: float) -> SteeringVector:
        """Every direction multiplied by ``alpha`` (metadata unchanged)."""
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
            raise ConfigError(f"alpha: expected a finite real number, found {alpha!r}")
        return replace(self, directions={L: v * alpha for L, v in self.by_layer.items()})

    def normalized(self) -> SteeringVector:
        """Every direction divided by its L2 norm (computed in at least float32)."""
        out = {}
        for layer, v in self.by_layer.items():
            w = v.to(torch.promote_types(v.dtype, torch.float32))
            norm = torch.linalg.vector_norm(w)
            if not bool(norm > 0):
                raise ConfigError(
                    f"normalized(): direction at layer {layer} of vector {self.describe()} has "
                    "zero norm; expected a non-zero direction"
                )
            out[layer] = (w / norm).to(v.dtype)
        return replace(self, directions=out)

    def to(
        self,
        dtype_or_device: torch.dtype | torch.device | str | None = None,
        /,
        *,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
    ) -> SteeringVector:
        """Copy with directions converted to ``dtype`` and/or moved to ``device``.

        Like ``Tensor.to``: ``vec.to(torch.bfloat16)``, ``vec.to("cuda")``,
        ``vec.to(dtype="float32", device="cpu")``.
        """
        if dtype_or_device is not None:
            is_dtype = isinstance(dtype_or_device, torch.dtype) or (
                isinstance(dtype_or_device, str)
                and dtype_or_device.removeprefix("torch.") in SUPPORTED_DTYPES
            )
            if is_dtype and dtype is None:
                dtype = dtype_or_device  # type: ignore[assignment]
            elif not is_dtype and device is None:
                device = dtype_or_device  # type: ignore[assignment]
            else:
                raise ConfigError(
                    f"to(): {dtype_or_device!r} given both positionally and by keyword"
                )
        new_dtype = _as_dtype(dtype) if dtype is not None else self.dtype
        target = _as_dtype(new_dtype) if new_dtype is not None else None
        dirs = {L: v.to(device=device, dtype=target) for L, v in self.by_layer.items()}
        return replace(self, directions=dirs, dtype=new_dtype)

    # --- comparison and metadata -------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """Every field but the directions and ``source``, as JSON-ready values, plus ``layers``."""
        return {
            "model_id": self.model_id,
            "architecture": self.architecture,
            "site": self.site,
            "d_model": self.d_model,
            "n_layers": self.n_layers,
            "dtype": self.dtype_name,
            "method": self.method,
            "default_alpha": self.default_alpha,
            "data_fingerprint": self.data_fingerprint,
            "auralens_version": self.auralens_version,
            "heads": [list(h) for h in self.heads],
            "extra": self.extra,
            "layers": list(self.layers),
        }

    def equals(self, other: SteeringVector, *, check_metadata: bool = True) -> bool:
        """Exact equality: same layers, bitwise-equal directions (same dtype) and metadata."""
        if not isinstance(other, SteeringVector) or self.layers != other.layers:
            return False
        if self.dtype != other.dtype:
            return False
        for layer, v in self.by_layer.items():
            if not torch.equal(v.cpu(), other.by_layer[layer].cpu()):
                return False
        return not check_metadata or self.metadata() == other.metadata()

    def __repr__(self) -> str:
        return (
            f"SteeringVector(model_id={self.model_id!r}, architecture={self.architecture!r}, "
            f"site={self.site!r}, layers={list(self.layers)}, width={self.width}, "
            f"dtype={self.dtype_name}, method={self.method!r}, default_alpha={self.default_alpha}"
            + (f", heads={len(self.heads)}" if self.heads else "")
            + (f", source={self.source!r}" if self.source else "")
            + ")"
        )
