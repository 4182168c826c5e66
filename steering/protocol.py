"""The two protocols of ``steer eval`` (:func:`auralens.steering.stage_eval.stage_steer_eval`).

``dev_test`` (:func:`run_dev_test`), as steps:

1. :func:`validate_dev_test` — everything before any generation: the vector (model, layers),
   the splits (dev/test from :func:`auralens.steering.splits.eval_splits`), and that the vector's
   fit items share no item or audio clip with the dev or test items (the fit data are rebuilt
   from ``extra['fit']``; a vector whose fit data cannot be rebuilt is refused); then
   :func:`open_dev_test` opens the run through :func:`auralens.interp.runs.open_run` (the folder
   check, the model and the control model with their checks, then the folder);
2. :func:`sweep_dev` — beta x layer x positions x mode (``mean``: the fitted v; ``per_input``:
   s(x) of each item) -> ``items.parquet``, ``steering.parquet``, figures;
3. :func:`select_on_dev` — the setting with the largest dev gain (ties: the smaller |beta|);
4. :func:`evaluate_on_test` — on test: baseline, the chosen setting and its controls at the
   same setting (:mod:`auralens.steering.controls`) -> ``test_items.parquet``, paired bootstrap
   CIs over items; with a control model (:func:`evaluate_control_model`) the same setting and
   procedure on that model on the same test items -> ``control_model_items.parquet``,
   ``controls["model_without_deficit"]``;
5. :func:`write_dev_test` — ``vectors/selected.safetensors`` records the chosen setting and the
   split fingerprints (``extra['steer']``); ``summary.json`` = the returned summary.

``sweep`` (:func:`run_in_sample`): beta (and layer) swept with the vector and its controls on
one set of items; the best gain is chosen on those items (optimistic, the summary says so).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

from auralens.interp.distributed import barrier, is_main
from auralens.interp.errors import ConfigError
from auralens.interp.runs import RowLog, load_items, open_run
from auralens.steering.checks import parse_heads
from auralens.steering.controls import (
    at_layer,
    compare_controls,
    control_model_vector,
    controls_for_test,
    load_control_model,
    random_heads_layers,
    sweep_controls,
)
from auralens.steering.evaluate import (
    PerInput,
    best_gain,
    figures,
    paired_stats,
    run_sweep,
    steering_table,
)
from auralens.steering.formats import export, load_vector
from auralens.steering.registry import DIRECTIONS, MODES
from auralens.steering.splits import (
    check_heads_data,
    eval_splits,
    fit_items,
    overlap,
    split_record,
)
from auralens.steering.vector import SteeringVector

__all__ = [
    "DevTestPlan",
    "evaluate_control_model",
    "evaluate_on_test",
    "main_name",
    "mode_vector",
    "open_dev_test",
    "per_input_cost",
    "run_dev_test",
    "run_in_sample",
    "select_on_dev",
    "sweep_dev",
    "validate_dev_test",
    "vector_digest",
    "write_dev_test",
]


# --------------------------------------------------------------------------------------------
# Shared by both protocols
# --------------------------------------------------------------------------------------------


def resolve_vector(cfg, *, no_heads: str):
    """The vector (``cfg.vector``: a file or a SteeringVector) and the sweep
    (:meth:`SteerEvalConfig.sweep`, adaptive beta gated by ``cfg.adaptive_heads`` or the vector's
    heads) with the swept layers checked against the vector's.  ``no_heads``: the error message
    when adaptive beta has no heads to gate it."""
    vec = cfg.vector if isinstance(cfg.vector, SteeringVector) else load_vector(cfg.vector)
    gate_heads: tuple = ()
    if cfg.adaptive_gain is not None:
        gate_heads = parse_heads(cfg.adaptive_heads) if cfg.adaptive_heads is not None else vec.heads
        if not gate_heads:
            raise ConfigError(no_heads)
    sweep = cfg.sweep(gate_heads)
    if sweep.layers is not None:
        missing = [L for L in sweep.layers if L not in vec.layers]
        if missing:
            raise ConfigError(f"layers {missing}: the vector has directions at layers {list(vec.layers)} only")
    return vec, sweep


def vector_digest(vec) -> str:
    """sha256 of the vector's stacked float32 directions (the manifest's ``vector_sha256``)."""
    return hashlib.sha256(vec.stacked().float().cpu().numpy().tobytes()).hexdigest()


def main_name(vec) -> str:
    """The name of the evaluated vector in the tables: its method, with ``_vector`` appended when
    that method is a control's (so it never takes a control's name)."""
    return f"{vec.method}_vector" if vec.method in DIRECTIONS.controls() else vec.method


def per_input_cost(vec) -> dict[str, Any]:
    """What ``s(x)`` costs at inference, per item, beside the generation (every sweep setting
    steers one layer: :meth:`auralens.steering.evaluate.PerInput.extra_forwards`)."""
    k = PerInput(vec).extra_forwards(vec.layers[:1])
    note = ("s(x) costs one extra forward per item (the silence pass); its real pass is the generation's own "
            "prefill (folded)" if k == 1 else "s(x) costs two extra forwards per item (real and silence passes)")
    return {"extra_forwards_per_item": k, "note": note}


def write_sweep_table(run, rows, sweep):
    """``steering.parquet`` and its two figures from the sweep's item rows; returns the table."""
    table = steering_table(rows, n_boot=sweep.n_boot, seed=sweep.seed, betas=sorted({0.0, *sweep.betas}))
    run.write_table("steering.parquet", table)
    figs = figures(table)
    run.write_figure("steering_accuracy.html", figs["accuracy"])
    run.write_figure("steering_delta.html", figs["delta"])
    return table


