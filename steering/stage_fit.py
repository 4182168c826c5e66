"""``auralens steer fit``: an audio-minus-silence vector fitted on a dataset and written to a
vector file (safetensors / gguf / npz by extension).

The data seed is ``seed``, and the fit (model, data, n, seed, positions, site, heads,
normalisation, format) is recorded in the vector's ``extra["fit"]``, so a later evaluation
(:mod:`auralens.steering.stage_eval`) can rebuild the random-heads control from the very same
items.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auralens.interp.distributed import barrier, is_main, placement
from auralens.interp.errors import ConfigError
from auralens.interp.loading import load_model
from auralens.interp.runs import (
    check_dtype,
    check_formats,
    check_int,
    check_model,
    check_n,
    load_items,
)
from auralens.interp.stage_config import (
    DTYPE_HELP,
    ModelDataConfig,
    option,
    takes_config,
)
from auralens.interp.templates import check_template
from auralens.steering.checks import (
    NORMALIZATIONS,
    check_site,
    parse_heads,
    parse_positions,
)
from auralens.steering.registry import VECTOR_FORMATS
from auralens.steering.splits import check_heads_data, fit_spec, heads_data as heads_data_of, split_record

__all__ = ["HEADS_USES", "SteerFitConfig", "stage_steer_fit"]

HEADS_USES: tuple[str, ...] = ("restrict", "layers")


@dataclass(frozen=True, kw_only=True)
class SteerFitConfig(ModelDataConfig):
    """``auralens steer fit``: an audio-minus-silence direction, written to a vector file."""

    COMMAND = "auralens steer fit"

    n: int = option(64, help="Number of fit items (>= 1).")
    layers: tuple[int, ...] | None = option(None, parse="ints",
                                            help="Comma-separated decoder layers (default: the last layer, the final representation).")
    positions: Any = option("last_prompt", parse="csv", help="last_prompt | audio_mean")
    heads_from: Any = option(None, cli_type=str,
                             help="Specialist heads: 'L:H,...', a heads.parquet or a record run folder (ranked on a "
                                  "calibration split, never on the eval's dev/test). Without --layers the layer set is "
                                  "the layers of the top --k-heads heads.")
    k_heads: int | None = option(None, help="Keep the top-k heads of --heads-from (rank 1 = strongest).")
    heads_use: str = option("restrict", help="restrict: the direction restricted to the heads' o_proj-input slices | "
                                             "layers: the heads only choose the layers (a residual-stream direction).")
    out_vector: Path = option(Path("vec.safetensors"), flag="--out", identity=False,
                              help="Vector file (.safetensors, .gguf or .npz).")
    seed: int = option(0, help="Data seed of the fit items.")
    site: str = option("hook_resid_post", help="Site of the direction: hook_resid_post, hook_resid_pre (the input "
                                               "of layer L = the output of L - 1; L >= 1) or attn.hook_z.")
    normalize: str = option("none", help="Normalisation of the direction: none | unit | resid_norm.")
    fmt: str = option("direct", identity="format", flag="--format", help="Answer format of the fit prompts.")
    batch_size: int = option(8, identity=False, help="Items per forward pass (>= 1).")
    dtype: str = option("auto", help=DTYPE_HELP)

    def __post_init__(self) -> None:
        check_n(self.n)
        parse_positions(self.positions)
        if self.heads_use not in HEADS_USES:
            raise ConfigError(f"heads_use: expected one of {list(HEADS_USES)}, found {self.heads_use!r}")
        if self.k_heads is not None:
            check_int("k_heads", self.k_heads)
        if self.heads_use == "layers" and self.heads_from is None:
            raise ConfigError("heads_use='layers': expected --heads-from (the heads whose layers to use), found none")
        if self.layers is not None:
            if isinstance(self.layers, (str, bytes)):
                raise ConfigError(f"layers: expected a list of decoder layers or None, found {self.layers!r}")
            self._set("layers", tuple(check_int("layers", L, minimum=0) for L in self.layers))
            if not self.layers:
                raise ConfigError("layers: expected at least one decoder layer (or None), found none")
        if _fit_hook(self.site) == "hook_resid_pre":
            if self.heads_from is not None and self.heads_use == "restrict":
                raise ConfigError("site hook_resid_pre: expected a residual-stream direction (no --heads-from, or "
                                  "--heads-use layers), found head-restricted heads_use='restrict'")
            if self.layers is not None and 0 in self.layers:
                raise ConfigError("site hook_resid_pre, layer 0: the input of layer 0 is the embedding output, which "
                                  "auralens does not capture; expected layers >= 1 (hook_resid_pre of L is the "
                                  "output of layer L - 1)")
        if self.normalize not in NORMALIZATIONS:
            raise ConfigError(f"normalize: expected one of {list(NORMALIZATIONS)}, found {self.normalize!r}")
        check_formats(self.fmt, "format")
        check_int("batch_size", self.batch_size)
        check_dtype(self.dtype)
        out_vector = Path(self.out_vector)
        self._set("out_vector", out_vector)
        if out_vector.is_dir():
            raise ConfigError(f"--out {str(out_vector)!r}: expected a vector file path, found a directory")
        if out_vector.suffix.lower() not in VECTOR_FORMATS.values():
            raise ConfigError(
                f"--out {str(out_vector)!r}: expected an extension among {sorted(VECTOR_FORMATS.values())}, "
                f"found {out_vector.suffix!r}"
            )
        for parent in out_vector.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise ConfigError(
                        f"--out {str(out_vector)!r}: expected a folder path, found that {str(parent)!r} is a file")
                break


def _fit_hook(site: str) -> str:
    """The hook of a fit ``site``: ``hook_resid_pre`` (any spelling), else :func:`check_site`'s."""
    from auralens.steering.vector import SITE_PATTERNS, normalize_site  # torch at module level

    try:
        pattern, layer = normalize_site(site)
    except ConfigError:
        pattern, layer = None, None
    if pattern == SITE_PATTERNS["hook_resid_pre"] and layer is None:
        return "hook_resid_pre"
    return check_site(site)


