"""Steering vectors from linear probes (``method="probe"``).

:mod:`probes` never imports :mod:`steering`; it hands out a probe's direction as a plain dict
(:func:`auralens.probes.directions.probe_direction`, :func:`auralens.probes.directions.load_probe_direction`)::

    {"directions": {layer: float32 tensor [d_model]}, "site": "lm.blocks.{L}.hook_resid_post",
     "method": "probe", "metadata": {"attribute": ..., "target": ..., "accuracy": ..., ...}}

and this module wraps it into a :class:`~auralens.steering.vector.SteeringVector`, which
:mod:`auralens.steering.formats` saves as safetensors / GGUF / npz::

    from auralens.probes.directions import load_probe_direction
    from auralens.steering.from_probe import probe_to_steering_vector

    d = load_probe_direction("runs/probe", "event1_loudness", target="loud")
    vec = probe_to_steering_vector(d, arch=lm.arch, model_id="micro")
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from auralens.interp.errors import ConfigError
from auralens.probes.directions import probe_direction
from auralens.steering.vector import SteeringVector, fingerprint

__all__ = ["probe_to_steering_vector"]


def probe_to_steering_vector(
    probe: Mapping[str, Any] | Any,
    *,
    model_id: str | None = None,
    arch=None,
    architecture: str | None = None,
    d_model: int | None = None,
    n_layers: int | None = None,
    data_fingerprint: str | None = None,
    default_alpha: float = 1.0,
    target: Any = None,
) -> SteeringVector:
    """Wrap a probe direction into a ``SteeringVector`` with ``method="probe"``.

    Args:
        probe: the dict of :func:`auralens.probes.directions.probe_direction` /
            :func:`~auralens.probes.directions.load_probe_direction`; a ``ProbeRow`` is converted with
            ``probe_direction(probe, target=target)`` first (a lazy import: probes is a sibling
            package, and the dependency only goes this way).
        arch: an :class:`auralens.interp.arch.Architecture` to take ``architecture``, ``d_model`` and
            ``n_layers`` from (or give them one by one).
        model_id: the model the probe read (default: the dict's metadata ``model_id``).
        data_fingerprint: sha256 of the probing data (default: the run's, from the metadata, or
            a fingerprint of the probe's metadata).
    """
    if not isinstance(probe, Mapping):

        probe = probe_direction(probe, target=target)
    for key in ("directions", "site", "metadata"):
        if key not in probe:
            raise ConfigError(
                f"probe: expected the dict of auralens.probes.directions.probe_direction with key {key!r}, "
                f"found keys {sorted(probe)}"
            )
    meta = dict(probe["metadata"])
    if arch is not None:
        architecture = architecture or arch.name
        d_model = d_model or arch.d_model
        n_layers = n_layers or arch.n_layers
    model_id = model_id or meta.get("model_id")
    missing = [k for k, v in (("model_id", model_id), ("architecture", architecture),
                              ("d_model", d_model), ("n_layers", n_layers)) if v is None]
    if missing:
        raise ConfigError(f"probe_to_steering_vector: expected {missing} (or arch=...), found none")
    fp = data_fingerprint or meta.get("data_fingerprint") or fingerprint(
        {k: v for k, v in meta.items() if k != "raw_norm"}
    )
    extra = {k: meta.get(k) for k in ("attribute", "target", "classes", "position", "step", "kind",
                                      "accuracy", "control_accuracy", "selectivity", "raw_norm",
                                      "normalized") if k in meta}
    return SteeringVector(
        directions=dict(probe["directions"]),
        model_id=str(model_id),
        architecture=str(architecture),
        d_model=int(d_model),
        n_layers=int(n_layers),
        method=str(probe.get("method", "probe")),
        data_fingerprint=fp,
        site=probe["site"],
        default_alpha=default_alpha,
        extra=extra,
    )