def vector_source(cfg, vec) -> str | None:
    """The vector file the run read (``None`` for a SteeringVector passed in)."""
    return str(cfg.vector) if cfg.vector is not vec else None


# --------------------------------------------------------------------------------------------
# The in-sample sweep
# --------------------------------------------------------------------------------------------


def run_in_sample(cfg, *, lm=None, quiet: bool = False) -> dict[str, Any]:
    """The ``sweep`` protocol: validate (options, vector, items), open the run
    (:func:`auralens.interp.runs.open_run`: folder check, model, vector check, controls), sweep,
    write the table, figures, vectors and the summary with the best in-sample gain."""
    vec, sweep = resolve_vector(cfg, no_heads=(
        "adaptive_gain: expected specialist heads for the listening signal (adaptive_heads=...), "
        "found none and the vector is not head-restricted"))
    items = load_items(cfg.data, n=cfg.n, seed=cfg.seed)
    manifest = cfg.manifest(**sweep.to_dict(), vector_method=vec.method, vector_sha256=vector_digest(vec),
                            vector_fingerprint=vec.data_fingerprint, vector_source=vector_source(cfg, vec))
    name = main_name(vec)
    vectors: dict[str, Any] = {name: vec}  # the mean mode always, then the other modes in registration order
    vectors.update({m: mode_vector(m, vec) for m in MODES.names() if m in cfg.modes and m != "mean"})
    fit = {"items": None, "why": None, "notes": []}

    def before_create(loaded) -> None:
        vec.check_compatible(loaded.arch, loaded.model_id if cfg.vector is not vec else None)
        fit["items"], fit["why"] = fit_items(vec)
        if cfg.controls:
            ctrl, fit["notes"] = sweep_controls(loaded, vec, fit["items"], fit["why"], seed=cfg.seed)
            vectors.update(ctrl)

    run, lm = open_run(cfg.out, manifest=manifest, items=items, resume=cfg.resume, lm=lm, model=cfg.model,
                       dtype=cfg.dtype, device_map=cfg.device_map, before_create=before_create)
    run.file("vectors").mkdir(parents=True, exist_ok=True)
    for vname, v in vectors.items():
        if isinstance(v, SteeringVector) and is_main():
            export(v, run.file(f"vectors/{vname}.safetensors"))
    rows = run_sweep(lm, items, vectors, sweep, log=RowLog(run, "items.parquet", key="row_id", resume=cfg.resume),
                     progress=not quiet)
    table = write_sweep_table(run, rows, sweep)
    notes = list(fit["notes"])
    fit_ids = {it.item_id for it in fit["items"]} if fit["items"] is not None else set()
    shared = len(fit_ids & {it.item_id for it in items})
    if shared:
        notes.append(f"{shared} of the {len(items)} evaluation items were also fit items (in-sample)")
    summary = {
        "model": cfg.model, "data": cfg.data, "n": len(items), "run": str(cfg.out), "vector": name,
        "method": vec.method, "layers": list(vec.layers), "betas": list(sweep.betas), "vectors": list(vectors),
        "best": best_gain(table, rows, main=name, n_boot=sweep.n_boot, seed=sweep.seed),
        "fit_overlap": shared, "notes": notes,
        **({"per_input": per_input_cost(vec)} if "per_input" in cfg.modes else {}),
    }
    return finish_run(run, summary, n_rows=len(rows))


