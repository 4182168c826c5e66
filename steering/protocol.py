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
3. :func:`select_on_dev` — the rule ``cfg.selection``
   (:data:`auralens.steering.nulls.SELECTION_RULES`).  Default ``ci_low``: beta = 0 ("no
   steering") is a candidate; the nonzero setting with the largest dev gain (ties: the smaller
   |beta|) is kept only if the lower bound of its 95% paired-bootstrap CI over the dev items is
   > 0, else steering is *declined* (``decision: "decline"``, beta = 0);
4. :func:`evaluate_on_test` — on test: baseline, the chosen setting and its controls at the
   same setting (:mod:`auralens.steering.controls`) -> ``test_items.parquet``, paired bootstrap
   CIs over items.  When declining, the reported test gain is the unsteered model's (0 by
   construction) and the declined candidate's test gain is reported beside it, for information
   (``test["candidate"]``: not chosen).  :func:`random_null` (with ``controls``):
   ``random_directions`` random directions of equal norm at the chosen mode/layer/positions, each
   given its own beta on dev by the same rule (``random_items.parquet``), on test
   (``test_items.parquet``): the vector's percentile among them, their mean and 95th percentile
   (:func:`auralens.steering.nulls.null_summary`).  :func:`neutral_cost`: the chosen setting on
   the neutral condition's test items (cue datasets) -> ``neutral_items.parquet``; the answer
   distribution unsteered vs steered (:func:`auralens.steering.nulls.answer_shift`).
   :func:`off_gate`: a per-item gate that switches steering off from the listening signal
   (threshold on dev; gated vs ungated on test; :mod:`auralens.steering.gate`).  With a
   control model (:func:`evaluate_control_model`) the same setting and procedure on that model
   on the same test items -> ``control_model_items.parquet``, ``controls["model_without_deficit"]``;
5. :func:`write_dev_test` — ``vectors/selected.safetensors`` records the chosen setting (beta 0
   when declined) and the split fingerprints (``extra['steer']``); ``summary.json`` = the
   returned summary (``decision``, ``rule``, ``test``, ``random_directions``, ``neutral``,
   ``answers`` among its keys).

``sweep`` (:func:`run_in_sample`): beta (and layer) swept with the vector and its controls on
one set of items; the best gain is chosen on those items (optimistic, the summary says so).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

from auralens.interp.dataspec import DataSpec
from auralens.interp.distributed import barrier, is_main
from auralens.interp.errors import ArchitectureError, ConfigError
from auralens.interp.runs import RowLog, load_items, open_run
from auralens.steering.checks import parse_heads
from auralens.steering.controls import (
    at_layer,
    compare_controls,
    control_model_vector,
    controls_for_test,
    load_control_model,
    random_heads_layers,
    random_null_vectors,
    sweep_controls,
)
from auralens.steering.evaluate import (
    BASELINE,
    PerInput,
    best_gain,
    figures,
    paired_stats,
    run_sweep,
    steering_table,
)
from auralens.steering.formats import export, load_vector
from auralens.steering.gate import evaluate_gate
from auralens.steering.nulls import answer_shift, choose_on_dev, null_summary
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
    "neutral_cost",
    "neutral_spec",
    "open_dev_test",
    "per_input_cost",
    "random_null",
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
    neutral_items: list | None = None
    neutral_why: str | None = None
    neutral_data: str | None = None
    rh_draw: Any = None
    control_lm: Any = None
    test_log: Any = None
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
    neutral_items, neutral_why, spec = None, "neutral=False", None
    if cfg.neutral:
        spec, neutral_why = neutral_spec(splits["test"][0])
        if spec is not None:
            neutral_items = load_items(spec, n=cfg.n, seed=splits["test"][1])
            k = overlap(fit_items_, neutral_items)
            if k:
                raise ConfigError(f"vector: its fit items share {k} of the {len(neutral_items)} neutral test items "
                                  f"({spec}); expected disjoint splits (fit on the calibration split)")
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
                       dev_items=dev_items, test_items=test_items, records=records, manifest=manifest,
                       neutral_items=neutral_items, neutral_why=neutral_why, neutral_data=spec)


