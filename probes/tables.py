"""Probe tables over sites, layers, positions and steps: one :func:`~auralens.probes.fit.fit_probe`
per (location, attribute), gathered into the ``probes.parquet`` table.

Public API: :class:`ProbeRow`, :func:`probe_results`, :func:`probe_table`, :func:`run_probes` and
:data:`TABLE_COLUMNS`.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from auralens.interp.errors import ProbeError
from auralens.interp.schemas import PROBES
from auralens.probes.fit import ProbeConfig, ProbeResult, control_labels, fit_probe
from auralens.probes.inputs import as_features

__all__ = ["TABLE_COLUMNS", "ProbeRow", "probe_results", "probe_table", "run_probes"]

#: The columns of :func:`probe_table`, in order (``probes.parquet``, :data:`auralens.interp.schemas.PROBES`).
TABLE_COLUMNS: tuple[str, ...] = PROBES.names

# --------------------------------------------------------------------------------------------
# Tables over sites, layers, positions and steps
# --------------------------------------------------------------------------------------------

SiteKey = tuple[str, int, Any, Any]  # (site, layer, position, step)


@dataclass(frozen=True, kw_only=True)
class ProbeRow:
    """One probe, located: where it read (site, layer, position, step) and what (attribute)."""

    site: str
    layer: int
    position: Any
    step: Any
    attribute: str
    result: ProbeResult
    split: str = "all"  # the items it was cross-validated on: "select", "report" or "all"

    def as_record(self) -> dict[str, Any]:
        """The row of :func:`probe_table` for this probe."""
        r = self.result
        return {
            "site": self.site,
            "layer": self.layer,
            "position": self.position,
            "step": self.step,
            "attribute": self.attribute,
            "accuracy": r.accuracy,
            "control_accuracy": r.control_accuracy,
            "selectivity": r.selectivity,
            "chance": r.chance,
            "ci_low": r.ci_low,
            "ci_high": r.ci_high,
            "n": r.n,
            "split": self.split,
        }


def probe_table(rows: Iterable[ProbeRow | Mapping[str, Any]]):
    """A ``pandas.DataFrame`` with exactly the columns :data:`TABLE_COLUMNS`, one row per probe.

    ``rows`` holds :class:`ProbeRow` objects, or mappings with either all the columns or the
    five location columns plus ``"result"`` (a :class:`ProbeResult`). Extra keys are ignored.
    """
    import pandas as pd

    records: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        if isinstance(row, ProbeRow):
            records.append(row.as_record())
            continue
        if not isinstance(row, Mapping):
            raise ProbeError(
                f"probe_table rows[{i}]: expected a ProbeRow or a mapping, "
                f"found {type(row).__name__}"
            )
        if "result" in row:
            location = {k: row[k] for k in TABLE_COLUMNS[:5] if k in row}
            missing = [k for k in TABLE_COLUMNS[:5] if k not in row]
            if missing:
                raise ProbeError(
                    f"probe_table rows[{i}]: expected keys {missing}, found {sorted(row)}"
                )
            records.append(ProbeRow(**location, result=row["result"], split=row.get("split", "all")).as_record())
            continue
        if "split" not in row:  # tables written before the split column: one set of items
            row = {**row, "split": "all"}
        missing = [k for k in TABLE_COLUMNS if k not in row]
        if missing:
            raise ProbeError(
                f"probe_table rows[{i}]: expected the columns {list(TABLE_COLUMNS)}, "
                f"missing {missing}"
            )
        records.append({k: row[k] for k in TABLE_COLUMNS})
    table = pd.DataFrame.from_records(records, columns=list(TABLE_COLUMNS))
    # keep integer steps integers next to missing ones ("prompt" probes have step None)
    steps = [r["step"] for r in records if not _is_missing(r["step"])]
    if steps and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in steps):
        table["step"] = pd.array(
            [None if _is_missing(r["step"]) else int(r["step"]) for r in records], dtype="Int64"
        )
    if records and all(isinstance(r["layer"], (int, np.integer)) for r in records):
        table["layer"] = table["layer"].astype(np.int64)
    table["n"] = table["n"].astype(np.int64)
    return PROBES.check(table)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(np.isnan(value))
    except (TypeError, ValueError):
        return False


def probe_results(
    activations: Mapping[SiteKey, Any],
    labels: Mapping[str, Sequence[Any] | np.ndarray],
    groups: Sequence[Hashable] | np.ndarray,
    config: ProbeConfig | Mapping[str, ProbeConfig] | None = None,
    *,
    control_keys: Mapping[str, Sequence[Hashable] | np.ndarray] | None = None,
    n_layers: int | None = None,
) -> list[ProbeRow]:
    """Fit one probe per activation key and attribute; see :func:`run_probes`."""
    _check_probe_args(activations, labels, n_layers)
    configs = _attribute_configs(labels, config)
    g_all = np.asarray(groups)
    label_arrays, key_arrays = _aligned_arrays(labels, control_keys, g_all)
    present, controls = _shared_controls(label_arrays, key_arrays, configs)

    out: list[ProbeRow] = []
    for key, value in activations.items():
        X_arr, rows = _site_features(key, value, g_all, n_layers)
        site, layer, position, step = key
        for attribute, y_all in label_arrays.items():
            keep = present[attribute][rows]
            sel = rows[keep]
            control = controls[attribute]
            try:
                result = fit_probe(
                    X_arr[keep],
                    y_all[sel],
                    g_all[sel],
                    configs[attribute],
                    control_y=None if control is None else control[sel],
                    attribute=attribute,
                )
            except ProbeError as exc:
                raise ProbeError(f"activations[{key!r}]: {exc}") from exc
            out.append(
                ProbeRow(
                    site=site, layer=int(layer), position=position, step=step,
                    attribute=attribute, result=result,
                )
            )
    return out


def _check_probe_args(activations: Any, labels: Any, n_layers: Any) -> None:
    """:func:`probe_results`: non-empty ``activations`` and ``labels`` mappings, a positive
    ``n_layers`` or None."""
    if not isinstance(activations, Mapping) or not activations:
        found = "an empty mapping" if isinstance(activations, Mapping) else type(activations)
        raise ProbeError(
            "activations: expected a non-empty mapping {(site, layer, position, step): X}, "
            f"found {found}"
        )
    if not isinstance(labels, Mapping) or not labels:
        raise ProbeError(
            f"labels: expected a non-empty mapping {{attribute: labels}}, found {labels!r:.80}"
        )
    if n_layers is not None and (
        isinstance(n_layers, bool) or not isinstance(n_layers, (int, np.integer)) or n_layers < 1
    ):
        raise ProbeError(f"n_layers: expected a positive integer, found {n_layers!r}")


def _attribute_configs(
    labels: Mapping[str, Any], config: ProbeConfig | Mapping[str, ProbeConfig] | None
) -> dict[str, ProbeConfig]:
    """The :class:`ProbeConfig` of each attribute: the default, the one given, or its entry."""
    configs: dict[str, ProbeConfig] = {}
    for attribute in labels:
        if config is None:
            configs[attribute] = ProbeConfig()
        elif isinstance(config, ProbeConfig):
            configs[attribute] = config
        elif isinstance(config, Mapping) and attribute in config:
            configs[attribute] = config[attribute]
        else:
            raise ProbeError(
                f"config: expected a ProbeConfig or a mapping with a ProbeConfig for every "
                f"attribute, found none for {attribute!r}"
            )
    return configs


def _aligned_arrays(
    labels: Mapping[str, Sequence[Any] | np.ndarray],
    control_keys: Mapping[str, Sequence[Hashable] | np.ndarray] | None,
    g_all: np.ndarray,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Label and control-key arrays per attribute, each checked to have one entry per group
    entry (and control keys only for known attributes)."""
    control_keys = {} if control_keys is None else control_keys
    unknown = sorted(set(control_keys) - set(labels))
    if unknown:
        raise ProbeError(
            f"control_keys: expected attributes among {sorted(labels)}, found {unknown}"
        )
    label_arrays = {a: np.asarray(v) for a, v in labels.items()}
    for attribute, arr in label_arrays.items():
        if arr.ndim != 1 or arr.shape[0] != g_all.shape[0]:
            raise ProbeError(
                f"labels[{attribute!r}]: expected {g_all.shape[0]} entries (one per entry of "
                f"groups), found shape {arr.shape}"
            )
    key_arrays = {a: np.asarray(v) for a, v in control_keys.items()}
    for attribute, arr in key_arrays.items():
        if arr.shape[0] != g_all.shape[0]:
            raise ProbeError(
                f"control_keys[{attribute!r}]: expected {g_all.shape[0]} entries (one per entry "
                f"of groups), found {arr.shape[0]}"
            )
    return label_arrays, key_arrays