def finish_run(run, summary: dict[str, Any], *, n_rows: int) -> dict[str, Any]:
    """Write ``summary.json``, mark the stage done and close the run (every rank waits for rank 0)."""
    run.write_json("summary.json", summary)
    run.mark_stage("steer_eval", n_rows=n_rows)
    run.finish()
    barrier()  # rank 0 has written every file (the other ranks skipped them: auralens.interp.distributed)
    return summary


# --------------------------------------------------------------------------------------------
# The dev/test protocol
# --------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class DevTestPlan:
    """What :func:`validate_dev_test` resolved before any model is loaded."""

    vec: Any
    sweep: Any
    modes: tuple[str, ...]
    notes: list[str]
    fit: dict[str, Any]
    fit_items: list
    splits: dict[str, tuple[str, int]]
    dev_items: list
    test_items: list
    records: dict[str, Any]
    manifest: dict[str, Any]
    rh_draw: Any = None
    control_lm: Any = None
    dev_vectors: dict[str, Any] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)


def _check_modes(cfg, vec, notes: list[str]) -> tuple[str, ...]:
    """``cfg.modes`` less ``per_input`` when the vector cannot be applied per input (a note says so)."""
    modes = tuple(cfg.modes)
    if "per_input" in modes and (vec.hook != "hook_resid_post" or vec.heads):
        if modes == ("per_input",):
            raise ConfigError(f"modes: per_input needs a residual-stream vector without heads, found {vec.describe()}")
        modes = tuple(m for m in modes if m != "per_input")
        notes.append("per_input mode skipped: the vector is head-restricted or not in the residual stream")
    return modes


def _check_disjoint(vec, fit: dict, fit_items_, splits, dev_items, test_items) -> None:
    """The fit items share no item or audio clip with the dev or test items, and the vector's
    heads were ranked on calibration data."""
    for split, its in (("test", test_items), ("dev", dev_items)):
        k = overlap(fit_items_, its)
        if k:
            raise ConfigError(
                f"vector: fitted on {fit.get('data')!r} (seed {fit.get('seed')}), which shares {k} of the "
                f"{len(its)} {split} items ({splits[split][0]}, seed {splits[split][1]}); expected disjoint splits "
                "(fit on the calibration split)"
            )
    if fit.get("heads_data"):
        check_heads_data(fit["heads_data"], [splits["dev"][0], splits["test"][0]])


