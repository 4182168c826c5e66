"""Probe labels: audio attributes from cafe ground truth, and any per-item metadata column.

Every label function returns a plain dict ``{attribute: value}`` per item; an attribute that is
not defined for an item (the 3rd event of a 2-event scene, a real clip without a scene, an
empty metadata field) is ``None``, which the probes treat as "leave this item out".

cafe attributes (from ``item.scene``; see :func:`cafe_labels`):

- ``n_events``                       number of events (1..4)
- ``event{k}_class``, k = 1..4       class of the k-th event (``None`` when there is none)
- ``event1_pitch`` / ``event1_loudness``   level of the first event ("low"/"high", "soft"/"loud")
- ``loudness_differs_12`` / ``pitch_differs_12``  whether events 1 and 2 differ in level
- ``louder_of_12`` / ``higher_of_12``  "first" or "second" (``None`` when equal or absent)
- ``has_{class}``                    whether a class occurs at all (e.g. ``has_noise``)
- ``order_{a}_{b}``                  "a_first"/"b_first" for two classes that both occur
                                     exactly once (``None`` otherwise), e.g. ``order_tone_noise``
- ``n_loud``                         number of loud events

Metadata attributes (any dataset, :func:`metadata_labels`): ``task``, ``category``,
``sub_category``, ``difficulty`` or any key of ``item.meta`` (MMAU's ``sub-category`` etc.).

Control-task key (Hewitt & Liang's word *type*, see :func:`auralens.probes.fit.control_labels`):
:func:`sound_type_key`, the sound type of a scene, i.e. its first event's class, pitch level and
loudness level ("tone/low/loud": 6 x 2 x 2 = 24 types, each shared by many items).

Public API: :data:`CAFE_ATTRIBUTES`, :data:`DEFAULT_ATTRIBUTES`, :data:`METADATA_COLUMNS`,
:func:`cafe_labels`, :func:`metadata_labels`, :func:`item_labels`, :func:`label_table`,
:func:`label_support`, :func:`sound_type_key`, :func:`control_keys`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np

from auralens.interp.cafe.scenes import CLASSES
from auralens.interp.errors import ProbeError

__all__ = [
    "CAFE_ATTRIBUTES",
    "DEFAULT_ATTRIBUTES",
    "METADATA_COLUMNS",
    "cafe_labels",
    "control_keys",
    "item_labels",
    "label_support",
    "label_table",
    "metadata_labels",
    "sound_type_key",
]

MAX_EVENTS = 4
#: every attribute :func:`cafe_labels` defines, in a stable order
CAFE_ATTRIBUTES: tuple[str, ...] = (
    "n_events",
    *(f"event{k}_class" for k in range(1, MAX_EVENTS + 1)),
    "event1_pitch",
    "event1_loudness",
    "loudness_differs_12",
    "louder_of_12",
    "pitch_differs_12",
    "higher_of_12",
    "n_loud",
    *(f"has_{c}" for c in CLASSES),
    *(f"order_{a}_{b}" for a, b in combinations(CLASSES, 2)),
)
#: the attributes a probe stage reads by default (audio facts the questions ask about)
DEFAULT_ATTRIBUTES: tuple[str, ...] = (
    "n_events",
    "event1_class",
    "event2_class",
    "event3_class",
    "event4_class",
    "event1_pitch",
    "event1_loudness",
    "loudness_differs_12",
    "louder_of_12",
    "has_noise",
    "order_tone_noise",
)
#: item fields every dataset loader fills
METADATA_COLUMNS: tuple[str, ...] = ("task", "category", "sub_category", "difficulty")


def _events(scene: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    events = scene.get("events")
    if not isinstance(events, (list, tuple)):
        raise ProbeError(f"scene {scene.get('scene_id', '?')!r}: expected a list of events, found {events!r}")
    return list(events)


def cafe_labels(scene: Mapping[str, Any] | None) -> dict[str, Any]:
    """All :data:`CAFE_ATTRIBUTES` of one scene (a ``Scene.to_dict()``); ``None`` gives all None."""
    if scene is None:
        return {a: None for a in CAFE_ATTRIBUTES}
    ev = _events(scene)
    classes = [str(e["cls"]) for e in ev]
    out: dict[str, Any] = {"n_events": len(ev)}
    for k in range(1, MAX_EVENTS + 1):
        out[f"event{k}_class"] = classes[k - 1] if k <= len(ev) else None
    first = ev[0] if ev else None
    out["event1_pitch"] = first["pitch_level"] if first else None
    out["event1_loudness"] = first["loudness_level"] if first else None
    for attr, top, differs, which in (
        ("loudness_level", "loud", "loudness_differs_12", "louder_of_12"),
        ("pitch_level", "high", "pitch_differs_12", "higher_of_12"),
    ):
        if len(ev) >= 2:
            a, b = ev[0][attr], ev[1][attr]
            out[differs] = bool(a != b)
            out[which] = None if a == b else ("first" if a == top else "second")
        else:
            out[differs] = out[which] = None
    out["n_loud"] = sum(1 for e in ev if e["loudness_level"] == "loud")
    for c in CLASSES:
        out[f"has_{c}"] = c in classes
    for a, b in combinations(CLASSES, 2):
        if classes.count(a) == 1 and classes.count(b) == 1:
            out[f"order_{a}_{b}"] = f"{a}_first" if classes.index(a) < classes.index(b) else f"{b}_first"
        else:
            out[f"order_{a}_{b}"] = None
    return out


def sound_type_key(scene: Mapping[str, Any] | None) -> str | None:
    """The control-task type key of a cafe scene: its first event's sound type,
    ``"<class>/<pitch level>/<loudness level>"`` (e.g. ``"tone/low/loud"``); None without a
    scene or events.

    Hewitt & Liang give every word *type* one random control label shared by all its tokens;
    the audio analogue of a word type is the kind of sound heard.  The key recurs across items
    (24 values), so a probe can score on the control task only by memorising sound type ->
    random label, and it is a property of the audio, never of the question text."""
    if scene is None:
        return None
    ev = _events(scene)
    if not ev:
        return None
    first = ev[0]
    return f"{first['cls']}/{first['pitch_level']}/{first['loudness_level']}"


def control_keys(items: Sequence[Any]) -> list[str]:
    """One control key per item: :func:`sound_type_key` of its scene, or (an item without a
    scene, e.g. a real clip) ``"item:<item_id>"``, a type of its own (no memorisation
    possible: the control is then a random-label null)."""
    out = []
    for it in items:
        key = sound_type_key(getattr(it, "scene", None))
        out.append(key if key is not None else f"item:{it.item_id}")
    return out


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str) and not value.strip():
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return False


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return "/".join(str(v) for v in value)  # MMAU's one-element-list categories
    if isinstance(value, Hashable):
        return value
    return str(value)


def metadata_labels(item: Any, columns: Sequence[str] = METADATA_COLUMNS) -> dict[str, Any]:
    """One label per metadata column: an item field (``task``, ``category``...) or a key of
    ``item.meta`` (``sub-category``...); empty values become ``None``."""
    out: dict[str, Any] = {}
    meta = getattr(item, "meta", None) or {}
    for col in columns:
        if hasattr(item, col) and col not in ("meta", "scene"):
            value = getattr(item, col)
        elif col in meta:
            value = meta[col]
        else:
            value = None
        out[col] = None if _missing(value) else _hashable(value)
    return out


def item_labels(
    item: Any,
    attributes: Sequence[str] | None = None,
    *,
    metadata: Sequence[str] = METADATA_COLUMNS,
) -> dict[str, Any]:
    """cafe attributes (when the item has a scene) and metadata columns of one item.

    ``attributes`` selects and orders the result; a name that is neither a cafe attribute nor
    a metadata column nor a key of the item's ``meta`` is a :class:`ProbeError`.
    """
    meta_cols = list(dict.fromkeys([*metadata, *(attributes or ())]))
    meta_cols = [c for c in meta_cols if c not in CAFE_ATTRIBUTES]
    labels = {**cafe_labels(getattr(item, "scene", None)), **metadata_labels(item, meta_cols)}
    if attributes is None:
        return labels
    return {a: labels[a] for a in attributes}


def label_table(
    items: Sequence[Any],
    attributes: Sequence[str] | None = None,
    *,
    metadata: Sequence[str] = METADATA_COLUMNS,
):
    """A DataFrame with one row per item (index: item_id) and one column per attribute.

    Columns are object-typed so missing labels stay ``None`` (never NaN-coerced) and booleans
    stay booleans. An attribute unknown for *every* item (a typo) is a :class:`ProbeError`.
    """
    import pandas as pd

    if attributes is not None:
        unknown = [a for a in attributes if a not in CAFE_ATTRIBUTES and not _known_metadata(items, a)]
        if unknown:
            raise ProbeError(
                f"attributes {unknown}: expected cafe attributes ({', '.join(CAFE_ATTRIBUTES[:6])}, ...), "
                f"metadata columns {list(METADATA_COLUMNS)} or keys of the items' meta, found none of these"
            )
    records = [item_labels(it, attributes, metadata=metadata) for it in items]
    cols = list(attributes) if attributes is not None else list(records[0]) if records else []
    table = pd.DataFrame({c: pd.Series([r[c] for r in records], dtype=object) for c in cols})
    table.index = pd.Index([it.item_id for it in items], name="item_id")
    return table


def _known_metadata(items: Sequence[Any], column: str) -> bool:
    return any(
        (hasattr(it, column) and column not in ("meta", "scene")) or column in (getattr(it, "meta", None) or {})
        for it in items
    )


def label_support(
    y: Sequence[Any] | np.ndarray,
    groups: Sequence[Hashable] | np.ndarray,
    n_folds: int,
    *,
    kind: str = "logistic",
) -> str | None:
    """Why ``y`` cannot be probed with ``n_folds``-fold CV by item, or ``None`` if it can.

    The same rules :func:`auralens.probes.fit.fit_probe` enforces (so a caller can skip an attribute
    instead of failing): enough distinct items for the folds; for categorical labels at least
    two classes, each in at least ``n_folds`` distinct items; missing labels are left out.
    """
    y = np.asarray(y, dtype=object)
    g = np.asarray(groups, dtype=object)
    keep = np.array([not _missing(v) for v in y.tolist()], dtype=bool)
    y, g = y[keep], g[keep]
    n_items = len(set(g.tolist()))
    if n_items < n_folds:
        return f"{n_items} items with a label, fewer than the {n_folds} folds"
    if kind != "logistic":
        vals = np.asarray(y.tolist(), dtype=float)
        return None if np.ptp(vals) > 0 else "a single value"
    per_class: dict[Any, set] = {}
    for v, grp in zip(y.tolist(), g.tolist()):
        per_class.setdefault(v, set()).add(grp)
    if len(per_class) < 2:
        only = next(iter(per_class), None)
        return f"only one class ({only!r})"
    rare = {c: len(s) for c, s in per_class.items() if len(s) < n_folds}
    if rare:
        found = ", ".join(f"{c!r}: {n}" for c, n in sorted(rare.items(), key=lambda kv: str(kv[0])))
        return f"classes in fewer than {n_folds} items ({found})"
    return None
