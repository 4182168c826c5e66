"""Probe directions: a fitted probe's weights as a plain, steering-ready dict.

:func:`probe_direction` turns a probe (a :class:`auralens.probes.tables.ProbeRow`, or a ProbeResult plus
its location) into ``{"directions": {layer: tensor}, "site": ..., "metadata": ...}``;
``auralens.steering.from_probe.probe_to_steering_vector`` wraps that into a SteeringVector
(probes never imports steering).  The probe stage saves each attribute's best probe with
:func:`save_directions` (``probe_directions.safetensors``) and :func:`load_probe_direction` reads
one back from a run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from auralens.interp.errors import ProbeError, RunFolderError
from auralens.interp.runs import RunFolder
from auralens.probes.collect import LM_SITE
from auralens.probes.fit import ProbeResult
from auralens.probes.tables import ProbeRow

__all__ = ["DIRECTIONS_FILE", "load_probe_direction", "oriented_direction", "plain_value", "probe_direction",
           "save_directions"]

#: the probe stage's file of best-probe directions (one tensor per attribute)
DIRECTIONS_FILE = "probe_directions.safetensors"


def probe_direction(
    result_or_row: Any,
    *,
    layer: int | None = None,
    site: str | None = None,
    position: str | None = None,
    step: int | None = None,
    target: Any = None,
    normalize: bool = True,
) -> dict[str, Any]:
    """A probe's weight direction as a plain, steering-ready dict.

    Args:
        result_or_row: a :class:`auralens.probes.tables.ProbeRow` (carries its location), or a
            :class:`auralens.probes.fit.ProbeResult` with ``layer`` (and optionally site/position/step).
        target: the class the direction should point towards. Binary probes default to
            ``classes[1]`` (the probe's positive class); ``classes[0]`` flips the sign.
            Multiclass probes need it: the direction is that class's logit row minus the mean
            row (the part of the softmax that favours it). Ridge probes take none.
        normalize: scale the direction to unit L2 norm (its raw norm is kept in the metadata).

    Returns:
        ``{"directions": {layer: float32 tensor [d_model]}, "site": site pattern,
        "method": "probe", "metadata": {...}}`` where metadata holds attribute, layer,
        position, step, target, classes, kind, accuracy, control_accuracy, selectivity,
        raw_norm and normalized.
    """
    import torch

    if isinstance(result_or_row, ProbeRow):
        row = result_or_row
        result = row.result
        layer = row.layer if layer is None else layer
        site = row.site if site is None else site
        position = row.position if position is None else position
        step = row.step if step is None else step
    elif isinstance(result_or_row, ProbeResult):
        result = result_or_row
        if layer is None:
            raise ProbeError("probe_direction: a ProbeResult carries no layer; pass layer=...")
    else:
        raise ProbeError(
            f"probe_direction: expected a ProbeRow or ProbeResult, found {type(result_or_row).__name__}"
        )
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or layer < 0:
        raise ProbeError(f"probe_direction: expected a non-negative integer layer, found {layer!r}")
    site = site or LM_SITE
    if site != LM_SITE:
        raise ProbeError(
            f"probe_direction: only decoder residual probes ({LM_SITE}) give steering directions, "
            f"found site {site!r}"
        )
    classes = None if result.classes is None else list(result.classes)
    vec, target, raw_norm = oriented_direction(result.direction, result.kind, classes, target, normalize, result.attribute)
    meta = {
        "attribute": result.attribute,
        "layer": int(layer),
        "position": position,
        "step": None if step is None else int(step),
        "target": plain_value(target),
        "classes": None if classes is None else [plain_value(c) for c in classes],
        "kind": result.kind,
        "accuracy": float(result.accuracy),
        "control_accuracy": float(result.control_accuracy),
        "selectivity": float(result.selectivity),
        "n": int(result.n),
        "raw_norm": raw_norm,
        "normalized": bool(normalize),
    }
    return {
        "directions": {int(layer): torch.tensor(vec, dtype=torch.float32)},
        "site": site,
        "method": "probe",
        "metadata": meta,
    }


def oriented_direction(direction, kind: str, classes, target, normalize: bool, attribute: str):
    """(vector pointing to ``target``, target, raw norm) of a probe's weights: a ridge probe's
    as they are (it takes no target), a binary logistic probe's towards ``classes[1]`` (negated
    for ``classes[0]``), a multiclass probe's ``target`` row minus the mean row; unit L2 norm
    when ``normalize``.  Errors (:class:`ProbeError`) name ``attribute``."""
    w = np.asarray(direction, dtype=np.float64)
    if kind == "ridge":
        if target is not None:
            raise ProbeError(f"probe_direction: a ridge probe ({attribute!r}) takes no target, found {target!r}")
        vec = w
    elif w.ndim == 1:  # binary logistic: points to classes[1]
        if target is None:
            target = classes[1]
        if target not in classes:
            raise ProbeError(f"probe_direction: target {target!r}: expected one of {classes} for {attribute!r}")
        vec = w if target == classes[1] else -w
    else:
        if target is None or target not in classes:
            raise ProbeError(
                f"probe_direction: multiclass probe {attribute!r} needs target= one of {classes}, found {target!r}"
            )
        vec = w[classes.index(target)] - w.mean(axis=0)
    raw_norm = float(np.linalg.norm(vec))
    if normalize:
        if raw_norm == 0 or not np.isfinite(raw_norm):
            raise ProbeError(f"probe_direction: {attribute!r} has a zero or non-finite direction")
        vec = vec / raw_norm
    return vec, target, raw_norm


def plain_value(v: Any) -> Any:
    """A numpy scalar as the Python value (JSON-ready); anything else unchanged."""
    if isinstance(v, np.generic):
        return v.item()
    return v


def load_probe_direction(run: str | Path, attribute: str, *, target: Any = None, normalize: bool = True) -> dict[str, Any]:
    """The best probe direction of ``attribute`` saved by :func:`auralens.probes.stage.stage_probe`, in the dict form
    of :func:`probe_direction` (plus the run's model id and data fingerprint in the metadata)."""
    import torch

    folder = RunFolder.open(run)
    path = folder.file(DIRECTIONS_FILE)
    if not path.exists():
        raise ProbeError(f"run folder {str(folder.path)!r}: expected {DIRECTIONS_FILE}, found none (probe stage not run?)")
    try:
        with safe_open(str(path), framework="pt") as f:
            info = json.loads((f.metadata() or {}).get("probes", "{}"))
            w = f.get_tensor(attribute).double().numpy() if attribute in info else None
    except Exception as exc:  # SafetensorError, JSONDecodeError: a truncated or foreign file
        raise RunFolderError(
            f"run folder {str(folder.path)!r}: expected {DIRECTIONS_FILE} to be a safetensors file of probe "
            f"directions, found an unreadable file ({type(exc).__name__}: {exc})"
        ) from None
    if w is None:
        raise ProbeError(f"{DIRECTIONS_FILE}: expected a probe for {attribute!r}, found {sorted(info)}")
    m = info[attribute]
    vec, target, raw_norm = oriented_direction(w, m["kind"], m["classes"], target, normalize, attribute)
    manifest = folder.manifest
    meta = {"attribute": attribute,
            **{k: m[k] for k in ("layer", "position", "step", "classes", "kind", "accuracy",
                                 "control_accuracy", "selectivity", "n")},
            "target": target, "raw_norm": raw_norm, "normalized": bool(normalize),
            "model_id": manifest.get("model"), "data_fingerprint": manifest.get("data_fingerprint")}
    return {"directions": {int(m["layer"]): torch.tensor(vec, dtype=torch.float32)}, "site": m["site"],
            "method": "probe", "metadata": meta}


def save_directions(run, best: dict[str, Any]) -> None:
    """Write :data:`DIRECTIONS_FILE` into ``run``: per attribute of ``best`` (``{attribute:
    (chosen, reported)}``, :func:`auralens.probes.probing.probe_store`), the chosen probe's
    direction and, in the metadata, its location, kind, classes, intercept and scores.  Nothing
    is written when ``best`` is empty."""
    import torch

    tensors, info = {}, {}
    for attribute, (row, reported) in best.items():
        r = row.result  # the select split's probe: fitted on items the reported scores never saw
        tensors[attribute] = torch.tensor(np.asarray(r.direction), dtype=torch.float32)
        info[attribute] = {
            "site": row.site, "layer": int(row.layer), "position": row.position, "step": row.step,
            "kind": r.kind, "classes": None if r.classes is None else [plain_value(c) for c in r.classes],
            "intercept": np.asarray(r.intercept, dtype=float).tolist(), "accuracy": float(r.accuracy),
            "control_accuracy": float(r.control_accuracy), "selectivity": float(r.selectivity),
            "n": int(r.n), "fit_on": row.split,
            "reported_accuracy": None if reported is None else float(reported.result.accuracy),
        }
    if tensors:
        run.write_tensors(DIRECTIONS_FILE, tensors, metadata={"probes": json.dumps(info)})