def validate_dev_test(cfg, *, lm=None) -> DevTestPlan:
    """Step 1: the vector, the modes, the splits and their items, the fit items disjoint from them,
    and the run's manifest — all before any model is loaded."""
    vec, sweep = resolve_vector(cfg, no_heads="adaptive_gain: expected specialist heads for the listening signal, "
                                              "found none")
    notes: list[str] = []
    modes = _check_modes(cfg, vec, notes)
    fit = vec.extra.get("fit") if isinstance(vec.extra.get("fit"), dict) else {}
    if fit.get("model") is not None and lm is None and str(fit["model"]) != str(cfg.model):
        raise ConfigError(f"vector: fitted on model {fit['model']!r}, expected one fitted on {cfg.model!r}")
    splits = eval_splits(cfg.data, cfg.seed)
    dev_items = load_items(splits["dev"][0], n=cfg.n, seed=splits["dev"][1])
    test_items = load_items(splits["test"][0], n=cfg.n, seed=splits["test"][1])
    fit_items_, why = fit_items(vec)
    if fit_items_ is None:
        raise ConfigError(f"vector: cannot check that its fit items are disjoint from the test items: {why}")
    _check_disjoint(vec, fit, fit_items_, splits, dev_items, test_items)
    records = {"calibration": fit.get("split") or {"data": fit.get("data"), "seed": fit.get("seed"),
                                                   "data_fingerprint": vec.data_fingerprint},
               "dev": split_record(splits["dev"][0], splits["dev"][1], dev_items),
               "test": split_record(splits["test"][0], splits["test"][1], test_items)}
    manifest = cfg.manifest(**sweep.to_dict(), vector_method=vec.method, vector_sha256=vector_digest(vec),
                            vector_fingerprint=vec.data_fingerprint, vector_source=vector_source(cfg, vec),
                            splits={k: v for k, v in records.items() if k != "calibration"},
                            fit_split=records["calibration"],
                            **({"control_model": cfg.control_model} if cfg.control_model else {}))
    return DevTestPlan(vec=vec, sweep=sweep, modes=modes, notes=notes, fit=fit, fit_items=fit_items_, splits=splits,
                       dev_items=dev_items, test_items=test_items, records=records, manifest=manifest)


def open_dev_test(cfg, plan: DevTestPlan, *, lm=None, control_lm=None):
    """Open the run (:func:`auralens.interp.runs.open_run`): the folder would accept it, the model
    (loaded unless ``lm``) fits the vector and is the one it was fitted on, the control model
    (``control_lm`` or ``cfg.control_model``) is checked, the random-heads draw is made; then the
    folder is created.  Returns ``(run, lm)``; ``plan.control_lm`` and ``plan.rh_draw`` are set."""
    vec, fit = plan.vec, plan.fit

    def before_create(loaded) -> None:
        vec.check_compatible(loaded.arch, loaded.model_id if cfg.vector is not vec else None)
        if fit.get("model") is not None and str(fit["model"]) not in (
                str(cfg.model), str(loaded.model_id), str(getattr(loaded, "source", ""))):
            raise ConfigError(f"vector: fitted on model {fit['model']!r}, evaluated on {cfg.model!r}")
        plan.control_lm = load_control_model(vec, name=cfg.control_model, control_lm=control_lm, dtype=cfg.dtype,
                                             device_map=cfg.device_map)
        plan.rh_draw = random_heads_layers(fit, loaded.arch, cfg.seed) if cfg.controls and not vec.heads else None

    run, lm = open_run(cfg.out, manifest=plan.manifest, items=plan.dev_items + plan.test_items, resume=cfg.resume,
                       lm=lm, model=cfg.model, dtype=cfg.dtype, device_map=cfg.device_map,
                       before_create=before_create)
    run.file("vectors").mkdir(parents=True, exist_ok=True)
    return run, lm


def mode_vector(mode: str, vec):
    """What the sweep applies for ``mode`` (:data:`auralens.steering.registry.MODES`): ``mean`` the
    fitted vector, ``per_input`` its :class:`~auralens.steering.evaluate.PerInput`, another mode
    its registered ``build(vec)``."""
    entry = MODES.entries[MODES.check(mode, option="modes")]
    if entry.build is not None:
        return entry.build(vec)
    return PerInput(vec) if mode == "per_input" else vec


def sweep_dev(cfg, plan: DevTestPlan, run, lm, *, quiet: bool = False):
    """Step 2: the sweep on the dev items of every mode (``plan.dev_vectors``, ``plan.names``:
    vector name -> mode); writes ``items.parquet``, ``steering.parquet`` and the figures.
    Returns ``(dev_rows, table)``."""
    for mode in (m for m in MODES.names() if m in plan.modes):  # in registration order
        name = main_name(plan.vec) if mode == "mean" else mode
        plan.dev_vectors[name], plan.names[name] = mode_vector(mode, plan.vec), mode
    dev_rows = run_sweep(lm, plan.dev_items, plan.dev_vectors, plan.sweep,
                         log=RowLog(run, "items.parquet", key="row_id", resume=cfg.resume), progress=not quiet)
    return dev_rows, write_sweep_table(run, dev_rows, plan.sweep)


