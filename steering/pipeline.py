"""Steering stages shared by the CLI, the demo and the notebooks.

- :func:`stage_steer_fit` fits an audio-minus-silence vector on a dataset and writes it to a
  vector file (safetensors / gguf / npz by extension).  The data seed is ``seed``, and the fit
  (model, data, n, seed, positions, site, heads, normalisation, format) is recorded in the
  vector's ``extra["fit"]``, so a later evaluation can rebuild the random-heads control from the
  very same items.
- :func:`stage_steer_eval` sweeps alpha (and layer) with the vector and its controls (random
  direction of equal norm; random heads when the vector is head-restricted) on a dataset and
  writes a run folder: ``manifest.json``, ``items.parquet`` (every generation, resumable),
  ``steering.parquet`` (:data:`auralens.steering.evaluate.STEERING_COLUMNS` + ``format``),
  ``steering_accuracy.html`` / ``steering_delta.html`` (self-contained plotly),
  ``vectors/<name>.safetensors`` (the vectors used) and ``summary.json``.  It returns the
  summary: the best gain of the vector over alpha = 0 with its paired-bootstrap CI, the
  controls at the same setting, and the vector − control difference, whatever their signs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auralens.interp.dataspec import FILE_SPLITS, DataSpec
from auralens.interp.errors import ConfigError
from auralens.interp.runs import run_identity
from auralens.interp.stage_config import DTYPE_HELP as _DTYPE_HELP
from auralens.interp.stage_config import RESUME_HELP as _RESUME_HELP
from auralens.interp.distributed import barrier, is_main, on_main
from auralens.interp.stage_config import ModelDataConfig, option, takes_config

__all__ = ["MODES", "PROTOCOLS", "SteerEvalConfig", "SteerFitConfig", "eval_splits", "fit_spec", "overlap",
           "split_record", "stage_steer_eval", "stage_steer_fit"]

PROTOCOLS: tuple[str, ...] = ("dev_test", "sweep")
MODES: tuple[str, ...] = ("mean", "per_input")
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
    site: str = option("hook_resid_post", help="Site of the direction (hook_resid_post, attn.hook_z...).")
    normalize: str = option("none", help="Normalisation of the direction: none | unit | resid_norm.")
    fmt: str = option("direct", identity="format", flag="--format", help="Answer format of the fit prompts.")
    batch_size: int = option(8, identity=False, help="Items per forward pass (>= 1).")
    dtype: str = option("auto", help=_DTYPE_HELP)

    def __post_init__(self) -> None:
        from auralens.interp.runs import check_dtype, check_formats, check_int, check_n
        from auralens.steering.directions import NORMALIZATIONS, _site, parse_positions
        from auralens.steering.formats import FORMATS as VECTOR_FORMATS

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
        _site(self.site)
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


def _placement(cfg) -> dict[str, Any]:
    """Where the model goes: ``--device-map`` (checked), else this rank's device under a launch."""
    from auralens.interp.distributed import placement

    return placement(cfg.device_map)


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
    from auralens.interp.loading import load_model
    from auralens.interp.runs import check_model, load_items
    from auralens.steering.directions import fit_with_controls, parse_heads, parse_positions
    from auralens.steering.formats import export

    # validated by SteerFitConfig; the heads (a table or run folder may be read) before the model
    model, data, n, seed, heads_from, site, normalize, fmt = (
        cfg.model, cfg.data, cfg.n, cfg.seed, cfg.heads_from, cfg.site, cfg.normalize, cfg.fmt)
    pos = parse_positions(cfg.positions)
    heads = parse_heads(heads_from, k=cfg.k_heads)
    layers = None if cfg.layers is None else list(cfg.layers)
    out_vector = cfg.out_vector
    data = fit_spec(data)  # cafe-<condition> -> cafe-<condition>:calibration; FILE -> FILE:calibration
    heads_data = _heads_data(heads_from)
    if heads_data is not None:
        check_heads_data(heads_data, [data])
    items = load_items(data, n=n, seed=seed)
    if lm is None:
        check_model(model)
        lm = load_model(model, dtype=cfg.dtype, **_placement(cfg))
    if layers is not None:
        layers_from = "option"
    elif heads:
        layers = sorted({L for L, _ in heads})
        layers_from = f"heads: the layers of the top {len(heads)} heads"
    else:
        layers = [lm.arch.n_layers - 1]  # the final representation (the paper's steering site)
        layers_from = "default: the last layer"
    fit = {
        "model": model, "data": data, "n": len(items), "seed": int(seed), "positions": [str(p) for p in pos],
        "split": split_record(data, seed, items),
        "site": site, "normalize": normalize, "format": fmt,
        "heads_from": None if heads_from is None else str(heads_from) if isinstance(heads_from, (str, Path)) else "pairs",
        "k_heads": cfg.k_heads, "heads_use": cfg.heads_use if heads else None,
        "heads": [list(h) for h in heads], "heads_data": heads_data,
        "layers": [int(L) for L in layers], "layers_from": layers_from,
    }
    vecs = fit_with_controls(
        lm, items, layers=layers, positions=pos, site=site,
        heads=heads if cfg.heads_use == "restrict" else (), normalize=normalize, fmt=fmt,
        batch_size=cfg.batch_size, seed=seed, controls=False, extra={"fit": fit}, progress=not quiet,
    )
    vec = vecs["audio_minus_silence"]
    if is_main():  # every rank has the same vector (the activations are gathered)
        out_vector.parent.mkdir(parents=True, exist_ok=True)
        export(vec, out_vector)
    barrier()
    return vec