def neutral_spec(test_spec: str) -> tuple[str | None, str | None]:
    """The neutral condition's test split of a cue dataset's test split (``cafe-conflict:test``
    -> ``cafe-neutral:test``), or ``(None, why not)``: another kind of dataset, or the neutral
    condition itself (its gain is the neutral cost)."""
    ds = DataSpec.parse(test_spec)
    if ds.kind != "cue":
        return None, f"{test_spec!r} is not a cafe cue dataset (no neutral condition)"
    if ds.name == "cafe-neutral":
        return None, "the evaluated data are the neutral condition (the test gain is the neutral cost)"
    return str(DataSpec.parse(f"cafe-neutral:{ds.effective_split}")), None


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

    run, lm = open_run(cfg.out, manifest=plan.manifest, resume=cfg.resume,
                       items=plan.dev_items + plan.test_items + list(plan.neutral_items or []),
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


def select_on_dev(table, names: dict[str, str], *, rule: str = "ci_low") -> dict[str, Any]:
    """Step 3: the (mode, layer, beta, positions, format) chosen on dev by ``rule``
    (:func:`auralens.steering.nulls.choose_on_dev`).  ``ci_low`` (default): beta = 0 (no
    steering) is a candidate, and the nonzero setting with the largest dev gain (ties: smaller
    |beta|) is kept only if its dev gain's 95% paired-bootstrap CI lower bound is > 0; else
    ``decision == "decline"`` and beta = 0.  ``best``: the largest dev gain, whatever its sign."""
    return choose_on_dev(table, names, rule=rule)


def _steered_setting(sel: dict[str, Any]) -> dict[str, Any]:
    """The setting the test step runs: the chosen one, or the declined candidate's (for information)."""
    return {**sel, "beta": sel["candidate"]["beta"]} if sel.get("decision") == "decline" else sel


def sweep_for_test(plan: DevTestPlan, sel: dict[str, Any]):
    """The sweep of the test step: the chosen beta, positions and format; each vector at its own
    single layer (``layers=None``)."""
    return dataclasses.replace(plan.sweep, betas=(sel["beta"],), layers=None, positions=(sel["positions"],),
                               formats=(sel["format"],))


def evaluate_on_test(cfg, plan: DevTestPlan, run, lm, sel: dict[str, Any], *, quiet: bool = False):
    """Step 4: the chosen setting and its controls on the test items -> ``test_items.parquet``.
    Returns ``(test_rows, test, controls, test_vectors)``: ``test`` the chosen setting's paired
    gain, ``controls`` each control's (:func:`auralens.steering.controls.compare_controls`)."""
    declined = sel.get("decision") == "decline"
    sel = _steered_setting(sel)
    main = sel["vector"]
    test_vectors: dict[str, Any] = {main: at_layer(plan.dev_vectors[main], sel["layer"])}
    skipped: dict[str, Any] = {}
    rh_info: dict[str, Any] = {}
    if cfg.controls:
        ctrl_vectors, skipped, rh_info, notes = controls_for_test(lm, plan.vec, sel, plan.fit_items, plan.rh_draw,
                                                              seed=cfg.seed, batch_size=cfg.batch_size)
        test_vectors.update(ctrl_vectors)
        plan.notes.extend(notes)
    plan.test_log = RowLog(run, "test_items.parquet", key="row_id", resume=cfg.resume)
    test_rows = run_sweep(lm, plan.test_items, test_vectors, sweep_for_test(plan, sel), log=plan.test_log,
                          progress=not quiet)
    nb, sd = plan.sweep.n_boot, plan.sweep.seed
    test = paired_stats(test_rows, main, n_boot=nb, seed=sd)
    if declined:  # the reported system is the unsteered model; the candidate's numbers are for information
        cand = {**test, "beta": sel["beta"], "note": "the declined candidate on test: not chosen, for information"}
        test = {**paired_stats(test_rows, BASELINE, n_boot=nb, seed=sd), "decision": "decline", "candidate": cand,
                "note": "steering declined on dev: the test step reports the unsteered model (gain 0 by construction)"}
        plan.notes.append("steering declined on dev; the controls are those of the declined candidate's setting")
    else:
        test["decision"] = "steer"
    ctrl = compare_controls(test_rows, main, [c for c in test_vectors if c != main], n_boot=nb, seed=sd)
    if "random_heads" in ctrl and not plan.vec.heads:
        ctrl["random_heads"].update(rh_info)
    ctrl.update(skipped)
    return test_rows, test, ctrl, test_vectors


def random_null(cfg, plan: DevTestPlan, run, lm, sel: dict[str, Any], test: dict[str, Any], *,
                quiet: bool = False) -> dict[str, Any]:
    """Step 4, the random-direction null: ``cfg.random_directions`` random directions of equal
    norm (:func:`auralens.steering.controls.random_null_vectors`) at the chosen (or declined
    candidate's) mode, layer, positions and format, swept over the same betas on the dev items
    (``random_items.parquet``) and each given its own beta by the same rule
    (:func:`select_on_dev`); those that steer are run at their beta on the test items (into
    ``test_items.parquet``, sharing its baseline); a declined one gains 0.  Returns
    :func:`auralens.steering.nulls.null_summary` of the vector's reported test gain with each
    direction's seed-named beta, decision and test gain."""
    setting = _steered_setting(sel)
    rvecs = random_null_vectors(plan.vec, setting, cfg.random_directions, seed=cfg.seed)
    nb, sd = plan.sweep.n_boot, plan.sweep.seed
    dev_sweep = dataclasses.replace(plan.sweep, layers=None, positions=(setting["positions"],),
                                    formats=(setting["format"],))
    dev_rows = run_sweep(lm, plan.dev_items, rvecs, dev_sweep,
                         log=RowLog(run, "random_items.parquet", key="row_id", resume=cfg.resume), progress=not quiet)
    table = steering_table(dev_rows, n_boot=nb, seed=sd, betas=sorted({0.0, *plan.sweep.betas}))
    chosen = {name: select_on_dev(table, {name: setting["mode"]}, rule=cfg.selection) for name in rvecs}
    by_beta: dict[float, dict[str, Any]] = {}
    for name, c in chosen.items():
        if c["decision"] == "steer":
            by_beta.setdefault(c["beta"], {})[name] = rvecs[name]
    test_rows = None
    for beta, vs in sorted(by_beta.items()):
        test_rows = run_sweep(lm, plan.test_items, vs, dataclasses.replace(dev_sweep, betas=(beta,)),
                              log=plan.test_log, progress=not quiet)
    directions, gains = {}, {}
    for name, c in chosen.items():
        steer = c["decision"] == "steer"
        gains[name] = paired_stats(test_rows, name, n_boot=nb, seed=sd)["gain"] if steer else 0.0
        directions[name] = {"beta": c["beta"], "decision": c["decision"], "dev_gain": c["dev"]["gain"],
                            "dev_ci": c["dev"]["ci"], "test_gain": gains[name],
                            **({"candidate": c["candidate"]} if not steer else {})}
    out = null_summary(test["gain"], gains)
    return {**out, "mode": setting["mode"], "layer": int(setting["layer"]), "positions": setting["positions"],
            "betas": list(plan.sweep.betas), "seeds": f"seed * 1000 + 100 + i, seed {cfg.seed}",
            "n_declined": sum(c["decision"] == "decline" for c in chosen.values()), "directions": directions}


def neutral_cost(cfg, plan: DevTestPlan, run, lm, sel: dict[str, Any], *, quiet: bool = False) -> dict[str, Any]:
    """Step 4, the cost: the chosen setting on the neutral condition's test items
    (``neutral_items.parquet``; cue datasets) — its paired gain there and the answer
    distribution unsteered vs steered (:func:`auralens.steering.nulls.answer_shift`).  When
    steering is declined the cost is 0 by construction and nothing is generated."""
    if plan.neutral_items is None:
        return {"skipped": plan.neutral_why}
    if sel.get("decision") == "decline":
        return {"n": len(plan.neutral_items), "gain": 0.0, "ci": [0.0, 0.0], "decision": "decline",
                "note": "steering declined: the neutral items are answered by the unsteered model (cost 0)"}
    main = sel["vector"]
    rows = run_sweep(lm, plan.neutral_items, {main: at_layer(plan.dev_vectors[main], sel["layer"])},
                     sweep_for_test(plan, sel), log=RowLog(run, "neutral_items.parquet", key="row_id",
                                                          resume=cfg.resume), progress=not quiet)
    st = paired_stats(rows, main, n_boot=plan.sweep.n_boot, seed=plan.sweep.seed)
    return {**st, "data": plan.neutral_data, "answers": answer_shift(rows, main)}


def off_gate(cfg, plan: DevTestPlan, lm, sel: dict[str, Any], dev_rows, test_rows) -> dict[str, Any]:
    """Step 4, the per-item off-gate (:mod:`auralens.steering.gate`) of the chosen setting (or
    the declined candidate's): steer an item only if its unsteered listening signal is below a
    threshold chosen on dev; gated vs ungated gain on test.  Reported beside the headline
    decision, which it does not change.  A model the yield recorder cannot read: skipped."""
    setting = _steered_setting(sel)
    try:
        return evaluate_gate(lm, plan.vec, setting, plan.dev_items, dev_rows, plan.test_items, test_rows,
                             batch_size=cfg.batch_size, n_boot=plan.sweep.n_boot, seed=plan.sweep.seed)
    except ArchitectureError as exc:
        return {"skipped": f"the listening signal cannot be recorded: {exc}"}


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
            "format": sel["format"], "mode": sel["mode"], "decision": sel.get("decision", "steer"),
            "accuracy": test["steered"],
            "baseline_accuracy": test["base"], "delta": test["gain"], "delta_ci": test["ci"], "n": test["n"],
            "selection": "chosen on the dev split, reported on the test split",
            "controls": {k: {"accuracy": v["steered"], "delta": v["gain"], "delta_ci": v["ci"],
                             "vector_minus_control": v["vector_minus_control"],
                             "vector_minus_control_ci": v["vector_minus_control_ci"]} for k, v in ctrl.items()
                         if "vector_minus_control" in v}}


