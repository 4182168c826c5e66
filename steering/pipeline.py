"""Steering stages shared by the CLI, the demo and the notebooks.

- :func:`stage_steer_fit` fits an audio-minus-silence vector on a dataset and writes it to a
  vector file (safetensors / gguf / npz by extension).  The data seed is ``seed``, and the fit
  (model, data, n, seed, positions, site, heads, normalisation, format) is recorded in the
  vector's ``extra["fit"]``, so a later evaluation can rebuild the random-heads control from the
  very same items.
- :func:`stage_steer_eval` sweeps alpha (and layer) with the vector and its controls (random
  direction of equal norm; random heads when the vector is head-restricted) on a dataset and
  writes a run folder: ``manifest.json``, ``items.parquet`` (every generation, resumable),
  ``steering.parquet`` (:data:`steering.evaluate.STEERING_COLUMNS` + ``format``),
  ``steering_accuracy.html`` / ``steering_delta.html`` (self-contained plotly),
  ``vectors/<name>.safetensors`` (the vectors used) and ``summary.json``.  It returns the
  summary: the best gain of the vector over alpha = 0 with its paired-bootstrap CI, the
  controls at the same setting, and the vector − control difference, whatever their signs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from interp.errors import ConfigError

__all__ = ["stage_steer_eval", "stage_steer_fit"]


def _manifest(command: str, model: str, data: str, seed: int, n: int | None, config: dict[str, Any]) -> dict[str, Any]:
    # the shape auralens.stages writes (steering does not import the CLI package)
    return {"command": command, "model": model, "data": data, "seed": seed, "n": n, "config": config}


def stage_steer_fit(
    *,
    model: str,
    data: str,
    n: int,
    layers: Sequence[int] | None,
    positions: str | int | Sequence[str | int] = "last_prompt",
    heads_from: Any = None,
    out_vector: str | Path,
    seed: int,
    lm=None,
    k_heads: int | None = None,
    site: str = "hook_resid_post",
    normalize: str = "none",
    fmt: str = "direct",
    batch_size: int = 8,
    dtype: str = "auto",
    quiet: bool = True,
):
    """Fit the audio-minus-silence vector on ``n`` items of ``data`` (data seed ``seed``) and
    write it to ``out_vector``.  Returns the :class:`~steering.vector.SteeringVector`.

    ``layers``: decoder layers (default: those of the heads, else the middle layer).
    ``heads_from``: restrict to heads — (layer, head) pairs, ``"L:H,..."``, a heads table
    (parquet with layer/head/rank, e.g. from :func:`interp.listening.heads_table`) or a run
    folder holding ``heads.parquet``; ``k_heads`` keeps the top ones."""
    from interp.loading import load_model
    from interp.runs import check_dtype, check_formats, check_int, check_model, load_items
    from steering.directions import NORMALIZATIONS, _site, fit_with_controls, parse_heads, parse_positions
    from steering.formats import FORMATS as VECTOR_FORMATS, export

    # validate everything before the model loads and before the vector file is written
    pos = parse_positions(positions)
    heads = parse_heads(heads_from, k=k_heads)
    if layers is not None:
        layers = [check_int("layers", L, minimum=0) for L in layers]
        if not layers:
            raise ConfigError("layers: expected at least one decoder layer (or None), found none")
    _site(site)
    if normalize not in NORMALIZATIONS:
        raise ConfigError(f"normalize: expected one of {list(NORMALIZATIONS)}, found {normalize!r}")
    check_formats(fmt, "format")
    check_int("batch_size", batch_size)
    check_dtype(dtype)
    out_vector = Path(out_vector)
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
                raise ConfigError(f"--out {str(out_vector)!r}: expected a folder path, found that {str(parent)!r} is a file")
            break
    items = load_items(data, n=n, seed=seed)
    if lm is None:
        check_model(model)
        lm = load_model(model, dtype=dtype)
    if layers is None and not heads:
        layers = [lm.arch.n_layers // 2]
    fit = {
        "model": model, "data": data, "n": len(items), "seed": int(seed), "positions": [str(p) for p in pos],
        "site": site, "normalize": normalize, "format": fmt,
        "heads_from": None if heads_from is None else str(heads_from) if isinstance(heads_from, (str, Path)) else "pairs",
        "k_heads": k_heads,
    }
    vecs = fit_with_controls(
        lm, items, layers=layers, positions=pos, site=site, heads=heads, normalize=normalize, fmt=fmt,
        batch_size=batch_size, seed=seed, controls=False, extra={"fit": fit}, progress=not quiet,
    )
    vec = vecs["audio_minus_silence"]
    out_vector.parent.mkdir(parents=True, exist_ok=True)
    export(vec, out_vector)
    return vec


def _fit_items(vec):
    """The fit items recorded in ``vec.extra['fit']``, if they can be rebuilt identically."""
    from interp.datasets import fingerprint, load_dataset

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


def stage_steer_eval(
    *,
    model: str,
    data: str,
    n: int,
    vector,
    alphas: Sequence[float],
    layers: Sequence[int] | None = None,
    controls: bool = True,
    out: str | Path,
    resume: bool = False,
    seed: int = 7,
    formats: Sequence[str] = ("direct",),
    lm=None,
    quiet: bool = False,
    positions: Sequence[str] = ("last_prompt",),
    max_new_tokens: int = 32,
    batch_size: int = 16,
    backend: str = "torch",
    n_boot: int = 1000,
    dtype: str = "auto",
    adaptive_gain: float | None = None,
    adaptive_heads: Any = None,
) -> dict[str, Any]:
    """Sweep alpha x layer x position mode with ``vector`` (a file or a SteeringVector) and its
    controls on ``n`` items of ``data`` (data seed ``seed``, also the controls' seed); write the
    run folder ``out`` (see the module docstring) and return the summary.

    ``adaptive_gain``: steer with adaptive alpha (:class:`steering.apply.AdaptiveAlpha`) gated
    by ``adaptive_heads`` (same spellings as ``heads_from``; default: the vector's own heads)."""
    import hashlib

    from interp.loading import load_model
    from interp.runs import RowLog, RunFolder, check_dtype, check_model, load_items, run_identity
    from steering.directions import collect_paired, parse_heads, random_direction, random_heads
    from steering.evaluate import SweepConfig, best_gain, figures, run_sweep, steering_table
    from steering.formats import export, load_vector
    from steering.vector import SteeringVector

    # 1. validate: options (SweepConfig checks alphas, layers, positions, formats, sizes), the
    #    vector file, the items and every audio header
    check_dtype(dtype)
    vec = vector if isinstance(vector, SteeringVector) else load_vector(vector)
    gate_heads: tuple = ()
    if adaptive_gain is not None:
        gate_heads = parse_heads(adaptive_heads) if adaptive_heads is not None else vec.heads
        if not gate_heads:
            raise ConfigError(
                "adaptive_gain: expected specialist heads for the listening signal (adaptive_heads=...), "
                "found none and the vector is not head-restricted"
            )
    cfg = SweepConfig(
        alphas=tuple(alphas), layers=None if layers is None else tuple(layers), positions=tuple(positions),
        formats=tuple(formats), max_new_tokens=max_new_tokens, batch_size=batch_size, backend=backend,
        n_boot=n_boot, seed=seed, adaptive_gain=adaptive_gain, adaptive_heads=gate_heads,
    )
    if cfg.layers is not None:
        missing = [L for L in cfg.layers if L not in vec.layers]
        if missing:
            raise ConfigError(f"layers {missing}: the vector has directions at layers {list(vec.layers)} only")
    items = load_items(data, n=n, seed=seed)
    digest = hashlib.sha256(vec.stacked().float().cpu().numpy().tobytes()).hexdigest()
    config = {
        **cfg.to_dict(), "controls": bool(controls), "vector_method": vec.method, "vector_sha256": digest,
        "vector_fingerprint": vec.data_fingerprint, "vector_source": str(vector) if vector is not vec else None,
    }
    manifest = {**_manifest("auralens steer eval", model, data, seed, n, config), **run_identity(items)}
    # 2. the folder would accept this run (read-only)
    RunFolder.check(out, manifest=manifest, resume=resume)
    # 3. the model, and what depends on it
    if lm is None:
        check_model(model)
        lm = load_model(model, dtype=dtype)
    vec.check_compatible(lm.arch, lm.model_id if vector is not vec else None)
    name = vec.method if vec.method not in ("random_direction", "random_heads") else f"{vec.method}_vector"
    vectors: dict[str, SteeringVector] = {name: vec}
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
    run = RunFolder.create(out, manifest=manifest, resume=resume)
    run.file("vectors").mkdir(parents=True, exist_ok=True)
    for vname, v in vectors.items():
        export(v, run.file(f"vectors/{vname}.safetensors"))
    log = RowLog(run, "items.parquet", key="row_id", resume=resume)
    rows = run_sweep(lm, items, vectors, cfg, log=log, progress=not quiet)
    table = steering_table(rows, n_boot=cfg.n_boot, seed=cfg.seed, alphas=sorted({0.0, *cfg.alphas}))
    run.write_table("steering.parquet", table)
    figs = figures(table)
    run.write_figure("steering_accuracy.html", figs["accuracy"])
    run.write_figure("steering_delta.html", figs["delta"])
    overlap = len(fit_ids & {it.item_id for it in items})
    if overlap:
        notes.append(f"{overlap} of the {len(items)} evaluation items were also fit items (in-sample)")
    best = best_gain(table, rows, main=name, n_boot=cfg.n_boot, seed=cfg.seed)
    summary = {
        "model": model, "data": data, "n": len(items), "run": str(out), "vector": name,
        "method": vec.method, "layers": list(vec.layers), "alphas": list(cfg.alphas), "vectors": list(vectors),
        "best": best, "fit_overlap": overlap, "notes": notes,
    }
    run.write_json("summary.json", summary)
    run.mark_stage("steer_eval", n_rows=len(rows))
    run.finish()
    return summary