def _heads_data(heads_from) -> str | None:
    """The dataset a heads table was ranked on (its record run's manifest ``data``), if known."""
    if not isinstance(heads_from, (str, Path)):
        return None
    p = Path(heads_from)
    if not (p.is_dir() or p.suffix == ".parquet"):
        return None  # 'L:H,...' pairs
    from auralens.interp.record import read_heads_source

    return read_heads_source(str(p)).get("data")


def check_heads_data(heads_data: str, specs) -> None:
    """Refuse heads ranked on data that is not a calibration split of the dataset of ``specs``
    (the fit data, or the eval's dev/test): same dataset (cue datasets: any condition) and a
    split other than calibration (or the whole file dataset, or calibration under another split
    seed) -> ConfigError.  Heads without a recorded dataset (a bare heads.parquet, pairs) and
    datasets without splits (plain cafe) are not checked."""
    heads = DataSpec.parse(heads_data)
    for spec in specs:
        ds = DataSpec.parse(spec)
        if heads.family != ds.family or not ds.has_splits:
            continue  # another dataset, or one without calibration/dev/test splits (plain cafe)
        if heads.effective_split == "calibration" and heads.split_seed == ds.split_seed:
            continue
        raise ConfigError(
            f"heads_from: the heads were ranked on {heads_data!r}, which is not the calibration split of the "
            f"dataset of {str(spec)!r} (it is or contains its dev/test items); expected heads from a calibration run "
            f"(auralens record --data <dataset>:calibration)"
        )


def fit_spec(data: str | DataSpec) -> str:
    """The fit data: a cue or file dataset without a split fits on its calibration split."""
    ds = DataSpec.parse(data)
    if ds.has_splits and ds.split_name is None:
        return str(ds.split("calibration"))
    return str(ds)


def split_record(spec: str | DataSpec, seed: int, items) -> dict[str, Any]:
    """What identifies one split: its spec, data seed, scene-seed range and item-id fingerprint."""
    ds = DataSpec.parse(spec, seed=seed)
    ident = run_identity(items)
    rec = {"data": str(ds), "seed": int(seed), "n": len(items), "seeds": ds.seed_range(len(items)),
           "ids_sha256": ident["items"]["ids_sha256"], "data_fingerprint": ident["data_fingerprint"]}
    if ds.kind == "file" and ds.split_name is not None:  # a file dataset's hashed item-id split
        rec.update(split=ds.split_name, split_seed=ds.split_seed,
                   split_rule="sha256('<split seed>:<item id>') -> u in [0,1): "
                              + ", ".join(f"{k} {v:.0%}" for k, v in FILE_SPLITS.items()))
    return rec


def eval_splits(data: str | DataSpec, seed: int) -> dict[str, tuple[str, int]]:
    """``{"dev": (spec, data seed), "test": (spec, data seed)}`` of the dev/test protocol
    (:meth:`auralens.interp.dataspec.DataSpec.dev_test`).

    Cue datasets use their fixed ``:dev`` / ``:test`` splits; plain ``cafe`` (or
    ``cafe:<tiers>``) uses the disjoint data seeds ``seed`` (dev) and ``seed + 1`` (test); a
    file dataset (MMAU/MMAR .json or a folder, ``path`` or ``path@<split seed>``) uses its hashed
    item-id splits ``path:dev[@s]`` / ``path:test[@s]`` (:func:`auralens.interp.dataspec.file_split`).
    Anything else has no split: ConfigError."""
    ds = DataSpec.parse(data, seed=seed)
    if ds.kind == "file" and not (Path(ds.name).suffix == ".json" or Path(ds.name).is_dir()):
        raise ConfigError(
            f"data {str(data)!r}: expected a dataset with dev/test splits (cafe, cafe-neutral|congruent|conflict, an "
            "MMAU/MMAR .json file or a folder with questions.jsonl), "
            "found one without; use protocol='sweep' for an in-sample sweep"
        )
    dev, test = ds.dev_test()
    return {"dev": (str(dev), dev.seed), "test": (str(test), test.seed)}


def _item_keys(it) -> set:
    """What makes two items share data: the item id without its cue condition, and the audio."""
    iid = str(it.item_id)
    for cond in ("-neutral", "-congruent", "-conflict"):
        iid = iid.removesuffix(cond)
    return {("id", iid), ("audio", str(it.audio))}


def overlap(fit_items, items) -> int:
    """Number of ``items`` that share an item (any cue condition) or an audio clip with ``fit_items``."""
    keys = set().union(*(_item_keys(it) for it in fit_items)) if fit_items else set()
    return sum(1 for it in items if _item_keys(it) & keys)


def _fit_items(vec):
    """The fit items recorded in ``vec.extra['fit']``, if they can be rebuilt identically."""
    from auralens.interp.datasets import fingerprint, load_dataset

    fit = vec.extra.get("fit")
    if not isinstance(fit, dict):
        return None, "the vector does not record its fit data (extra['fit'])"
    try:
        items = load_dataset(fit["data"], n=fit["n"], seed=fit["seed"])
    except Exception as exc:  # noqa: BLE001 - reported in the summary, the sweep goes on
        return None, f"cannot reload the fit data {fit.get('data')!r}: {exc}"
    if fingerprint(items) != vec.data_fingerprint:
        return None, "the reloaded fit data do not match the vector's data_fingerprint"
    return items, None