def _shared_controls(
    label_arrays: dict[str, np.ndarray],
    key_arrays: dict[str, np.ndarray],
    configs: dict[str, ProbeConfig],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray | None]]:
    """``(present, controls)``: per attribute, which entries have a label, and the control
    labels of all entries (None when its config has no control; NaN where a ridge label is
    missing)."""
    # One control mapping per attribute over all entries (missing labels left out), so that
    # every layer, position and step -- whatever subset of items it holds -- shares it.
    present = {
        a: np.array([not _is_missing(v) for v in arr.tolist()], dtype=bool)
        for a, arr in label_arrays.items()
    }
    controls: dict[str, np.ndarray | None] = {}
    for attribute, arr in label_arrays.items():
        cfg = configs[attribute]
        if cfg.control == "none":
            controls[attribute] = None
            continue
        keep = present[attribute]
        full = np.empty(arr.shape[0], dtype=arr.dtype if cfg.kind == "logistic" else np.float64)
        if cfg.kind == "ridge":
            full[:] = np.nan
        vals = arr[keep] if cfg.kind == "logistic" else arr[keep].astype(np.float64)
        key = key_arrays[attribute][keep] if attribute in key_arrays else None
        full[keep] = control_labels(vals, key=key, seed=cfg.seed, attribute=attribute)
        controls[attribute] = full
    return present, controls


