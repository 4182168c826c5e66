"""The probe stage: where audio attributes live, by layer and by reasoning step.

:func:`stage_probe` loads items, collects residual-stream activations through nnsight into a
run folder (:mod:`auralens.probes.collect`), labels every item from ground truth or metadata
(:mod:`auralens.probes.labels`), fits one item-grouped, control-tasked probe per attribute x layer x
position (and x reasoning step for ``step_mean``) with :mod:`auralens.probes.fit`, and writes:

- ``probes.parquet``         exactly :data:`auralens.probes.fit.TABLE_COLUMNS`
- ``probes_by_layer.html``   score by layer, one panel per (site, position)
- ``probes_by_step.html``    score by reasoning step at each attribute's best layer
- ``probe_summary.json``     per attribute: best layer (chosen on the select split) and its
  scores on the disjoint report split; decay over steps
- ``probe_directions.safetensors``  the best probe's direction per attribute (for steering)
- ``labels.parquet``, ``generations.parquet`` and ``activations/`` (chunks + index)

:func:`probe_direction` turns a probe (a :class:`auralens.probes.fit.ProbeRow`, or a ProbeResult plus
its location) into a plain ``{"directions": {layer: tensor}, "site": ..., "metadata": ...}``
dict; ``auralens.steering.from_probe.probe_to_steering_vector`` wraps that into a SteeringVector
(probes never imports steering). :func:`load_probe_direction` reads one back from a run.

**Selection and report splits.** The best (layer, position) of each attribute is chosen on one
set of items and its scores are reported on another, disjoint one (:func:`probe_splits`):

- a cafe cue dataset or a file dataset ``D`` (``D:test``, ``D:dev``, ``D@s``, a whole file):
  chosen on ``D:calibration`` (same split seed), reported on ``D``'s split (``test`` when none
  is named); ``n`` items of each are loaded;
- plain ``cafe`` (or ``D:calibration`` itself): the ``n`` items ordered by
  ``sha256("<seed>:<item id>")``, the first half selects and the rest reports.

Probes are cross-validated (by item) within each split separately: ``probes.parquet`` holds every
(layer, position[, step]) score of both, its ``split`` column saying which (``select`` /
``report``). The summary's ``best`` is the report split's score at the location the select split
chose (``selection`` holds the select split's own score); ``best_chosen_on`` / ``reported_on``
name the splits and the manifest's ``splits`` lists their item ids.  The saved direction is the
select split's probe (fitted on items the report scores never saw).  Decay over steps: the layer
is chosen on the select split, the curve is the report split's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from auralens.interp.dataspec import DataSpec
from auralens.interp.errors import ProbeError
from auralens.interp.stage_config import DTYPE_HELP, RESUME_HELP, ModelDataConfig, option, takes_config
from auralens.probes.collect import AUDIO_SITE, LM_SITE, POSITIONS, CollectConfig

__all__ = ["ProbeStageConfig", "load_probe_direction", "probe_direction", "stage_probe"]

DIRECTIONS_FILE = "probe_directions.safetensors"


# --------------------------------------------------------------------------------------------
# Directions
# --------------------------------------------------------------------------------------------


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
        result_or_row: a :class:`auralens.probes.fit.ProbeRow` (carries its location), or a
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

    from auralens.probes.fit import ProbeResult, ProbeRow

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
    vec, target, raw_norm = _oriented(result.direction, result.kind, classes, target, normalize, result.attribute)
    meta = {
        "attribute": result.attribute,
        "layer": int(layer),
        "position": position,
        "step": None if step is None else int(step),
        "target": _jsonable(target),
        "classes": None if classes is None else [_jsonable(c) for c in classes],
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


def _oriented(direction, kind: str, classes, target, normalize: bool, attribute: str):
    """(vector pointing to ``target``, target, raw norm) of a probe's weights."""
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


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


