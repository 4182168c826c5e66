"""The controls of ``steer eval``: what a steering gain is compared with.

- random direction of equal norm (:func:`auralens.steering.directions.random_direction`; per
  item for ``per_input``: :class:`~auralens.steering.evaluate.PerInput` with a ``random_seed``);
- random heads: for a head-restricted vector the same fit at as many random heads
  (:func:`auralens.steering.directions.random_heads`); for a residual vector whose layers came
  from specialist heads (``heads_use='layers'``) the same fit at the layer of k random
  non-specialist heads (:func:`random_heads_layers`);
- a control model (a model without the deficit): the selected setting refitted with that model
  on the same calibration items (:func:`control_model_vector`).

:func:`sweep_controls` builds the controls of the in-sample sweep, :func:`controls_for_test` those of
the dev/test protocol's test step, and :func:`compare_controls` the paired comparison of the
vector with each control on the same items.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from auralens.interp.distributed import placement
from auralens.interp.errors import ConfigError
from auralens.interp.loading import load_model
from auralens.interp.runs import check_model
from auralens.steering.checks import parse_heads
from auralens.steering.directions import (
    collect_paired,
    direction_from,
    random_direction,
    random_heads,
)
from auralens.steering.evaluate import PerInput, paired_ci, paired_stats

__all__ = [
    "at_layer",
    "compare_controls",
    "control_model_vector",
    "controls_for_test",
    "fit_positions",
    "load_control_model",
    "random_heads_layers",
    "random_null_vectors",
    "refit_at",
    "sweep_controls",
]


def at_layer(v, layer: int):
    """``v`` (a SteeringVector or a PerInput) with its direction at ``layer`` only."""
    if isinstance(v, PerInput):
        return dataclasses.replace(v, vector=at_layer(v.vector, layer))
    return dataclasses.replace(v, directions={layer: v.directions[layer]})


def fit_positions(fc: dict) -> Any:
    """The fit positions recorded in a vector's ``extra['fit']`` (default ``last_prompt``)."""
    return fc.get("positions", ["last_prompt"])


def refit_at(lm, vec, fit_items, fc: dict, layer: int, *, batch_size: int, method: str, extra: dict):
    """The audio-minus-silence vector refitted with ``lm`` on the vector's calibration items at
    ``layer`` (residual stream, same positions, format and normalisation as ``vec``)."""
    acts = collect_paired(lm, fit_items, layers=[layer], positions=fit_positions(fc),
                          fmt=fc.get("format", "direct"), batch_size=batch_size)
    return direction_from(acts, lm, site=vec.hook, layers=[layer],
                          normalize=fc.get("normalize", vec.extra.get("normalize", "none")), method=method,
                          extra={**extra, "fit": fc})


def random_heads_layers(fit: dict, arch, seed: int):
    """The random-heads control of a residual vector whose layer set is the layers of its top-k
    specialist heads (``heads_use == 'layers'``): k heads drawn (seeded) without replacement
    from the non-specialist heads of the same heads table (all the model's heads when the table
    cannot be read again), preferring heads outside the specialist layers when there are at
    least k of them; specialist head j is matched with drawn head j, so the vector's layer
    ``L`` maps to the layer of the drawn head matched with the best-ranked specialist in ``L``.
    Returns ``{"heads", "layers", "layer_for", "pool"}`` or the reason it does not apply (str)."""
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



def random_null_vectors(vec, sel: dict[str, Any], k: int, *, seed: int) -> dict[str, Any]:
    """``k`` random directions of equal norm at the setting ``sel``'s single layer, the null of
    the vector's gain (each is then given its own beta on dev): ``random_00`` ... with seeds
    ``seed * 1000 + 100 + i``; ``per_input``: a seeded random unit direction times ``||s(x_i)||``
    per item (:class:`~auralens.steering.evaluate.PerInput` with ``random_seed``), ``mean``: a
    seeded Gaussian direction of the vector's norm (:func:`~auralens.steering.directions.random_direction`)."""
    L, out = sel["layer"], {}
    for i in range(int(k)):
        s = int(seed) * 1000 + 100 + i
        if sel["mode"] == "per_input":
            out[f"random_{i:02d}"] = PerInput(at_layer(vec, L), random_seed=s)
        elif sel["mode"] == "mean":
            out[f"random_{i:02d}"] = at_layer(random_direction(vec, seed=s), L)
        else:
            raise ConfigError(f"random_directions: expected the mean or per_input mode, found {sel['mode']!r}")
    return out


def sweep_controls(lm, vec, fit_items, why: str | None, *, seed: int) -> tuple[dict[str, Any], list[str]]:
    """The controls of the in-sample sweep: ``random_direction`` always, ``random_heads`` for a
    head-restricted vector whose fit items could be rebuilt (else a note saying why not).
    Returns ``(vectors, notes)``."""
    vectors: dict[str, Any] = {"random_direction": random_direction(vec, seed=seed)}
    notes: list[str] = []
    if not vec.heads:
        notes.append("random_heads control skipped: the vector is not head-restricted")
    elif fit_items is None:
        notes.append(f"random_heads control skipped: {why}")
    else:
        fc = vec.extra["fit"]
        acts = collect_paired(lm, fit_items, layers=vec.layers, positions=fit_positions(fc),
                              fmt=fc.get("format", "direct"))
        vectors["random_heads"] = random_heads(acts, lm, vec, seed=seed)
    return vectors, notes