@dataclass(frozen=True, kw_only=True)
class SteerEvalConfig(ModelDataConfig):
    """``auralens steer eval``: accuracy as a function of alpha (and layer), against controls."""

    COMMAND = "auralens steer eval"

    vector: Any = option(identity=False, cli_type=Path, help="Steering vector file (safetensors, gguf or npz).")
    alphas: tuple[float, ...] = option((0.0, 2.0, 4.0, 8.0), parse="floats", cli_default="0,2,4,8",
                                       help="Comma-separated steering strengths.")
    n: int = option(90, help="Number of items (>= 1).")
    out: Path = option(Path("runs/steer"), identity=False, help="Run folder.")
    controls: bool = option(True, help="Also run the random-direction/random-heads controls.")
    formats: tuple[str, ...] = option(("direct",), flag="--format", parse="one",
                                      help="Answer format: direct | cot | structured.")
    batch_size: int = option(16, help="Items per generation batch (>= 1).")
    resume: bool = option(False, identity=False,
                          help=_RESUME_HELP)
    seed: int = option(7, help="Data seed (cafe items, bootstrap and controls).")
    # not part of the identity: runs before it was a config field do not record it
    dtype: str = option("auto", identity=False, help=_DTYPE_HELP)
    layers: tuple[int, ...] | None = option(None, parse="ints",
                                            help="Layers to steer, one at a time, chosen on dev (default: the vector's).")
    positions: tuple[str, ...] | None = option(None, cli_type=str,
                                               help="last_prompt | generated | both | answer (the generated tokens from the one after 'answer :' on) (default: both with dev_test, last_prompt with sweep).")
    protocol: str = option("dev_test", help="dev_test: beta/layer/mode chosen on dev, reported on test | sweep: in-sample sweep.")
    modes: tuple[str, ...] | None = option(None, cli_type=str,
                                           help="mean (the fitted v) | per_input (s(x) per item); default mean,per_input with dev_test.")
    max_new_tokens: int = option(32, help="Generated tokens per answer (>= 1).")
    backend: str = option("torch", help="torch | nnsight (identical results; torch is faster).")
    n_boot: int = option(1000, help="Bootstrap resamples of the confidence intervals (>= 1).")
    adaptive_gain: float | None = option(None, help="Steer with adaptive alpha of this gain (gated by listening heads).")
    adaptive_heads: Any = option(None, identity=False, cli=False,
                                 help="Heads gating the adaptive alpha (default: the vector's own heads).")
    # not part of the identity when None (runs before it existed); recorded in the manifest when set
    control_model: str | None = option(None, identity=False, cli_type=str,
                                       help="dev_test: also run the selected setting (same mode, layer, beta, positions; "
                                            "mean v refitted on the same calibration items) on this model, e.g. a "
                                            "healthy one (negative control): controls['model_without_deficit'].")

    def __post_init__(self) -> None:
        from auralens.interp.runs import check_dtype, check_n

        check_n(self.n)
        check_dtype(self.dtype)
        if self.adaptive_gain is not None and (isinstance(self.adaptive_gain, bool) or
                                               not isinstance(self.adaptive_gain, (int, float))):
            raise ConfigError(f"adaptive_gain: expected a number or None, found {self.adaptive_gain!r}")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"protocol: expected one of {list(PROTOCOLS)}, found {self.protocol!r}")
        dev_test = self.protocol == "dev_test"
        if isinstance(self.positions, str):
            self._set("positions", tuple(p.strip() for p in self.positions.split(",") if p.strip()) or None)
        if self.positions is None:
            self._set("positions", ("both",) if dev_test else ("last_prompt",))
        modes = self.modes if self.modes is not None else (("mean", "per_input") if dev_test else ("mean",))
        if isinstance(modes, str):
            modes = tuple(m.strip() for m in modes.split(",") if m.strip())
        if (not isinstance(modes, (tuple, list)) or not modes or len(set(modes)) != len(modes)
                or any(m not in MODES for m in modes)):
            raise ConfigError(f"modes: expected distinct values among {list(MODES)}, found {modes!r}")
        self._set("modes", tuple(modes))
        sweep = self.sweep()  # alphas, layers, positions, formats, sizes, backend
        for name in ("alphas", "layers", "positions", "formats"):
            self._set(name, getattr(sweep, name))
        if self.vector is None:
            raise ConfigError("vector: expected a steering vector file or a SteeringVector, found None")
        if isinstance(self.vector, str):
            self._set("vector", Path(self.vector))
        self._set("out", Path(self.out))
        if self.control_model is not None:
            if not isinstance(self.control_model, (str, Path)) or not str(self.control_model):
                raise ConfigError(f"control_model: expected a model name or checkpoint folder, found {self.control_model!r}")
            if self.protocol != "dev_test":
                raise ConfigError("control_model: expected protocol='dev_test' (it runs the setting chosen on dev), "
                                  f"found {self.protocol!r}")
            self._set("control_model", str(self.control_model))

    def sweep(self, gate_heads: tuple = ()):
        """The sweep's :class:`~auralens.steering.evaluate.SweepConfig` (adaptive alpha only with heads)."""
        from auralens.steering.evaluate import SweepConfig

        return SweepConfig(
            alphas=tuple(self.alphas), layers=None if self.layers is None else tuple(self.layers),
            positions=tuple(self.positions), formats=tuple(self.formats), max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size, backend=self.backend, n_boot=self.n_boot, seed=self.seed,
            adaptive_gain=self.adaptive_gain if gate_heads else None, adaptive_heads=tuple(gate_heads),
        )