def load_probe_direction(run: str | Path, attribute: str, *, target: Any = None, normalize: bool = True) -> dict[str, Any]:
    """The best probe direction of ``attribute`` saved by :func:`stage_probe`, in the dict form
    of :func:`probe_direction` (plus the run's model id and data fingerprint in the metadata)."""
    import json

    import torch
    from safetensors import safe_open

    from auralens.interp.runs import RunFolder

    run = RunFolder.open(run)
    path = run.file(DIRECTIONS_FILE)
    if not path.exists():
        raise ProbeError(f"run folder {str(run.path)!r}: expected {DIRECTIONS_FILE}, found none (probe stage not run?)")
    try:
        with safe_open(str(path), framework="pt") as f:
            info = json.loads((f.metadata() or {}).get("probes", "{}"))
            w = f.get_tensor(attribute).double().numpy() if attribute in info else None
    except Exception as exc:  # SafetensorError, JSONDecodeError: a truncated or foreign file
        from auralens.interp.errors import RunFolderError

        raise RunFolderError(
            f"run folder {str(run.path)!r}: expected {DIRECTIONS_FILE} to be a safetensors file of probe "
            f"directions, found an unreadable file ({type(exc).__name__}: {exc})"
        ) from None
    if w is None:
        raise ProbeError(f"{DIRECTIONS_FILE}: expected a probe for {attribute!r}, found {sorted(info)}")
    m = info[attribute]
    vec, target, raw_norm = _oriented(w, m["kind"], m["classes"], target, normalize, attribute)
    manifest = run.manifest
    meta = {"attribute": attribute,
            **{k: m[k] for k in ("layer", "position", "step", "classes", "kind", "accuracy",
                                 "control_accuracy", "selectivity", "n")},
            "target": target, "raw_norm": raw_norm, "normalized": bool(normalize),
            "model_id": manifest.get("model"), "data_fingerprint": manifest.get("data_fingerprint")}
    return {"directions": {int(m["layer"]): torch.tensor(vec, dtype=torch.float32)}, "site": m["site"],
            "method": "probe", "metadata": meta}


# --------------------------------------------------------------------------------------------
# Probing a collected store
# --------------------------------------------------------------------------------------------


def _position_name(position: str, fmt: str, formats: Sequence[str]) -> str:
    return position if len(formats) == 1 else f"{fmt}:{position}"


def _locations(store, formats: Sequence[str]):
    """(site, position, fmt, layer, step) to probe, in table order."""
    steps = store.steps() if "step_mean" in store.positions(LM_SITE) else ()
    out = []
    for site in (s for s in (AUDIO_SITE, LM_SITE) if s in store.sites):
        for position in store.positions(site):
            for fmt in formats:
                for layer in store.layers(site):
                    if position == "step_mean":
                        out.extend((site, position, fmt, layer, s) for s in steps)
                    else:
                        out.append((site, position, fmt, layer, None))
    return out