def load_control_model(vec, *, name: str | None, control_lm=None, dtype: str = "auto", device_map: Any = None):
    """The control model (``control_lm``, else ``name`` checked and loaded), checked against the
    vector: same architecture and width, and as many decoder layers as the vector's model.
    ``None`` when neither is given.  Every refusal is a ConfigError naming ``control_model``."""
    if name is None and control_lm is None:
        return None
    if control_lm is None:
        try:
            check_model(name)
        except ConfigError as exc:
            raise ConfigError(f"control_model: {exc}") from None
        control_lm = load_model(name, dtype=dtype, **placement(device_map))
    label = name or control_lm.model_id
    try:
        vec.check_compatible(control_lm.arch)
    except Exception as exc:  # VectorFileError: another architecture / width / too few layers
        raise ConfigError(f"control_model {label!r}: {exc}") from None
    if vec.n_layers != control_lm.arch.n_layers:
        raise ConfigError(f"control_model {label!r}: expected "
                          f"{vec.n_layers} decoder layers like the vector's model, found {control_lm.arch.n_layers}")
    return control_lm


def controls_for_test(lm, vec, sel: dict[str, Any], fit_items, rh_draw, *, seed: int,
                  batch_size: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[str]]:
    """The controls of the setting ``sel`` chosen on dev, each at its own single layer: random
    direction (per item for ``per_input``); random heads (head-restricted ``mean`` vectors: the
    same heads count at random heads; residual vectors with ``rh_draw`` from
    :func:`random_heads_layers`: refitted at the matched random heads' layer).
    Returns ``(vectors, skipped, random_heads_info, notes)``."""
    L_sel, per_input = sel["layer"], sel["mode"] == "per_input"
    fc = vec.extra.get("fit") if isinstance(vec.extra.get("fit"), dict) else {}
    vectors: dict[str, Any] = {}
    skipped: dict[str, Any] = {}
    info: dict[str, Any] = {}
    notes: list[str] = []
    if per_input:
        vectors["random_direction"] = PerInput(at_layer(vec, L_sel), random_seed=seed)
    else:
        vectors["random_direction"] = at_layer(random_direction(vec, seed=seed), L_sel)
    if vec.heads:
        if sel["mode"] == "mean":
            acts = collect_paired(lm, fit_items, layers=vec.layers, positions=fit_positions(fc),
                                  fmt=fc.get("format", "direct"))
            vectors["random_heads"] = at_layer(random_heads(acts, lm, vec, seed=seed), L_sel)
    elif isinstance(rh_draw, str):
        skipped["random_heads"] = {"skipped": rh_draw}
        notes.append(f"random_heads control skipped: {rh_draw}")
    else:  # a residual vector whose layers are the specialist heads' layers: the same at random heads' layers
        L_ctrl = rh_draw["layer_for"][L_sel]
        cvec = refit_at(lm, vec, fit_items, fc, L_ctrl, batch_size=batch_size, method="random_heads",
                        extra={"control_of": vec.method, "seed": int(seed),
                               "random_heads": [list(h) for h in rh_draw["heads"]]})
        vectors["random_heads"] = PerInput(cvec) if per_input else cvec
        info = {"heads": [list(h) for h in rh_draw["heads"]], "layer": int(L_ctrl),
                "vector_layer": int(L_sel), "layers": rh_draw["layers"], "pool": rh_draw["pool"],
                "same_layer_as_vector": bool(L_ctrl == L_sel), "mode": sel["mode"]}
    return vectors, skipped, info, notes


def control_model_vector(control_lm, vec, sel: dict[str, Any], fit_items, *, batch_size: int, label: str):
    """The selected setting refitted with the control model on the vector's calibration items
    (``per_input`` or residual: the audio-minus-silence vector at the selected layer;
    head-restricted: the same heads at that layer), wrapped like the selected vector."""
    L_sel = sel["layer"]
    fc = vec.extra.get("fit") if isinstance(vec.extra.get("fit"), dict) else {}
    if sel["mode"] == "per_input" or not vec.heads:
        cm = refit_at(control_lm, vec, fit_items, fc, L_sel, batch_size=batch_size, method=vec.method,
                      extra={"control_model": label})
    else:  # head-restricted: the same heads, refitted with the control model
        cacts = collect_paired(control_lm, fit_items, layers=[L_sel], positions=fit_positions(fc),
                               fmt=fc.get("format", "direct"), batch_size=batch_size)
        cm = direction_from(cacts, control_lm, site=vec.hook, heads=[h for h in vec.heads if h[0] == L_sel],
                            layers=[L_sel], normalize=fc.get("normalize", vec.extra.get("normalize", "none")),
                            method=vec.method, extra={"control_model": label})
    return PerInput(cm) if sel["mode"] == "per_input" else cm


def compare_controls(test_rows, main: str, controls, *, n_boot: int, seed: int) -> dict[str, Any]:
    """Per control name in ``controls``: its accuracy and gain over the baseline on the test items
    (:func:`~auralens.steering.evaluate.paired_stats`), and the paired difference vector − control
    with its bootstrap CI over the items both answered."""
    out: dict[str, Any] = {}
    a_all = test_rows[test_rows["vector"] == main].set_index("item_id")["correct"].astype(float)
    for cname in controls:
        c = paired_stats(test_rows, cname, n_boot=n_boot, seed=seed)
        b = test_rows[test_rows["vector"] == cname].set_index("item_id")["correct"].astype(float)
        common = a_all.index.intersection(b.index)
        d, lo, hi = paired_ci(np.asarray(a_all[common]), np.asarray(b[common]), n_boot=n_boot, seed=seed)
        out[cname] = {"steered": c["steered"], "gain": c["gain"], "ci": c["ci"],
                      "vector_minus_control": d, "vector_minus_control_ci": [lo, hi]}
    return out