@takes_config(SteerEvalConfig)
def stage_steer_eval(cfg: SteerEvalConfig, *, lm=None, control_lm=None, quiet: bool = False) -> dict[str, Any]:
    """Sweep alpha x layer x position mode with ``vector`` (a file or a SteeringVector) and its
    controls on ``n`` items of ``data`` (data seed ``seed``, also the controls' seed); write the
    run folder ``out`` (see the module docstring) and return the summary.  Options:
    :class:`SteerEvalConfig` (or its fields as keywords).

    ``adaptive_gain``: steer with adaptive alpha (:class:`auralens.steering.apply.AdaptiveAlpha`) gated
    by ``adaptive_heads`` (same spellings as ``heads_from``; default: the vector's own heads).
    ``control_model`` (dev_test only; ``control_lm``: that model already loaded): see
    :func:`_stage_dev_test`."""
    import hashlib

    from auralens.interp.loading import load_model
    from auralens.interp.runs import RowLog, RunFolder, check_model, load_items, run_identity
    from auralens.steering.directions import collect_paired, parse_heads, random_direction, random_heads
    from auralens.steering.evaluate import best_gain, figures, run_sweep, steering_table
    from auralens.steering.formats import export, load_vector
    from auralens.steering.vector import SteeringVector

    if cfg.protocol == "dev_test":
        return _stage_dev_test(cfg, lm=lm, control_lm=control_lm, quiet=quiet)
    model, data, n, vector, controls, out, resume, seed = (
        cfg.model, cfg.data, cfg.n, cfg.vector, cfg.controls, cfg.out, cfg.resume, cfg.seed)
    # 1. validate: options (SteerEvalConfig, its SweepConfig), the vector file, the items and
    #    every audio header
    vec = vector if isinstance(vector, SteeringVector) else load_vector(vector)
    gate_heads: tuple = ()
    if cfg.adaptive_gain is not None:
        gate_heads = parse_heads(cfg.adaptive_heads) if cfg.adaptive_heads is not None else vec.heads
        if not gate_heads:
            raise ConfigError(
                "adaptive_gain: expected specialist heads for the listening signal (adaptive_heads=...), "
                "found none and the vector is not head-restricted"
            )
    sweep = cfg.sweep(gate_heads)
    if sweep.layers is not None:
        missing = [L for L in sweep.layers if L not in vec.layers]
        if missing:
            raise ConfigError(f"layers {missing}: the vector has directions at layers {list(vec.layers)} only")
    items = load_items(data, n=n, seed=seed)
    digest = hashlib.sha256(vec.stacked().float().cpu().numpy().tobytes()).hexdigest()
    # the sweep as SweepConfig normalises it (float alphas, the resolved gate heads), the vector
    manifest = {**cfg.manifest(**sweep.to_dict(), vector_method=vec.method, vector_sha256=digest,
                               vector_fingerprint=vec.data_fingerprint,
                               vector_source=str(vector) if vector is not vec else None), **run_identity(items)}
    # 2. the folder would accept this run (read-only)
    RunFolder.check(out, manifest=manifest, resume=resume)
    # 3. the model, and what depends on it
    if lm is None:
        check_model(model)
        lm = load_model(model, dtype=cfg.dtype, **_placement(cfg))
    vec.check_compatible(lm.arch, lm.model_id if vector is not vec else None)
    name = vec.method if vec.method not in ("random_direction", "random_heads") else f"{vec.method}_vector"
    vectors: dict[str, Any] = {name: vec}
    if "per_input" in cfg.modes:
        from auralens.steering.evaluate import PerInput

        vectors["per_input"] = PerInput(vec)
    notes: list[str] = []
    fit_ids: set[str] = set()
    fit_items, why = _fit_items(vec)
    if fit_items is not None:
        fit_ids = {it.item_id for it in fit_items}
    if controls:
        vectors["random_direction"] = random_direction(vec, seed=seed)
        if not vec.heads:
            notes.append("random_heads control skipped: the vector is not head-restricted")
        elif fit_items is None:
            notes.append(f"random_heads control skipped: {why}")
        else:
            fitcfg = vec.extra["fit"]
            acts = collect_paired(lm, fit_items, layers=vec.layers, positions=fitcfg.get("positions", ["last_prompt"]),
                                  fmt=fitcfg.get("format", "direct"))
            vectors["random_heads"] = random_heads(acts, lm, vec, seed=seed)
    # 4. the folder, 5. the rows
    run = on_main(lambda: RunFolder.create(out, manifest=manifest, resume=resume))
    run.file("vectors").mkdir(parents=True, exist_ok=True)
    for vname, v in vectors.items():
        if isinstance(v, SteeringVector):
            if is_main():
                export(v, run.file(f"vectors/{vname}.safetensors"))
    log = RowLog(run, "items.parquet", key="row_id", resume=resume)
    rows = run_sweep(lm, items, vectors, sweep, log=log, progress=not quiet)
    table = steering_table(rows, n_boot=sweep.n_boot, seed=sweep.seed, alphas=sorted({0.0, *sweep.alphas}))
    run.write_table("steering.parquet", table)
    figs = figures(table)
    run.write_figure("steering_accuracy.html", figs["accuracy"])
    run.write_figure("steering_delta.html", figs["delta"])
    overlap = len(fit_ids & {it.item_id for it in items})
    if overlap:
        notes.append(f"{overlap} of the {len(items)} evaluation items were also fit items (in-sample)")
    best = best_gain(table, rows, main=name, n_boot=sweep.n_boot, seed=sweep.seed)
    summary = {
        "model": model, "data": data, "n": len(items), "run": str(out), "vector": name,
        "method": vec.method, "layers": list(vec.layers), "alphas": list(sweep.alphas), "vectors": list(vectors),
        "best": best, "fit_overlap": overlap, "notes": notes,
        **({"per_input": _per_input_cost(vec)} if "per_input" in cfg.modes else {}),
    }
    run.write_json("summary.json", summary)
    run.mark_stage("steer_eval", n_rows=len(rows))
    run.finish()
    barrier()  # rank 0 has written every file (the other ranks skipped them: auralens.interp.distributed)
    return summary