def select_on_dev(table, names: dict[str, str]) -> dict[str, Any]:
    """Step 3: the (mode, layer, beta, positions, format) with the largest dev gain (ties: smaller |beta|)."""
    t = table[(table["category"] == "all") & (table["beta"] != 0.0) & (table["vector"].isin(list(names)))].copy()
    if t.empty:
        raise ConfigError("betas: expected at least one non-zero beta to choose on dev, found none")
    t["abs_beta"] = t["beta"].abs()
    best = t.sort_values(["delta", "abs_beta", "layer"], ascending=[False, True, True]).iloc[0]
    return {
        "vector": str(best["vector"]), "mode": names[str(best["vector"])], "layer": int(best["layer"]),
        "layers": [int(best["layer"])], "beta": float(best["beta"]), "positions": str(best["positions"]),
        "format": str(best["format"]),
        "dev": {"n": int(best["n"]), "steered": float(best["accuracy"]),
                "base": float(best["accuracy"] - best["delta"]), "gain": float(best["delta"]),
                "ci": [float(best["delta_ci_low"]), float(best["delta_ci_high"])]},
    }


def sweep_for_test(plan: DevTestPlan, sel: dict[str, Any]):
    """The sweep of the test step: the chosen beta, positions and format; each vector at its own
    single layer (``layers=None``)."""
    return dataclasses.replace(plan.sweep, betas=(sel["beta"],), layers=None, positions=(sel["positions"],),
                               formats=(sel["format"],))


def evaluate_on_test(cfg, plan: DevTestPlan, run, lm, sel: dict[str, Any], *, quiet: bool = False):
    """Step 4: the chosen setting and its controls on the test items -> ``test_items.parquet``.
    Returns ``(test_rows, test, controls, test_vectors)``: ``test`` the chosen setting's paired
    gain, ``controls`` each control's (:func:`auralens.steering.controls.compare_controls`)."""
    main = sel["vector"]
    test_vectors: dict[str, Any] = {main: at_layer(plan.dev_vectors[main], sel["layer"])}
    skipped: dict[str, Any] = {}
    rh_info: dict[str, Any] = {}
    if cfg.controls:
        ctrl_vectors, skipped, rh_info, notes = controls_for_test(lm, plan.vec, sel, plan.fit_items, plan.rh_draw,
                                                              seed=cfg.seed, batch_size=cfg.batch_size)
        test_vectors.update(ctrl_vectors)
        plan.notes.extend(notes)
    test_rows = run_sweep(lm, plan.test_items, test_vectors, sweep_for_test(plan, sel),
                          log=RowLog(run, "test_items.parquet", key="row_id", resume=cfg.resume), progress=not quiet)
    nb, sd = plan.sweep.n_boot, plan.sweep.seed
    test = paired_stats(test_rows, main, n_boot=nb, seed=sd)
    ctrl = compare_controls(test_rows, main, [c for c in test_vectors if c != main], n_boot=nb, seed=sd)
    if "random_heads" in ctrl and not plan.vec.heads:
        ctrl["random_heads"].update(rh_info)
    ctrl.update(skipped)
    return test_rows, test, ctrl, test_vectors


def evaluate_control_model(cfg, plan: DevTestPlan, run, sel: dict[str, Any], *, quiet: bool = False) -> dict[str, Any]:
    """Step 4 on the control model: the same selected setting, the same procedure, the same test
    items -> ``control_model_items.parquet``; returns ``controls["model_without_deficit"]``."""
    control_lm = plan.control_lm
    label = cfg.control_model or str(control_lm.model_id)
    cm = control_model_vector(control_lm, plan.vec, sel, plan.fit_items, batch_size=cfg.batch_size, label=label)
    cm_rows = run_sweep(control_lm, plan.test_items, {sel["vector"]: cm}, sweep_for_test(plan, sel),
                        log=RowLog(run, "control_model_items.parquet", key="row_id", resume=cfg.resume),
                        progress=not quiet)
    cs = paired_stats(cm_rows, sel["vector"], n_boot=plan.sweep.n_boot, seed=plan.sweep.seed)
    return {"model": label, "n": cs["n"], "base": cs["base"], "steered": cs["steered"], "gain": cs["gain"],
            "ci": cs["ci"], "mode": sel["mode"], "layer": int(sel["layer"]), "beta": sel["beta"],
            "positions": sel["positions"]}