def probe_store(
    store,
    items: Sequence[Any],
    *,
    attributes: Sequence[str] | None = None,
    n_folds: int = 5,
    n_bootstrap: int = 1000,
    seed: int = 0,
    progress: bool = False,
    splits: dict[str, Sequence[str]] | None = None,
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Probe every location of ``store`` for every attribute.

    ``splits``: ``{"select": item ids, "report": item ids}`` (disjoint): every location is probed
    on each split separately (CV within it), the best chosen on ``select``. None: one split,
    ``"all"`` the items, chosen and reported on the same items.

    Returns ``(table, best, notes)``: the :func:`auralens.probes.fit.probe_table` DataFrame (its ``split``
    column says on which items), ``best = {attribute: (chosen, reported)}``: the best
    prompt-position :class:`ProbeRow` on the select split (highest accuracy, earliest layer on
    ties) and the report split's row at that location (the same row without splits), and
    ``notes = {"skipped": {attribute: reason}, "skipped_steps": {attribute: {position:
    [steps without enough items]}}, "dropped_classes": {attribute: {class: n_items}}}``.

    With ``attributes=None`` (the defaults), classes in fewer items than folds are left out of
    their attribute, and attributes still lacking support (one class, too few items) are
    skipped with a reason; attributes named explicitly raise :class:`ProbeError` instead.
    Reasoning steps without enough items for an attribute are always skipped (and listed).
    """
    from auralens.probes.fit import ProbeConfig, probe_results, probe_table
    from auralens.probes.labels import DEFAULT_ATTRIBUTES, label_support, label_table

    explicit = attributes is not None
    if attributes is None:
        has_scene = any(getattr(it, "scene", None) for it in items)
        attributes = DEFAULT_ATTRIBUTES if has_scene else ("category", "sub_category")
    attributes = list(dict.fromkeys(attributes))
    if not attributes:
        raise ProbeError("attributes: expected at least one attribute to probe, found none")
    rows = store.rows
    if splits is None:
        splits = {"all": list(dict.fromkeys(rows["item_id"]))}
    elif set(splits) != {"select", "report"} or set(splits["select"]) & set(splits["report"]):
        raise ProbeError(f"splits: expected disjoint 'select' and 'report' item ids, found keys {sorted(splits)}")
    by_id = {it.item_id: it for it in items}
    missing = sorted(set(rows["item_id"]) - set(by_id))
    if missing:
        raise ProbeError(f"activations: rows for items {missing[:5]} that are not among the given items")
    table = label_table([by_id[i] for i in dict.fromkeys(rows["item_id"])], attributes)
    groups = rows["item_id"].to_numpy(dtype=object)
    labels = {a: np.array([table.at[i, a] for i in groups], dtype=object) for a in attributes}
    formats = list(dict.fromkeys(rows["format"]))
    fmt_of = rows["format"].to_numpy(dtype=object)
    config = ProbeConfig(n_folds=n_folds, n_bootstrap=n_bootstrap, seed=seed)
    n_layers = int(store.index["n_layers"])
    in_split = {name: np.isin(groups, np.asarray(list(ids), dtype=object)) for name, ids in splits.items()}

    skipped: dict[str, str] = {}
    skipped_steps: dict[str, dict[str, list[int]]] = {}
    dropped: dict[str, dict[str, int]] = {}
    if not explicit:
        # default attributes: leave out the rows of classes too rare for the folds (e.g. the
        # class of a 4th event on a few dozen items) rather than losing the whole attribute
        # (in any split: each split is cross-validated on its own)
        for a in attributes:
            per_class: dict[Any, set] = {}
            rare: dict[Any, int] = {}
            for mask in in_split.values():
                split_class: dict[Any, set] = {}
                for v, g in zip(labels[a][mask].tolist(), groups[mask].tolist()):
                    if v is not None:
                        split_class.setdefault(v, set()).add(g)
                        per_class.setdefault(v, set()).add(g)
                rare.update({c: len(gs) for c, gs in split_class.items() if len(gs) < n_folds and c not in rare})
            if rare and len(per_class) - len(rare) >= 2:
                labels[a] = np.array([None if v in rare else v for v in labels[a].tolist()], dtype=object)
                dropped[a] = {str(c): n for c, n in rare.items()}
    usable: list[str] = []
    for a in attributes:
        reason = None
        for fmt in formats:
            for split, mask in in_split.items():
                sel = (fmt_of == fmt) & mask
                reason = label_support(labels[a][sel], groups[sel], n_folds)
                if reason is not None:
                    if len(in_split) > 1:
                        reason = f"{split} split: {reason}"
                    break
            if reason is not None:
                break
        if reason is None:
            usable.append(a)
        elif explicit:
            raise ProbeError(f"attribute {a!r}: cannot be probed with {n_folds}-fold CV by item: {reason}")
        else:
            skipped[a] = reason
    if not usable:
        raise ProbeError(
            f"attributes: none of {attributes} can be probed with {n_folds}-fold CV by item on "
            f"{len(set(groups.tolist()))} items ({skipped}); collect more items or lower n_folds"
        )

    records: list[dict[str, Any]] = []
    best: dict[str, Any] = {}
    by_location: dict[tuple, Any] = {}
    choose_on = "select" if "select" in splits else "all"
    report_on = "report" if "report" in splits else "all"
    locations = _locations(store, formats)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(locations), desc="probes", unit="location")
    for site, position, fmt, layer, step in locations:
        X_all, idx_all = store.matrix(site, position, layer, step)
        name = _position_name(position, fmt, formats)
        for split, mask in in_split.items():
            keep = (fmt_of[idx_all] == fmt) & mask[idx_all]
            X, idx = X_all[keep], idx_all[keep]
            attrs = usable
            if step is not None:
                attrs = []
                for a in usable:
                    reason = label_support(labels[a][idx], groups[idx], n_folds)
                    if reason is None:
                        attrs.append(a)
                    else:
                        listed = skipped_steps.setdefault(a, {}).setdefault(name, [])
                        if int(step) not in listed:
                            listed.append(int(step))
            if not attrs:
                continue
            key = (site, int(layer), name, step)
            results = probe_results(
                {key: (X, idx)}, {a: labels[a] for a in attrs}, groups, config, n_layers=n_layers
            )
            for r in results:
                r = dataclasses.replace(r, split=split)
                records.append(r.as_record())
                by_location[(split, site, int(layer), name, step, r.attribute)] = r
                if step is None and site == LM_SITE and split == choose_on:
                    cur = best.get(r.attribute)
                    if cur is None or r.result.accuracy > cur.result.accuracy:
                        best[r.attribute] = r
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    for a, row in list(best.items()):
        best[a] = (row, by_location.get((report_on, row.site, int(row.layer), row.position, row.step, a)))
    for a in skipped_steps.values():
        for steps in a.values():
            steps.sort()
    notes = {"skipped": skipped, "skipped_steps": skipped_steps, "dropped_classes": dropped}
    return probe_table(records), best, notes


# --------------------------------------------------------------------------------------------
# Figures and summary
# --------------------------------------------------------------------------------------------


def _page(title: str, panels: list[tuple[str, Any]], note: str = "") -> str:
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title></head><body style='font-family:sans-serif'>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if note:
        parts.append(f"<p>{html.escape(note)}</p>")
    for i, (heading, fig) in enumerate(panels):
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        # plotly.js embedded once (first panel): the page works offline
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    parts.append("</body></html>")
    return "\n".join(parts)


def _figures(table) -> tuple[str, str]:
    from auralens.probes.figures import accuracy_by_layer, accuracy_by_step

    shown = table[table["split"] == "report"] if (table["split"] == "report").any() else table  # the plotted split
    prompt = table[table["step"].isna()]
    layer_panels = []
    for (site, position), _ in shown[shown["step"].isna()].groupby(["site", "position"], sort=False):
        fig = accuracy_by_layer(prompt, site=site, position=position)
        layer_panels.append((f"{site} · {position}", fig))
    stepped = table[table["step"].notna()]
    step_panels = []
    for (site, position), _ in shown[shown["step"].notna()].groupby(["site", "position"], sort=False):
        fig = accuracy_by_step(stepped, site=site, position=position)
        step_panels.append((f"{site} · {position}", fig))
    by_layer = _page(
        "Probe score by layer", layer_panels,
        "" if layer_panels else "No prompt-position probes could be fitted (see probe_summary.json).",
    )
    by_step = _page(
        "Probe score by reasoning step", step_panels,
        "Report split; each attribute at its best layer (mean accuracy over steps on the select split); dashed: control task, dotted: chance."
        if step_panels else
        "No reasoning-step probes: step_mean was not collected, or no step had enough items "
        "(see probe_summary.json, 'skipped' and 'skipped_steps').",
    )
    return by_layer, by_step


def _scores(r) -> dict[str, Any]:
    return {"accuracy": float(r.accuracy), "control_accuracy": float(r.control_accuracy),
            "selectivity": float(r.selectivity), "chance": float(r.chance),
            "ci": [float(r.ci_low), float(r.ci_high)], "n": int(r.n)}


def _summary(table, best: dict[str, Any], notes: dict[str, Any]) -> dict[str, Any]:
    from auralens.probes.figures import best_layers

    out: dict[str, Any] = {}
    stepped = table[table["step"].notna()]
    splits = set(table["split"].astype(str))
    choose_on, report_on = ("select", "report") if "select" in splits else ("all", "all")
    for attribute, (row, reported) in best.items():
        loc = {"site": row.site, "layer": int(row.layer), "position": row.position}
        entry: dict[str, Any] = {
            # the report split's scores at the location the select split chose
            "best": {**loc, **(_scores(reported.result) if reported is not None else
                               {"accuracy": None, "control_accuracy": None, "selectivity": None})},
            "selection": {**loc, **_scores(row.result)},
            "decay": None,
        }
        mine = stepped[(stepped["attribute"] == attribute) & (stepped["site"] == LM_SITE)]
        for position, sub in mine.groupby("position", sort=False):
            chooser, shown = sub[sub["split"] == choose_on], sub[sub["split"] == report_on]
            if chooser.empty or shown.empty:
                continue
            layer = best_layers(chooser, site=LM_SITE, position=position)[attribute]
            at = shown[shown["layer"] == layer].sort_values("step")
            if at.empty:
                continue
            steps = [int(s) for s in at["step"]]
            acc = [float(a) for a in at["accuracy"]]
            decay = {"position": position, "layer": int(layer), "steps": steps, "accuracy": acc,
                     "selectivity": [float(s) for s in at["selectivity"]]}
            if len(steps) >= 2:
                slope = float(np.polyfit(steps, acc, 1)[0])
                decay.update(slope_per_step=slope, first_minus_last=acc[0] - acc[-1], falls=bool(slope < 0))
            else:
                decay.update(slope_per_step=None, first_minus_last=None, falls=None)
            entry.setdefault("decay_by_position", {})[position] = decay
        by_pos = entry.pop("decay_by_position", {})
        if by_pos:
            entry["decay"] = next(iter(by_pos.values()))  # the (first format's) step position
            if len(by_pos) > 1:
                entry["decay_by_position"] = by_pos
        out[attribute] = entry
    return {"attributes": out, **notes}


def _save_directions(run, best: dict[str, Any]) -> None:
    import json

    import torch

    tensors, info = {}, {}
    for attribute, (row, reported) in best.items():
        r = row.result  # the select split's probe: fitted on items the reported scores never saw
        tensors[attribute] = torch.tensor(np.asarray(r.direction), dtype=torch.float32)
        info[attribute] = {
            "site": row.site, "layer": int(row.layer), "position": row.position, "step": row.step,
            "kind": r.kind, "classes": None if r.classes is None else [_jsonable(c) for c in r.classes],
            "intercept": np.asarray(r.intercept, dtype=float).tolist(), "accuracy": float(r.accuracy),
            "control_accuracy": float(r.control_accuracy), "selectivity": float(r.selectivity),
            "n": int(r.n), "fit_on": row.split,
            "reported_accuracy": None if reported is None else float(reported.result.accuracy),
        }
    if tensors:
        run.write_tensors(DIRECTIONS_FILE, tensors, metadata={"probes": json.dumps(info)})


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ProbeStageConfig(ModelDataConfig):
    """``auralens probe``: linear probes for audio attributes, by layer and by reasoning step."""

    COMMAND = "auralens probe"

    n: int | None = option(120, cli_type=int, help="Number of items (>= 1).")
    out: Path = option(Path("runs/probe"), identity=False, help="Run folder.")
    positions: tuple[str, ...] = option(POSITIONS, parse="csv", help="Comma-separated positions.")
    formats: tuple[str, ...] = option(("cot",), flag="--format", parse="one",
                                      help="Answer format generated for the step-mean position.")
    batch_size: int = option(8, help="Items per forward pass (>= 1).")
    resume: bool = option(False, identity=False,
                          help=RESUME_HELP)
    seed: int = option(7, help="Data seed (cafe items, bootstrap and controls).")
    dtype: str = option("auto", help=DTYPE_HELP)
    attributes: tuple[str, ...] | None = option(None, cli=False, help="Attributes to probe (default: all with support).")
    layers: tuple[int, ...] | None = option(None, cli=False, help="Decoder layers to read (default: all).")
    audio_layers: tuple[int, ...] | None = option((), cli=False, help="Audio-encoder layers to read (None: all).")
    chunk_size: int = option(64, help="Rows per activation chunk file (>= 1).")
    max_new_tokens: int = option(96, help="Generated tokens for the step-mean position (>= 1).")
    max_steps: int = option(8, help="Reasoning steps kept per row (>= 1).")
    n_folds: int = option(5, help="Cross-validation folds (>= 2).")
    n_bootstrap: int = option(1000, help="Bootstrap resamples of the confidence intervals (>= 1).")
    command: str = option("auralens probe", identity=False, cli=False, help="The command line that started the run.")

    def __post_init__(self) -> None:
        from auralens.interp.runs import check_dtype, check_int, check_n

        self.collect()  # positions, formats, layers, sizes
        check_n(self.n, allow_none=True)
        check_int("n_folds", self.n_folds, minimum=2)
        check_int("n_bootstrap", self.n_bootstrap)
        check_dtype(self.dtype)
        attributes = self.attributes
        if attributes is not None and (isinstance(attributes, str) or not list(attributes)):
            raise ProbeError(f"attributes: expected a non-empty list of attribute names or None, found {attributes!r}")
        self._set("out", Path(self.out))

    def collect(self) -> CollectConfig:
        """The activation collection's config (validated)."""
        return CollectConfig(
            positions=tuple(self.positions), formats=tuple(self.formats),
            layers=None if self.layers is None else tuple(self.layers),
            audio_layers=None if self.audio_layers is None else tuple(self.audio_layers), batch_size=self.batch_size,
            chunk_size=self.chunk_size, max_new_tokens=self.max_new_tokens, max_steps=self.max_steps,
        )

    def manifest(self, **config: Any) -> dict[str, Any]:
        # the collection's config as it normalises it (sorted layers, its own defaults)
        return {**super().manifest(**self.collect().to_dict(), **config), "command_line": self.command}


def probe_splits(data: str, *, seed: int) -> tuple[str, str] | None:
    """``(select spec, report spec)`` for a cafe cue dataset or a file dataset: its
    ``calibration`` split and the named one (``test`` when none; same split seed); None for plain
    ``cafe`` and for a ``calibration`` split itself (those split their own items in halves:
    :func:`half_split`)."""
    ds = DataSpec.parse(data, seed=seed)
    if not ds.has_splits or ds.effective_split == "calibration":
        return None
    report = ds if ds.split_name is not None else ds.split("test")
    return str(ds.split("calibration")), str(report)


def half_split(item_ids: Sequence[str], *, seed: int) -> dict[str, list[str]]:
    """The items ordered by ``sha256("<seed>:<item id>")``: the first half (rounded down) selects,
    the rest reports.  Depends only on the ids and the seed; the halves are disjoint."""
    ids = list(dict.fromkeys(str(i) for i in item_ids))
    order = sorted(ids, key=lambda i: hashlib.sha256(f"{int(seed)}:{i}".encode()).hexdigest())
    chosen = set(order[: len(order) // 2])
    return {"select": [i for i in ids if i in chosen], "report": [i for i in ids if i not in chosen]}


@takes_config(ProbeStageConfig)
def stage_probe(cfg: ProbeStageConfig, *, lm=None, quiet: bool = False) -> dict[str, Any]:
    """Collect activations, probe every attribute x layer x position (x step), write the run.

    ``model``: ``micro``, an HF id or a folder (ignored for loading when ``lm`` is given, but
    recorded). ``data``: anything :func:`auralens.interp.datasets.load_dataset` takes. ``attributes``:
    default :data:`auralens.probes.labels.DEFAULT_ATTRIBUTES` for cafe (those without enough support
    are skipped and listed), ``category``/``sub_category`` for real datasets. Returns the
    summary (also written to ``probe_summary.json``).  Options: :class:`ProbeStageConfig`
    (or its fields as keywords).
    """
    from auralens.interp.runs import load_items, open_run
    from auralens.probes.collect import collect_activations

    t0 = time.perf_counter()
    # 1. validate: options (ProbeStageConfig, its CollectConfig), items, audio
    model, data, n, out, resume, attributes = cfg.model, cfg.data, cfg.n, cfg.out, cfg.resume, cfg.attributes
    coll = cfg.collect()
    specs = probe_splits(data, seed=cfg.seed)
    if specs is not None:
        sel_items = load_items(specs[0], n=n, seed=cfg.seed, allow_all=True)
        rep_items = load_items(specs[1], n=n, seed=cfg.seed, allow_all=True)
        overlap = {it.item_id for it in sel_items} & {it.item_id for it in rep_items}
        if overlap:
            raise ProbeError(f"splits {specs}: expected disjoint items, found {len(overlap)} shared")
        items = sel_items + rep_items
        split_ids = {"select": [it.item_id for it in sel_items], "report": [it.item_id for it in rep_items]}
        split_names = {"select": specs[0], "report": specs[1]}
    else:
        items = load_items(data, n=n, seed=cfg.seed, allow_all=True)
        split_ids = half_split([it.item_id for it in items], seed=cfg.seed)
        rule = f"sha256('{cfg.seed}:<item id>') order"
        split_names = {"select": f"{data}: first half by {rule}", "report": f"{data}: second half by {rule}"}
    if attributes is not None:
        from auralens.probes.labels import label_table

        label_table(items, list(attributes))  # unknown attribute names, before any folder
    # 2-4. folder check, model (and its layer range), folder
    run, lm = open_run(
        out, manifest=cfg.manifest(), items=items, resume=resume, lm=lm, model=model, dtype=cfg.dtype,
        device_map=cfg.device_map,
        before_create=lambda m: coll.resolve(m.arch),  # layer range errors before any folder or work
    )
    run.update_manifest(splits={k: {"data": split_names[k], "n": len(split_ids[k]), "item_ids": split_ids[k]}
                                for k in ("select", "report")})
    t1 = time.perf_counter()
    store = collect_activations(lm, items, run, coll, resume=resume, progress=not quiet)
    t2 = time.perf_counter()

    def fit():  # rank 0 fits the probes on every item's activations (auralens.interp.distributed)
        table, best, notes = probe_store(
            store, items, attributes=attributes, n_folds=cfg.n_folds, n_bootstrap=cfg.n_bootstrap, seed=cfg.seed,
            progress=not quiet, splits=split_ids,
        )
        t3 = time.perf_counter()
        run.write_table("probes.parquet", table)
        by_layer, by_step = _figures(table)
        from auralens.interp.runs import atomic_write_text

        atomic_write_text(run.file("probes_by_layer.html"), by_layer)
        atomic_write_text(run.file("probes_by_step.html"), by_step)
        _save_directions(run, best)
        from auralens.probes.labels import label_table

        labels = label_table(items, list(table["attribute"].unique()))
        run.write_table("labels.parquet", labels.astype(str).where(labels.notna(), None).reset_index())
        run.write_table("generations.parquet", store.rows)
        summary = _summary(table, best, notes)
        t4 = time.perf_counter()
        result = {
            "model": model, "data": data, "n": len(items), "run": str(out),
            "n_rows": int(len(store.rows)), "n_probes": int(len(table)),
            "best_chosen_on": split_names["select"], "reported_on": split_names["report"],
            "n_select": len(split_ids["select"]), "n_report": len(split_ids["report"]),
            **summary,
            "timing_s": {"load": round(t1 - t0, 2), "collect": round(t2 - t1, 2), "probe": round(t3 - t2, 2),
                         "write": round(t4 - t3, 2), "total": round(t4 - t0, 2)},
        }
        run.write_json("probe_summary.json", result)
        run.mark_stage("probe", n_rows=result["n_rows"], n_probes=result["n_probes"])
        run.finish()
        return result

    from auralens.interp.distributed import on_main

    return on_main(fit)
