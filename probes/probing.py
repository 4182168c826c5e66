"""Probing a collected activation store: one item-grouped, control-tasked probe per attribute x
location (site, position, layer[, reasoning step]) x split (:func:`probe_store`).

The steps, in order: choose the attributes (:func:`default_attributes`), label every row
(:class:`LabelledRows`), leave out classes too rare for the folds (default attributes only:
:func:`drop_rare_classes`), keep the attributes with enough support (:func:`usable_attributes`),
then fit every location on each split (:func:`probe_locations`) and pick each attribute's best
prompt-position probe on the select split.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from auralens.interp.errors import ProbeError
from auralens.probes.collect import AUDIO_SITE, LM_SITE
from auralens.probes.fit import ProbeConfig
from auralens.probes.labels import DEFAULT_ATTRIBUTES, control_keys, label_support, label_table
from auralens.probes.tables import probe_results, probe_table

__all__ = ["CONTROL_TASK", "LabelledRows", "best_rows", "checked_splits", "default_attributes", "drop_rare_classes",
           "position_name", "probe_locations", "probe_store", "store_locations", "support_problem",
           "usable_attributes"]


#: what the control task of every probe here is (written to the probe summary)
CONTROL_TASK = ("Hewitt & Liang: one random label per control key, drawn from the attribute's label distribution; "
                "key = the scene's sound type (first event's class/pitch level/loudness level; "
                "auralens.probes.labels.sound_type_key), or the item itself for items without a scene")


def position_name(position: str, fmt: str, formats: Sequence[str]) -> str:
    """The table's position name: ``position``, or ``"<format>:<position>"`` with several formats."""
    return position if len(formats) == 1 else f"{fmt}:{position}"


def store_locations(store, formats: Sequence[str]) -> list[tuple]:
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


def default_attributes(attributes: Sequence[str] | None, items: Sequence[Any]) -> list[str]:
    """The attributes to probe, deduplicated: ``attributes``, or (None) every
    :data:`~auralens.probes.labels.DEFAULT_ATTRIBUTES` when the items have scenes, else
    ``category`` and ``sub_category``.  None left is a :class:`ProbeError`."""
    if attributes is None:
        has_scene = any(getattr(it, "scene", None) for it in items)
        attributes = DEFAULT_ATTRIBUTES if has_scene else ("category", "sub_category")
    attributes = list(dict.fromkeys(attributes))
    if not attributes:
        raise ProbeError("attributes: expected at least one attribute to probe, found none")
    return attributes


@dataclass
class LabelledRows:
    """The store's rows with their labels: ``groups`` (item id per row), ``labels`` (attribute ->
    label per row, None where undefined), ``formats`` and ``fmt_of`` (answer format per row),
    ``in_split`` (split name -> row mask) and ``keys`` (the control-task type key of each row's
    item, :func:`~auralens.probes.labels.control_keys`: the scene's sound type)."""

    groups: np.ndarray
    labels: dict[str, np.ndarray]
    formats: list[str]
    fmt_of: np.ndarray
    in_split: dict[str, np.ndarray]
    keys: np.ndarray | None = None

    @classmethod
    def build(cls, rows, items: Sequence[Any], attributes: Sequence[str],
              splits: dict[str, Sequence[str]]) -> LabelledRows:
        """Label ``rows`` (the store's row table) from ``items``; every row's item must be among them."""
        by_id = {it.item_id: it for it in items}
        missing = sorted(set(rows["item_id"]) - set(by_id))
        if missing:
            raise ProbeError(f"activations: rows for items {missing[:5]} that are not among the given items")
        table = label_table([by_id[i] for i in dict.fromkeys(rows["item_id"])], attributes)
        groups = rows["item_id"].to_numpy(dtype=object)
        labels = {a: np.array([table.at[i, a] for i in groups], dtype=object) for a in attributes}
        in_split = {name: np.isin(groups, np.asarray(list(ids), dtype=object)) for name, ids in splits.items()}
        key_of = dict(zip(by_id, control_keys(list(by_id.values()))))
        keys = np.array([key_of[i] for i in groups], dtype=object)
        return cls(groups=groups, labels=labels, formats=list(dict.fromkeys(rows["format"])),
                   fmt_of=rows["format"].to_numpy(dtype=object), in_split=in_split, keys=keys)