def _as_resid_pre(vec):
    """A ``hook_resid_post`` vector at layers ``L - 1`` as the ``hook_resid_pre`` vector at ``L``:
    the input of decoder layer ``L`` is the output of layer ``L - 1``, the same tensor (checked in
    tests/unit/test_llamacpp_convention.py), so the fitted direction is unchanged."""
    from auralens.steering.vector import SITE_PATTERNS

    extra = dict(vec.extra)
    for key in ("raw_norm", "target_norm"):
        if isinstance(extra.get(key), dict):
            extra[key] = {str(int(k) + 1): v for k, v in extra[key].items()}
    return dataclasses.replace(vec, directions={L + 1: v for L, v in vec.by_layer.items()},
                               site=SITE_PATTERNS["hook_resid_pre"], extra=extra)


@takes_config(SteerFitConfig)
def stage_steer_fit(cfg: SteerFitConfig, *, lm=None, quiet: bool = True):
    """Fit the audio-minus-silence vector on ``n`` items of ``data`` (data seed ``seed``) and
    write it to ``out_vector``.  Returns the :class:`~auralens.steering.vector.SteeringVector`.
    Options: :class:`SteerFitConfig` (or its fields as keywords).

    ``data``: a cue dataset or a file dataset (MMAU/MMAR .json or folder; ``path@<split seed>``)
    without a split fits on its calibration split (:func:`fit_spec`).
    ``layers``: decoder layers (default: the layers of the top-``k_heads`` heads of
    ``heads_from``, else the last layer).
    ``heads_from``: specialist heads — (layer, head) pairs, ``"L:H,..."``, a heads table
    (parquet with layer/head/rank, e.g. from :func:`auralens.interp.listening.heads_table`) or a record
    run folder holding ``heads.parquet``; ``k_heads`` keeps the top ones (rank 1 = strongest).
    ``heads_use``: ``restrict`` (a head-restricted direction) or ``layers`` (the heads only
    pick the layer set; a residual-stream direction, usable with per-input steering).
    The heads must be ranked on a calibration split: a heads table whose run manifest names a
    dev/test split (or the whole dataset) of the fit data's dataset is refused
    (:func:`check_heads_data`); the vector records ``layers_from`` (option | heads | default),
    the heads and the heads' data in ``extra['fit']``."""
    from auralens.steering.directions import fit_with_controls  # torch at module level
    from auralens.steering.formats import export  # torch at module level

    # validated by SteerFitConfig; the heads (a table or run folder may be read) before the model
    model, data, n, seed, heads_from, site, normalize, fmt = (
        cfg.model, cfg.data, cfg.n, cfg.seed, cfg.heads_from, cfg.site, cfg.normalize, cfg.fmt)
    pos = parse_positions(cfg.positions)
    heads = parse_heads(heads_from, k=cfg.k_heads)
    layers = None if cfg.layers is None else list(cfg.layers)
    out_vector = cfg.out_vector
    data = fit_spec(data)  # cafe-<condition> -> cafe-<condition>:calibration; FILE -> FILE:calibration
    heads_data = heads_data_of(heads_from)
    if heads_data is not None:
        check_heads_data(heads_data, [data])
    if cfg.prompt_template:
        check_template(cfg.prompt_template)
    items = load_items(data, n=n, seed=seed)
    if lm is None:
        check_model(model)
        lm = load_model(model, dtype=cfg.dtype, **placement(cfg.device_map))
    if cfg.prompt_template:
        lm.use_template(cfg.prompt_template)
    if layers is not None:
        layers_from = "option"
    elif heads:
        layers = sorted({L for L, _ in heads})
        layers_from = f"heads: the layers of the top {len(heads)} heads"
    else:
        layers = [lm.arch.n_layers - 1]  # the final representation (the paper's steering site)
        layers_from = "default: the last layer"
    resid_pre = _fit_hook(site) == "hook_resid_pre"
    if resid_pre and 0 in layers:
        raise ConfigError(f"site hook_resid_pre: layers {sorted(layers)} include 0, whose input (the embedding "
                          "output) auralens does not capture; expected layers >= 1")
    fit = {
        "model": model, "data": data, "n": len(items), "seed": int(seed), "positions": [str(p) for p in pos],
        "split": split_record(data, seed, items),
        "site": site, "normalize": normalize, "format": fmt,
        "heads_from": None if heads_from is None else str(heads_from) if isinstance(heads_from, (str, Path)) else "pairs",
        "k_heads": cfg.k_heads, "heads_use": cfg.heads_use if heads else None,
        "heads": [list(h) for h in heads], "heads_data": heads_data,
        "layers": [int(L) for L in layers], "layers_from": layers_from,
    }
    # the decoder's model_type: llama.cpp's architecture name, the GGUF model_hint (steering.formats)
    decoder = getattr(lm.arch.text_config(lm.model), "model_type", None)
    extra = {"fit": fit, **({"decoder_model_type": decoder} if isinstance(decoder, str) and decoder else {})}
    vecs = fit_with_controls(
        lm, items, layers=[L - 1 for L in layers] if resid_pre else layers, positions=pos,
        site="hook_resid_post" if resid_pre else site,
        heads=heads if cfg.heads_use == "restrict" else (), normalize=normalize, fmt=fmt,
        batch_size=cfg.batch_size, seed=seed, controls=False, extra=extra, progress=not quiet,
    )
    vec = vecs["audio_minus_silence"]
    if resid_pre:
        vec = _as_resid_pre(vec)
    if is_main():  # every rank has the same vector (the activations are gathered)
        out_vector.parent.mkdir(parents=True, exist_ok=True)
        export(vec, out_vector)
    barrier()
    return vec