def _best_of(sel: dict[str, Any], test: dict[str, Any], ctrl: dict[str, Any]) -> dict[str, Any]:
    """The chosen setting on test, in the shape of the sweep protocol's ``best`` (for its readers)."""
    return {"vector": sel["vector"], "layer": sel["layer"], "beta": sel["beta"], "positions": sel["positions"],
            "format": sel["format"], "mode": sel["mode"], "accuracy": test["steered"],
            "baseline_accuracy": test["base"], "delta": test["gain"], "delta_ci": test["ci"], "n": test["n"],
            "selection": "chosen on the dev split, reported on the test split",
            "controls": {k: {"accuracy": v["steered"], "delta": v["gain"], "delta_ci": v["ci"],
                             "vector_minus_control": v["vector_minus_control"],
                             "vector_minus_control_ci": v["vector_minus_control_ci"]} for k, v in ctrl.items()
                         if "vector_minus_control" in v}}


def write_dev_test(cfg, plan: DevTestPlan, run, sel, test, ctrl, test_vectors, *, n_rows: int) -> dict[str, Any]:
    """Step 5: ``vectors/selected.safetensors`` (the vector with the chosen setting and the split
    records in ``extra['steer']``), the controls' vectors and ``summary.json``; returns the summary."""
    vec = plan.vec
    steer_meta = {"mode": sel["mode"], "layers": sel["layers"], "positions": sel["positions"], "beta": sel["beta"],
                  "format": sel["format"], "chosen_on": "dev", "splits": plan.records}
    if is_main():
        export(dataclasses.replace(vec, extra={**vec.extra, "steer": steer_meta}, source=None),
               run.file("vectors/selected.safetensors"))
    for cname, v in test_vectors.items():
        if isinstance(v, SteeringVector) and cname != sel["vector"] and is_main():
            export(v, run.file(f"vectors/{cname}.safetensors"))
    summary = {
        "model": cfg.model, "data": cfg.data, "protocol": "dev_test", "run": str(cfg.out), "vector": main_name(vec),
        "method": vec.method, "layers": list(vec.layers), "betas": list(plan.sweep.betas), "modes": list(plan.modes),
        "selected": sel, "test": test, "controls": ctrl, "best": _best_of(sel, test, ctrl),
        "splits": {k: {kk: v.get(kk) for kk in ("data", "seed", "n", "seeds", "ids_sha256")}
                   for k, v in plan.records.items()},
        "notes": plan.notes,
        **({"per_input": per_input_cost(vec)} if "per_input" in plan.modes else {}),
    }
    return finish_run(run, summary, n_rows=n_rows)


def run_dev_test(cfg, *, lm=None, control_lm=None, quiet: bool = False) -> dict[str, Any]:
    """The ``dev_test`` protocol: the steps of the module docstring, in order."""
    plan = validate_dev_test(cfg, lm=lm)
    run, lm = open_dev_test(cfg, plan, lm=lm, control_lm=control_lm)
    dev_rows, table = sweep_dev(cfg, plan, run, lm, quiet=quiet)
    sel = select_on_dev(table, plan.names)
    test_rows, test, ctrl, test_vectors = evaluate_on_test(cfg, plan, run, lm, sel, quiet=quiet)
    if plan.control_lm is not None:
        ctrl["model_without_deficit"] = evaluate_control_model(cfg, plan, run, sel, quiet=quiet)
    return write_dev_test(cfg, plan, run, sel, test, ctrl, test_vectors, n_rows=len(dev_rows) + len(test_rows))