def checked_splits(splits: dict[str, Sequence[str]] | None, rows) -> dict[str, Sequence[str]]:
    """``splits`` checked (disjoint ``select`` and ``report``), or one ``"all"`` split of every row's item."""
    if splits is None:
        return {"all": list(dict.fromkeys(rows["item_id"]))}
    if set(splits) != {"select", "report"} or set(splits["select"]) & set(splits["report"]):
        raise ProbeError(f"splits: expected disjoint 'select' and 'report' item ids, found keys {sorted(splits)}")
    return splits


def drop_rare_classes(data: LabelledRows, attributes: Sequence[str], n_folds: int) -> dict[str, dict[str, int]]:
    """Leave out (label None) the rows of classes in fewer items than folds in any split (each
    split is cross-validated on its own), when at least two classes remain — e.g. the class of a
    4th event on a few dozen items — rather than losing the whole attribute.  Updates
    ``data.labels``; returns ``{attribute: {class: n_items}}`` of what was left out."""
    dropped: dict[str, dict[str, int]] = {}
    for a in attributes:
        per_class: dict[Any, set] = {}
        rare: dict[Any, int] = {}
        for mask in data.in_split.values():
            split_class: dict[Any, set] = {}
            for v, g in zip(data.labels[a][mask].tolist(), data.groups[mask].tolist()):
                if v is not None:
                    split_class.setdefault(v, set()).add(g)
                    per_class.setdefault(v, set()).add(g)
            rare.update({c: len(gs) for c, gs in split_class.items() if len(gs) < n_folds and c not in rare})
        if rare and len(per_class) - len(rare) >= 2:
            data.labels[a] = np.array([None if v in rare else v for v in data.labels[a].tolist()], dtype=object)
            dropped[a] = {str(c): n for c, n in rare.items()}
    return dropped


def support_problem(data: LabelledRows, attribute: str, n_folds: int) -> str | None:
    """Why ``attribute`` cannot be probed in some format x split (the first found), or None."""
    for fmt in data.formats:
        for split, mask in data.in_split.items():
            sel = (data.fmt_of == fmt) & mask
            reason = label_support(data.labels[attribute][sel], data.groups[sel], n_folds)
            if reason is not None:
                return f"{split} split: {reason}" if len(data.in_split) > 1 else reason
    return None


def usable_attributes(data: LabelledRows, attributes: Sequence[str], n_folds: int, *,
                      explicit: bool) -> tuple[list[str], dict[str, str]]:
    """``(usable attributes, {skipped attribute: reason})``.  An attribute named ``explicit``-ly
    without support raises :class:`ProbeError`, and so does none usable."""
    usable: list[str] = []
    skipped: dict[str, str] = {}
    for a in attributes:
        reason = support_problem(data, a, n_folds)
        if reason is None:
            usable.append(a)
        elif explicit:
            raise ProbeError(f"attribute {a!r}: cannot be probed with {n_folds}-fold CV by item: {reason}")
        else:
            skipped[a] = reason
    if not usable:
        raise ProbeError(
            f"attributes: none of {attributes} can be probed with {n_folds}-fold CV by item on "
            f"{len(set(data.groups.tolist()))} items ({skipped}); collect more items or lower n_folds"
        )
    return usable, skipped


def _step_attributes(data: LabelledRows, usable: Sequence[str], idx: np.ndarray, name: str, step: int,
                     n_folds: int, skipped_steps: dict[str, dict[str, list[int]]]) -> list[str]:
    """The attributes with enough items at one reasoning step; the others are listed in ``skipped_steps``."""
    attrs = []
    for a in usable:
        if label_support(data.labels[a][idx], data.groups[idx], n_folds) is None:
            attrs.append(a)
        else:
            listed = skipped_steps.setdefault(a, {}).setdefault(name, [])
            if int(step) not in listed:
                listed.append(int(step))
    return attrs