def _site_features(
    key: Any, value: Any, g_all: np.ndarray, n_layers: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """One entry of ``activations``, checked: its key ``(site, layer, position, step)`` and its
    features ``X`` (one row per group entry) or ``(X, rows)``; returns the features and the
    entries they belong to."""
    if not isinstance(key, tuple) or len(key) != 4:
        raise ProbeError(
            f"activations key {key!r}: expected a tuple (site, layer, position, step)"
        )
    layer = key[1]
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
        raise ProbeError(f"activations key {key!r}: expected an integer layer, found {layer!r}")
    if n_layers is not None and not 0 <= layer < n_layers:
        raise ProbeError(
            f"activations key {key!r}: expected a layer in [0, {n_layers - 1}] "
            f"(n_layers={n_layers}), found {layer}"
        )
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ProbeError(
                f"activations[{key!r}]: expected X or a pair (X, rows), found a tuple of "
                f"{len(value)}"
            )
        X, rows = value
        rows = np.asarray(rows)
        if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
            raise ProbeError(
                f"activations[{key!r}] rows: expected a 1-D integer index into the labels, "
                f"found shape {rows.shape} dtype {rows.dtype}"
            )
        if rows.size and (rows.min() < 0 or rows.max() >= g_all.shape[0]):
            raise ProbeError(
                f"activations[{key!r}] rows: expected indices in [0, {g_all.shape[0] - 1}], "
                f"found {int(rows.min())}..{int(rows.max())}"
            )
    else:
        X, rows = value, None
    X_arr = as_features(X, f"{key!r}")
    if rows is None:
        if X_arr.shape[0] != g_all.shape[0]:
            raise ProbeError(
                f"activations[{key!r}]: expected {g_all.shape[0]} rows (one per entry of "
                f"groups) or a pair (X, rows), found {X_arr.shape[0]}"
            )
        rows = np.arange(g_all.shape[0])
    elif X_arr.shape[0] != rows.size:
        raise ProbeError(
            f"activations[{key!r}]: expected {rows.size} rows of X (one per index in rows), "
            f"found {X_arr.shape[0]}"
        )
    return X_arr, rows


def run_probes(
    activations: Mapping[SiteKey, Any],
    labels: Mapping[str, Sequence[Any] | np.ndarray],
    groups: Sequence[Hashable] | np.ndarray,
    config: ProbeConfig | Mapping[str, ProbeConfig] | None = None,
    *,
    control_keys: Mapping[str, Sequence[Hashable] | np.ndarray] | None = None,
    n_layers: int | None = None,
):
    """Probe every ``(site, layer, position, step)`` for every attribute; return the table.

    Args:
        activations: ``{(site, layer, position, step): X}``; ``X`` is ``[batch, d_model]`` with
            one row per entry of ``groups`` and the label arrays, or a pair ``(X, rows)`` where
            ``rows`` indexes them (e.g. only items whose reasoning chain reaches ``step``).
        labels: ``{attribute: labels}``, aligned with ``groups``. Missing labels (``None`` or
            NaN) drop that row for that attribute only.
        groups: item id of each entry.
        config: one :class:`ProbeConfig` for all attributes, or one per attribute (use
            ``kind="ridge"`` for continuous attributes).
        control_keys: optional ``{attribute: key}`` for the control task (see
            :func:`control_labels`); the mapping is fixed per attribute and seed, so every
            layer, position and step is compared against the same control task.
        n_layers: if given, every layer must lie in ``[0, n_layers)``.

    Returns:
        :func:`probe_table` of the probes, in the order of ``activations`` then ``labels``.
        Use :func:`probe_results` to keep the fitted directions as well.
    """
    return probe_table(
        probe_results(
            activations, labels, groups, config, control_keys=control_keys, n_layers=n_layers
        )
    )