def write_dev_test(cfg, plan: DevTestPlan, run, sel, test, ctrl, test_vectors, *, n_rows: int,
                   extras: dict[str, Any] | None = None) -> dict[str, Any]:
    """Step 5: ``vectors/selected.safetensors`` (the vector with the chosen setting and the split
    records in ``extra['steer']``), the controls' vectors and ``summary.json``; returns the summary."""
    vec, extras = plan.vec, extras or {}
    steer_meta = {"mode": sel["mode"], "layers": sel["layers"], "positions": sel["positions"], "beta": sel["beta"],
                  "format": sel["format"], "chosen_on": "dev", "decision": sel.get("decision", "steer"),
                  "rule": sel.get("rule"), "splits": plan.records}
    if is_main():
        export(dataclasses.replace(vec, extra={**vec.extra, "steer": steer_meta}, source=None),
               run.file("vectors/selected.safetensors"))
    for cname, v in test_vectors.items():
        if isinstance(v, SteeringVector) and cname != sel["vector"] and is_main():
            export(v, run.file(f"vectors/{cname}.safetensors"))
    summary = {
        "model": cfg.model, "data": cfg.data, "protocol": "dev_test", "run": str(cfg.out), "vector": main_name(vec),
        "method": vec.method, "layers": list(vec.layers), "betas": list(plan.sweep.betas), "modes": list(plan.modes),
        "decision": sel.get("decision", "steer"), "rule": sel.get("rule"),
        "selected": sel, "test": test, "controls": ctrl, "best": _best_of(sel, test, ctrl),
        **extras,
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
    sel = select_on_dev(table, plan.names, rule=cfg.selection)
    test_rows, test, ctrl, test_vectors = evaluate_on_test(cfg, plan, run, lm, sel, quiet=quiet)
    steered_name = BASELINE if sel.get("decision") == "decline" else sel["vector"]
    extras: dict[str, Any] = {"answers": answer_shift(test_rows, steered_name)}
    if sel.get("decision") == "decline":
        extras["answers"]["candidate"] = answer_shift(test_rows, sel["vector"])
    if cfg.controls and cfg.random_directions > 0:
        extras["random_directions"] = random_null(cfg, plan, run, lm, sel, test, quiet=quiet)
        test_rows = plan.test_log.frame()
    extras["neutral"] = neutral_cost(cfg, plan, run, lm, sel, quiet=quiet)
    if cfg.off_gate:
        extras["off_gate"] = off_gate(cfg, plan, lm, sel, dev_rows, plan.test_log.frame())
    if plan.control_lm is not None:
        cm = evaluate_control_model(cfg, plan, run, _steered_setting(sel), quiet=quiet)
        if sel.get("decision") == "decline":  # the control model is unsteered too; the candidate for information
            cm = {**cm, "steered": cm["base"], "gain": 0.0, "ci": [0.0, 0.0], "beta": 0.0, "decision": "decline",
                  "candidate": {k: cm[k] for k in ("beta", "steered", "gain", "ci")},
                  "note": "steering declined on dev: the control model is reported unsteered (gain 0)"}
        ctrl["model_without_deficit"] = cm
    return write_dev_test(cfg, plan, run, sel, test, ctrl, test_vectors, n_rows=len(dev_rows) + len(test_rows),
                          extras=extras)
