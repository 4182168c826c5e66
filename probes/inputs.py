"""Checks and encodings of probe inputs: activations, labels, item groups, class support.

Every check raises :class:`auralens.interp.errors.ProbeError` naming the attribute, what was expected and
what was found.  Used by :mod:`auralens.probes.fit`.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np

from auralens.interp.errors import ProbeError

__all__ = ["as_1d", "as_features", "check_lengths", "check_support", "encode_groups", "encode_labels"]


def as_features(X: Any, attribute: str) -> np.ndarray:
    """``X`` as a finite float64 ``[batch, d_model]`` array (a torch tensor is converted)."""
    if hasattr(X, "detach"):  # a torch tensor (any dtype, any device), without importing torch
        X = X.detach().float().cpu().numpy()
    X = np.asarray(X)
    if X.ndim != 2:
        raise ProbeError(
            f"X for attribute {attribute!r}: expected a 2-D array [batch, d_model], "
            f"found shape {X.shape}"
        )
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise ProbeError(
            f"X for attribute {attribute!r}: expected real numbers, found dtype {X.dtype}"
        )
    X = X.astype(np.float64, copy=False)
    if X.shape[1] == 0:
        raise ProbeError(f"X for attribute {attribute!r}: expected at least 1 feature, found 0")
    finite = np.isfinite(X)
    if not finite.all():
        bad_rows = np.flatnonzero(~finite.all(axis=1))
        raise ProbeError(
            f"X for attribute {attribute!r}: expected finite features, found "
            f"{int((~finite).sum())} non-finite values (NaN/inf) in {bad_rows.size} rows, "
            f"first rows {bad_rows[:5].tolist()}"
        )
    return X


def as_1d(values: Any, what: str, attribute: str) -> np.ndarray:
    """``values`` as a 1-D array (``what`` names it in the error)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ProbeError(
            f"{what} for attribute {attribute!r}: expected 1-D, found shape {arr.shape}"
        )
    return arr


def check_lengths(attribute: str, **arrays: np.ndarray) -> None:
    """The same number of rows in every array."""
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        found = ", ".join(f"{name}={length}" for name, length in lengths.items())
        raise ProbeError(
            f"attribute {attribute!r}: expected X, y and groups with the same number of rows, "
            f"found {found}"
        )


def encode_labels(y: np.ndarray, attribute: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct classes and integer codes of categorical labels."""
    try:
        classes, codes = np.unique(y, return_inverse=True)
    except TypeError as exc:
        raise ProbeError(
            f"y for attribute {attribute!r}: expected labels of one comparable type, found "
            f"mixed types {sorted({type(v).__name__ for v in y.tolist()})}"
        ) from exc
    if y.dtype.kind == "f" and np.isnan(classes.astype(float)).any():
        raise ProbeError(f"y for attribute {attribute!r}: expected labels, found NaN")
    if y.dtype == object and any(v is None for v in classes.tolist()):
        raise ProbeError(f"y for attribute {attribute!r}: expected labels, found None")
    return classes, codes.reshape(-1)


def encode_groups(groups: np.ndarray) -> np.ndarray:
    """Integer codes of the item ids (sorted order, or first-seen order for mixed types)."""
    try:
        return np.unique(groups, return_inverse=True)[1].reshape(-1)
    except TypeError:  # mixed types: fall back to first-seen order
        seen: dict[Hashable, int] = {}
        return np.array([seen.setdefault(g, len(seen)) for g in groups.tolist()], dtype=np.int64)


def check_support(
    codes: np.ndarray | None,
    classes: np.ndarray | None,
    y_cont: np.ndarray | None,
    group_codes: np.ndarray,
    n_folds: int,
    attribute: str,
) -> None:
    """Enough distinct items for ``n_folds``-fold CV by item, and in every class (categorical
    ``codes``/``classes``); a finite, varying label (continuous ``y_cont``)."""
    n_items = int(group_codes.max()) + 1 if group_codes.size else 0
    k = n_folds
    if n_items < k:
        raise ProbeError(
            f"attribute {attribute!r}: {k}-fold cross-validation by item needs at least {k} "
            f"distinct items (groups), found {n_items} (in {group_codes.size} rows); "
            f"lower n_folds or collect more items"
        )
    if codes is not None and classes is not None:
        if classes.size < 2:
            raise ProbeError(
                f"attribute {attribute!r}: expected at least 2 classes, found only class "
                f"{classes.tolist()[0]!r} in all {codes.size} rows"
            )
        items_per_class = np.zeros(classes.size, dtype=np.int64)
        for c in range(classes.size):
            items_per_class[c] = np.unique(group_codes[codes == c]).size
        rare = np.flatnonzero(items_per_class < k)
        if rare.size:
            names = classes.tolist()
            found = ", ".join(f"{names[c]!r}: {items_per_class[c]}" for c in rare)
            raise ProbeError(
                f"attribute {attribute!r}: {k}-fold stratified cross-validation by item needs "
                f"every class in at least {k} distinct items, found {found}; lower n_folds, "
                f"merge rare classes or collect more items"
            )
    if y_cont is not None:
        if not np.isfinite(y_cont).all():
            raise ProbeError(
                f"y for attribute {attribute!r}: expected finite values for a ridge probe, found "
                f"{int((~np.isfinite(y_cont)).sum())} NaN/inf"
            )
        if np.ptp(y_cont) == 0:
            raise ProbeError(
                f"attribute {attribute!r}: expected a varying continuous label, found the single "
                f"value {y_cont.tolist()[0]!r} in all {y_cont.size} rows"
            )