def _per_input_cost(vec) -> dict[str, Any]:
    """What ``s(x)`` costs at inference, per item, beside the generation (every sweep setting
    steers one layer: :meth:`auralens.steering.evaluate.PerInput.extra_forwards`)."""
    from auralens.steering.evaluate import PerInput

    k = PerInput(vec).extra_forwards(vec.layers[:1])
    note = ("s(x) costs one extra forward per item (the silence pass); its real pass is the generation's own "
            "prefill (folded)" if k == 1 else "s(x) costs two extra forwards per item (real and silence passes)")
    return {"extra_forwards_per_item": k, "note": note}


def _at_layer(v, layer: int):
    """``v`` (a SteeringVector or a PerInput) with its direction at ``layer`` only."""
    import dataclasses

    from auralens.steering.evaluate import PerInput

    if isinstance(v, PerInput):
        return dataclasses.replace(v, vector=_at_layer(v.vector, layer))
    return dataclasses.replace(v, directions={layer: v.directions[layer]})


def _refit_at(lm, vec, fit_items, fc: dict, layer: int, *, batch_size: int, method: str, extra: dict):
    """The audio-minus-silence vector refitted with ``lm`` on the vector's calibration items at
    ``layer`` (residual stream, same positions, format and normalisation as ``vec``)."""
    from auralens.steering.directions import collect_paired, direction_from

    acts = collect_paired(lm, fit_items, layers=[layer], positions=fc.get("positions", ["last_prompt"]),
                          fmt=fc.get("format", "direct"), batch_size=batch_size)
    return direction_from(acts, lm, site=vec.hook, layers=[layer],
                          normalize=fc.get("normalize", vec.extra.get("normalize", "none")), method=method,
                          extra={**extra, "fit": fc})


def _random_heads_layers(fit: dict, arch, seed: int):
    """The random-heads control of a residual vector whose layer set is the layers of its top-k
    specialist heads (``heads_use == 'layers'``): k heads drawn (seeded) without replacement
    from the non-specialist heads of the same heads table (all the model's heads when the table
    cannot be read again), preferring heads outside the specialist layers when there are at
    least k of them; specialist head j is matched with drawn head j, so the vector's layer
    ``L`` maps to the layer of the drawn head matched with the best-ranked specialist in ``L``.
    Returns ``{"heads", "layers", "layer_for", "pool"}`` or the reason it does not apply (str)."""
    import numpy as np

    from auralens.steering.directions import parse_heads

    heads = [tuple(int(x) for x in h) for h in (fit.get("heads") or [])]
    if not heads:
        return "the vector has no specialist heads (its layers are not taken from heads)"
    if fit.get("heads_use") != "layers" or not str(fit.get("layers_from", "")).startswith("heads"):
        return (f"the vector's layers were not taken from its heads (heads_use={fit.get('heads_use')!r}, "
                f"layers_from={fit.get('layers_from')!r})")
    table, pool_from = None, "the heads table"
    src = fit.get("heads_from")
    if isinstance(src, str) and src != "pairs" and (Path(src).is_dir() or Path(src).suffix == ".parquet"):
        try:
            table = list(parse_heads(src))
        except ConfigError:
            table = None
    if table is None:
        table = [(L, h) for L in range(arch.n_layers) for h in range(arch.n_heads)]
        pool_from = "all heads of the model (the heads table cannot be read again)"
    spec, spec_layers = set(heads), {L for L, _ in heads}
    others = [h for h in table if h not in spec and 0 <= h[0] < arch.n_layers and 0 <= h[1] < arch.n_heads]
    outside = [h for h in others if h[0] not in spec_layers]
    k = len(heads)
    if len(outside) >= k:
        pool, pool_desc = outside, f"non-specialist heads of {pool_from} outside the specialist layers"
    elif len(others) >= k:
        pool, pool_desc = others, f"non-specialist heads of {pool_from} (fewer than k outside the specialist layers)"
    else:
        return f"fewer than k={k} non-specialist heads in {pool_from}"
    rng = np.random.default_rng(int(seed))
    drawn = [pool[int(i)] for i in rng.choice(len(pool), size=k, replace=False)]
    layer_for = {}
    for (L, _), (Lc, _) in zip(heads, drawn):
        layer_for.setdefault(L, Lc)
    return {"heads": drawn, "layers": sorted({L for L, _ in drawn}), "layer_for": layer_for, "pool": pool_desc}


def _paired_stats(rows, name: str, *, n_boot: int, seed: int) -> dict[str, Any]:
    """Accuracy of ``name`` and of the baseline on the same items, and the paired gain with its
    bootstrap CI over items (:func:`auralens.interp.stats.bootstrap_mean_ci`)."""
    import numpy as np

    from auralens.interp.stats import bootstrap_mean_ci
    from auralens.steering.evaluate import BASELINE

    base = rows[rows["vector"] == BASELINE].set_index("item_id")["correct"].astype(float)
    got = rows[rows["vector"] == name].set_index("item_id")["correct"].astype(float)
    common = base.index.intersection(got.index)
    vals = np.stack([base[common].to_numpy(), got[common].to_numpy(), (got[common] - base[common]).to_numpy()], -1)
    mean, lo, hi = bootstrap_mean_ci(vals, n_boot=n_boot, seed=seed)
    return {"n": int(len(common)), "base": float(mean[0]), "base_ci": [float(lo[0]), float(hi[0])],
            "steered": float(mean[1]), "steered_ci": [float(lo[1]), float(hi[1])],
            "gain": float(mean[2]), "ci": [float(lo[2]), float(hi[2])]}