def probe_locations(store, data: LabelledRows, usable: Sequence[str], config: ProbeConfig, *,
                    progress: bool = False) -> tuple[list[dict[str, Any]], dict[tuple, Any], dict[str, Any]]:
    """Fit every location of ``store`` on each split.  Returns ``(records, by_location,
    skipped_steps)``: the table records, ``{(split, site, layer, position, step, attribute):
    ProbeRow}`` and ``{attribute: {position: [reasoning steps without enough items]}}`` (sorted)."""
    records: list[dict[str, Any]] = []
    by_location: dict[tuple, Any] = {}
    skipped_steps: dict[str, dict[str, list[int]]] = {}
    n_layers = int(store.index["n_layers"])
    locations = store_locations(store, data.formats)
    bar = None
    if progress:

        bar = tqdm(total=len(locations), desc="probes", unit="location")
    for site, position, fmt, layer, step in locations:
        X_all, idx_all = store.matrix(site, position, layer, step)
        name = position_name(position, fmt, data.formats)
        for split, mask in data.in_split.items():
            keep = (data.fmt_of[idx_all] == fmt) & mask[idx_all]
            X, idx = X_all[keep], idx_all[keep]
            attrs = usable if step is None else _step_attributes(data, usable, idx, name, step, config.n_folds,
                                                                 skipped_steps)
            if not attrs:
                continue
            keys = None if data.keys is None else {a: data.keys for a in attrs}
            results = probe_results({(site, int(layer), name, step): (X, idx)}, {a: data.labels[a] for a in attrs},
                                    data.groups, config, control_keys=keys, n_layers=n_layers)
            for r in results:
                r = dataclasses.replace(r, split=split)
                records.append(r.as_record())
                by_location[(split, site, int(layer), name, step, r.attribute)] = r
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    for a in skipped_steps.values():
        for steps in a.values():
            steps.sort()
    return records, by_location, skipped_steps


def best_rows(by_location: dict[tuple, Any], splits: dict[str, Sequence[str]]) -> dict[str, tuple[Any, Any]]:
    """``{attribute: (chosen, reported)}``: the best decoder prompt-position probe on the select
    split (highest accuracy, the first in table order on ties) and the report split's row at that
    location (None when it has none; the same row without splits)."""
    choose_on = "select" if "select" in splits else "all"
    report_on = "report" if "report" in splits else "all"
    best: dict[str, Any] = {}
    for (split, site, _layer, _name, step, attribute), r in by_location.items():
        if step is None and site == LM_SITE and split == choose_on:
            cur = best.get(attribute)
            if cur is None or r.result.accuracy > cur.result.accuracy:
                best[attribute] = r
    return {a: (row, by_location.get((report_on, row.site, int(row.layer), row.position, row.step, a)))
            for a, row in best.items()}


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

    Returns ``(table, best, notes)``: the :func:`auralens.probes.tables.probe_table` DataFrame (its ``split``
    column says on which items), ``best = {attribute: (chosen, reported)}``: the best
    prompt-position :class:`ProbeRow` on the select split (highest accuracy, earliest layer on
    ties) and the report split's row at that location (the same row without splits), and
    ``notes = {"skipped": {attribute: reason}, "skipped_steps": {attribute: {position:
    [steps without enough items]}}, "dropped_classes": {attribute: {class: n_items}}, "control_task":
    CONTROL_TASK}`` (what the control task is).

    With ``attributes=None`` (the defaults), classes in fewer items than folds are left out of
    their attribute, and attributes still lacking support (one class, too few items) are
    skipped with a reason; attributes named explicitly raise :class:`ProbeError` instead.
    Reasoning steps without enough items for an attribute are always skipped (and listed).
    """
    explicit = attributes is not None
    attributes = default_attributes(attributes, items)
    splits = checked_splits(splits, store.rows)
    data = LabelledRows.build(store.rows, items, attributes, splits)
    config = ProbeConfig(n_folds=n_folds, n_bootstrap=n_bootstrap, seed=seed)
    dropped = {} if explicit else drop_rare_classes(data, attributes, n_folds)
    usable, skipped = usable_attributes(data, attributes, n_folds, explicit=explicit)
    records, by_location, skipped_steps = probe_locations(store, data, usable, config, progress=progress)
    notes = {"skipped": skipped, "skipped_steps": skipped_steps, "dropped_classes": dropped,
             "control_task": CONTROL_TASK}
    return probe_table(records), best_rows(by_location, splits), notes