def _select_on_dev(table, names: dict[str, str]) -> dict[str, Any]:
    """The (mode, layer, beta, positions, format) with the largest dev gain (ties: smaller |beta|)."""
    t = table[(table["category"] == "all") & (table["alpha"] != 0.0) & (table["vector"].isin(list(names)))].copy()
    if t.empty:
        raise ConfigError("alphas: expected at least one non-zero beta to choose on dev, found none")
    t["abs_alpha"] = t["alpha"].abs()
    best = t.sort_values(["delta", "abs_alpha", "layer"], ascending=[False, True, True]).iloc[0]
    return {
        "vector": str(best["vector"]), "mode": names[str(best["vector"])], "layer": int(best["layer"]),
        "layers": [int(best["layer"])], "beta": float(best["alpha"]), "positions": str(best["positions"]),
        "format": str(best["format"]),
        "dev": {"n": int(best["n"]), "steered": float(best["accuracy"]),
                "base": float(best["accuracy"] - best["delta"]), "gain": float(best["delta"]),
                "ci": [float(best["delta_ci_low"]), float(best["delta_ci_high"])]},
    }


def _stage_dev_test(cfg: SteerEvalConfig, *, lm=None, control_lm=None, quiet: bool = False) -> dict[str, Any]:
    """The dev/test protocol of :func:`stage_steer_eval` (``protocol="dev_test"``).

    1. validate everything before any generation: the vector (model, width, layers), the
       splits (dev/test from :func:`eval_splits`), and that the vector's fit items share no item
       or audio clip with the dev or test items (the fit data are rebuilt from
       ``extra['fit']``; a vector whose fit data cannot be rebuilt is refused);
    2. dev: sweep beta x layer x positions x mode (``mean``: the fitted v; ``per_input``:
       s(x) of each item) -> ``items.parquet``, ``steering.parquet``, figures;
    3. choose the setting with the largest dev gain (ties: the smaller |beta|);
    4. test: baseline, the chosen setting, and its controls at the same setting (random
       direction of equal norm — per item for per_input —; random heads: for head-restricted
       vectors the same heads count at random heads, for residual vectors whose layers came
       from specialist heads (``heads_use='layers'``) the same mode at the layer of k random
       non-specialist heads (:func:`_random_heads_layers`), else ``{"skipped": reason}``)
       -> ``test_items.parquet``; paired bootstrap CIs over items;
       with ``control_model`` (validated, same architecture and width, before any generation):
       the same setting and procedure on that model (``mean``: v refitted with it on the same
       calibration items; ``per_input``: its own s(x)) on the same test items ->
       ``control_model_items.parquet``, ``controls["model_without_deficit"]``;
    5. ``vectors/selected.safetensors`` records the chosen setting and the split fingerprints
       (``extra['steer']``); ``summary.json`` = the returned summary."""
    import dataclasses
    import hashlib

    from auralens.interp.loading import load_model
    from auralens.interp.runs import RowLog, RunFolder, check_model, load_items, run_identity
    from auralens.steering.directions import collect_paired, parse_heads, random_direction, random_heads
    from auralens.steering.evaluate import PerInput, figures, run_sweep, steering_table
    from auralens.steering.formats import export, load_vector
    from auralens.steering.vector import SteeringVector

    model, data, n, vector, out, resume, seed = cfg.model, cfg.data, cfg.n, cfg.vector, cfg.out, cfg.resume, cfg.seed
    # 1. validate
    vec = vector if isinstance(vector, SteeringVector) else load_vector(vector)
    gate_heads: tuple = ()
    if cfg.adaptive_gain is not None:
        gate_heads = parse_heads(cfg.adaptive_heads) if cfg.adaptive_heads is not None else vec.heads
        if not gate_heads:
            raise ConfigError("adaptive_gain: expected specialist heads for the listening signal, found none")
    sweep = cfg.sweep(gate_heads)
    if sweep.layers is not None:
        missing = [L for L in sweep.layers if L not in vec.layers]
        if missing:
            raise ConfigError(f"layers {missing}: the vector has directions at layers {list(vec.layers)} only")
    modes = tuple(cfg.modes)
    notes: list[str] = []
    if "per_input" in modes and (vec.hook != "hook_resid_post" or vec.heads):
        if modes == ("per_input",):
            raise ConfigError(f"modes: per_input needs a residual-stream vector without heads, found {vec.describe()}")
        modes = tuple(m for m in modes if m != "per_input")
        notes.append("per_input mode skipped: the vector is head-restricted or not in the residual stream")
    fit = vec.extra.get("fit") if isinstance(vec.extra.get("fit"), dict) else {}
    if fit.get("model") is not None and lm is None and str(fit["model"]) != str(model):
        raise ConfigError(f"vector: fitted on model {fit['model']!r}, expected one fitted on {model!r}")
    splits = eval_splits(data, seed)
    dev_items = load_items(splits["dev"][0], n=n, seed=splits["dev"][1])
    test_items = load_items(splits["test"][0], n=n, seed=splits["test"][1])
    fit_items, why = _fit_items(vec)
    if fit_items is None:
        raise ConfigError(f"vector: cannot check that its fit items are disjoint from the test items: {why}")
    for split, its in (("test", test_items), ("dev", dev_items)):
        k = overlap(fit_items, its)
        if k:
            raise ConfigError(
                f"vector: fitted on {fit.get('data')!r} (seed {fit.get('seed')}), which shares {k} of the "
                f"{len(its)} {split} items ({splits[split][0]}, seed {splits[split][1]}); expected disjoint splits "
                "(fit on the calibration split)"
            )
    if fit.get("heads_data"):
        check_heads_data(fit["heads_data"], [splits["dev"][0], splits["test"][0]])
    records = {"calibration": fit.get("split") or {"data": fit.get("data"), "seed": fit.get("seed"),
                                                   "data_fingerprint": vec.data_fingerprint},
               "dev": split_record(splits["dev"][0], splits["dev"][1], dev_items),
               "test": split_record(splits["test"][0], splits["test"][1], test_items)}
    digest = hashlib.sha256(vec.stacked().float().cpu().numpy().tobytes()).hexdigest()
    manifest = {**cfg.manifest(**sweep.to_dict(), vector_method=vec.method, vector_sha256=digest,
                               vector_fingerprint=vec.data_fingerprint,
                               vector_source=str(vector) if vector is not vec else None,
                               splits={k: v for k, v in records.items() if k != "calibration"},
                               fit_split=records["calibration"],
                               **({"control_model": cfg.control_model} if cfg.control_model else {})),
                **run_identity(dev_items + test_items)}
    RunFolder.check(out, manifest=manifest, resume=resume)
    if lm is None:
        check_model(model)
        lm = load_model(model, dtype=cfg.dtype, **_placement(cfg))
    vec.check_compatible(lm.arch, lm.model_id if vector is not vec else None)
    if fit.get("model") is not None and str(fit["model"]) not in (str(model), str(lm.model_id), str(getattr(lm, "source", ""))):
        raise ConfigError(f"vector: fitted on model {fit['model']!r}, evaluated on {model!r}")
    if cfg.control_model is not None or control_lm is not None:
        if control_lm is None:
            try:
                check_model(cfg.control_model)
            except ConfigError as exc:
                raise ConfigError(f"control_model: {exc}") from None
            control_lm = load_model(cfg.control_model, dtype=cfg.dtype, **_placement(cfg))
        try:
            vec.check_compatible(control_lm.arch)
        except Exception as exc:  # VectorFileError: another architecture / width / too few layers
            raise ConfigError(f"control_model {cfg.control_model or control_lm.model_id!r}: {exc}") from None
        if vec.n_layers != control_lm.arch.n_layers:
            raise ConfigError(f"control_model {cfg.control_model or control_lm.model_id!r}: expected "
                              f"{vec.n_layers} decoder layers like the vector's model, found {control_lm.arch.n_layers}")
    rh_draw = _random_heads_layers(fit, lm.arch, seed) if cfg.controls and not vec.heads else None
    # 2. dev sweep
    mean_name = vec.method if vec.method not in ("random_direction", "random_heads") else f"{vec.method}_vector"
    dev_vectors: dict[str, Any] = {}
    names: dict[str, str] = {}
    if "mean" in modes:
        dev_vectors[mean_name], names[mean_name] = vec, "mean"
    if "per_input" in modes:
        dev_vectors["per_input"], names["per_input"] = PerInput(vec), "per_input"
    run = on_main(lambda: RunFolder.create(out, manifest=manifest, resume=resume))
    run.file("vectors").mkdir(parents=True, exist_ok=True)
    dev_rows = run_sweep(lm, dev_items, dev_vectors, sweep, log=RowLog(run, "items.parquet", key="row_id", resume=resume),
                         progress=not quiet)
    table = steering_table(dev_rows, n_boot=sweep.n_boot, seed=sweep.seed, alphas=sorted({0.0, *sweep.alphas}))
    run.write_table("steering.parquet", table)
    figs = figures(table)
    run.write_figure("steering_accuracy.html", figs["accuracy"])
    run.write_figure("steering_delta.html", figs["delta"])
    # 3. choose on dev
    sel = _select_on_dev(table, names)
    # 4. test: the chosen setting and its controls
    L_sel = sel["layer"]
    main = _at_layer(dev_vectors[sel["vector"]], L_sel)
    test_vectors: dict[str, Any] = {sel["vector"]: main}
    skipped: dict[str, Any] = {}
    rh_info: dict[str, Any] = {}
    fc = vec.extra.get("fit") if isinstance(vec.extra.get("fit"), dict) else {}
    if cfg.controls:
        if sel["mode"] == "per_input":
            test_vectors["random_direction"] = PerInput(_at_layer(vec, L_sel), random_seed=seed)
        else:
            test_vectors["random_direction"] = _at_layer(random_direction(vec, seed=seed), L_sel)
        if vec.heads:
            if sel["mode"] == "mean":
                acts = collect_paired(lm, fit_items, layers=vec.layers, positions=fc.get("positions", ["last_prompt"]),
                                      fmt=fc.get("format", "direct"))
                test_vectors["random_heads"] = _at_layer(random_heads(acts, lm, vec, seed=seed), L_sel)
        elif isinstance(rh_draw, str):
            skipped["random_heads"] = {"skipped": rh_draw}
            notes.append(f"random_heads control skipped: {rh_draw}")
        else:  # a residual vector whose layers are the specialist heads' layers: the same at random heads' layers
            L_ctrl = rh_draw["layer_for"][L_sel]
            cvec = _refit_at(lm, vec, fit_items, fc, L_ctrl, batch_size=cfg.batch_size, method="random_heads",
                             extra={"control_of": vec.method, "seed": int(seed),
                                    "random_heads": [list(h) for h in rh_draw["heads"]]})
            test_vectors["random_heads"] = PerInput(cvec) if sel["mode"] == "per_input" else cvec
            rh_info = {"heads": [list(h) for h in rh_draw["heads"]], "layer": int(L_ctrl),
                       "vector_layer": int(L_sel), "layers": rh_draw["layers"], "pool": rh_draw["pool"],
                       "same_layer_as_vector": bool(L_ctrl == L_sel), "mode": sel["mode"]}
    # each vector at its own single layer (the selected one; random heads: their matched layer)
    test_sweep = dataclasses.replace(sweep, alphas=(sel["beta"],), layers=None,
                                     positions=(sel["positions"],), formats=(sel["format"],))
    test_rows = run_sweep(lm, test_items, test_vectors, test_sweep,
                          log=RowLog(run, "test_items.parquet", key="row_id", resume=resume), progress=not quiet)
    nb, sd = sweep.n_boot, sweep.seed
    test = _paired_stats(test_rows, sel["vector"], n_boot=nb, seed=sd)
    ctrl: dict[str, Any] = {}
    for cname in test_vectors:
        if cname == sel["vector"]:
            continue
        c = _paired_stats(test_rows, cname, n_boot=nb, seed=sd)
        import numpy as np

        from auralens.steering.evaluate import _paired_ci

        a = test_rows[test_rows["vector"] == sel["vector"]].set_index("item_id")["correct"].astype(float)
        b = test_rows[test_rows["vector"] == cname].set_index("item_id")["correct"].astype(float)
        common = a.index.intersection(b.index)
        d, lo, hi = _paired_ci(np.asarray(a[common]), np.asarray(b[common]), n_boot=nb, seed=sd)
        ctrl[cname] = {"steered": c["steered"], "gain": c["gain"], "ci": c["ci"],
                       "vector_minus_control": d, "vector_minus_control_ci": [lo, hi]}
        if cname == "random_heads" and not vec.heads:
            ctrl[cname].update(rh_info)
    ctrl.update(skipped)
    # the negative-control model: the same selected setting, the same procedure, the same test items
    if control_lm is not None:
        if sel["mode"] == "per_input" or not vec.heads:
            cm = _refit_at(control_lm, vec, fit_items, fc, L_sel, batch_size=cfg.batch_size, method=vec.method,
                           extra={"control_model": cfg.control_model or str(control_lm.model_id)})
        else:  # head-restricted: the same heads, refitted with the control model
            cacts = collect_paired(control_lm, fit_items, layers=[L_sel], positions=fc.get("positions", ["last_prompt"]),
                                   fmt=fc.get("format", "direct"), batch_size=cfg.batch_size)
            from auralens.steering.directions import direction_from

            cm = direction_from(cacts, control_lm, site=vec.hook, heads=[h for h in vec.heads if h[0] == L_sel],
                                layers=[L_sel], normalize=fc.get("normalize", vec.extra.get("normalize", "none")),
                                method=vec.method, extra={"control_model": cfg.control_model or str(control_lm.model_id)})
        cm_vectors = {sel["vector"]: PerInput(cm) if sel["mode"] == "per_input" else cm}
        cm_rows = run_sweep(control_lm, test_items, cm_vectors, test_sweep,
                            log=RowLog(run, "control_model_items.parquet", key="row_id", resume=resume),
                            progress=not quiet)
        cs = _paired_stats(cm_rows, sel["vector"], n_boot=nb, seed=sd)
        ctrl["model_without_deficit"] = {
            "model": cfg.control_model or str(control_lm.model_id), "n": cs["n"], "base": cs["base"],
            "steered": cs["steered"], "gain": cs["gain"], "ci": cs["ci"], "mode": sel["mode"], "layer": int(L_sel),
            "beta": sel["beta"], "positions": sel["positions"]}
    # 5. the chosen vector, with its provenance
    steer_meta = {"mode": sel["mode"], "layers": sel["layers"], "positions": sel["positions"], "beta": sel["beta"],
                  "format": sel["format"], "chosen_on": "dev", "splits": records}
    if is_main():
        export(dataclasses.replace(vec, extra={**vec.extra, "steer": steer_meta}, source=None),
               run.file("vectors/selected.safetensors"))
    for cname, v in test_vectors.items():
        if isinstance(v, SteeringVector) and cname != sel["vector"]:
            if is_main():
                export(v, run.file(f"vectors/{cname}.safetensors"))
    summary = {
        "model": model, "data": data, "protocol": "dev_test", "run": str(out), "vector": mean_name,
        "method": vec.method, "layers": list(vec.layers), "alphas": list(sweep.alphas), "modes": list(modes),
        "selected": sel, "test": test, "controls": ctrl,
        # the chosen setting on test, in the shape of the sweep protocol's "best" (for its readers)
        "best": {"vector": sel["vector"], "layer": sel["layer"], "alpha": sel["beta"], "positions": sel["positions"],
                 "format": sel["format"], "mode": sel["mode"], "accuracy": test["steered"],
                 "baseline_accuracy": test["base"], "delta": test["gain"], "delta_ci": test["ci"], "n": test["n"],
                 "selection": "chosen on the dev split, reported on the test split",
                 "controls": {k: {"accuracy": v["steered"], "delta": v["gain"], "delta_ci": v["ci"],
                                  "vector_minus_control": v["vector_minus_control"],
                                  "vector_minus_control_ci": v["vector_minus_control_ci"]} for k, v in ctrl.items()
                              if "vector_minus_control" in v}},
        "splits": {k: {kk: v.get(kk) for kk in ("data", "seed", "n", "seeds", "ids_sha256")} for k, v in records.items()},
        "notes": notes,
        **({"per_input": _per_input_cost(vec)} if "per_input" in modes else {}),
    }
    run.write_json("summary.json", summary)
    run.mark_stage("steer_eval", n_rows=len(dev_rows) + len(test_rows))
    run.finish()
    barrier()  # rank 0 has written every file (the other ranks skipped them: auralens.interp.distributed)
    return summary
