"""The data of a steering fit and evaluation: which split a fit uses (:func:`fit_spec`), the
dev/test splits of an evaluation (:func:`eval_splits`), what identifies a split
(:func:`split_record`), the check that heads were ranked on calibration data
(:func:`check_heads_data`), the fit items rebuilt from a vector (:func:`fit_items`) and their
overlap with other items (:func:`overlap`).  Every dataset spec goes through
:class:`auralens.interp.dataspec.DataSpec`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from auralens.interp.datasets import fingerprint, load_dataset
from auralens.interp.dataspec import FILE_SPLITS, DataSpec
from auralens.interp.errors import ConfigError
from auralens.interp.record import read_heads_source
from auralens.interp.runs import run_identity

__all__ = ["check_heads_data", "eval_splits", "fit_items", "fit_spec", "heads_data", "item_keys", "overlap",
           "split_record"]


def heads_data(heads_from) -> str | None:
    """The dataset a heads table was ranked on (its record run's manifest ``data``), if known."""
    if not isinstance(heads_from, (str, Path)):
        return None
    p = Path(heads_from)
    if not (p.is_dir() or p.suffix == ".parquet"):
        return None  # 'L:H,...' pairs
    return read_heads_source(str(p)).get("data")


def check_heads_data(heads_data: str, specs) -> None:
    """Refuse heads ranked on data that is not a calibration split of the dataset of ``specs``
    (the fit data, or the eval's dev/test): same dataset (cue datasets: any condition) and a
    split other than calibration (or the whole file dataset, or calibration under another split
    seed) -> ConfigError.  Heads without a recorded dataset (a bare heads.parquet, pairs) and
    datasets without splits (plain cafe) are not checked."""
    heads = DataSpec.parse(heads_data)
    for spec in specs:
        ds = DataSpec.parse(spec)
        if heads.family != ds.family or not ds.has_splits:
            continue  # another dataset, or one without calibration/dev/test splits (plain cafe)
        if heads.effective_split == "calibration" and heads.split_seed == ds.split_seed:
            continue
        raise ConfigError(
            f"heads_from: the heads were ranked on {heads_data!r}, which is not the calibration split of the "
            f"dataset of {str(spec)!r} (it is or contains its dev/test items); expected heads from a calibration run "
            f"(auralens record --data <dataset>:calibration)"
        )


def fit_spec(data: str | DataSpec) -> str:
    """The fit data: a cue or file dataset without a split fits on its calibration split."""
    ds = DataSpec.parse(data)
    if ds.has_splits and ds.split_name is None:
        return str(ds.split("calibration"))
    return str(ds)


def split_record(spec: str | DataSpec, seed: int, items) -> dict[str, Any]:
    """What identifies one split: its spec, data seed, scene-seed range and item-id fingerprint."""
    ds = DataSpec.parse(spec, seed=seed)
    ident = run_identity(items)
    rec = {"data": str(ds), "seed": int(seed), "n": len(items), "seeds": ds.seed_range(len(items)),
           "ids_sha256": ident["items"]["ids_sha256"], "data_fingerprint": ident["data_fingerprint"]}
    if ds.kind == "file" and ds.split_name is not None:  # a file dataset's hashed item-id split
        rec.update(split=ds.split_name, split_seed=ds.split_seed,
                   split_rule="sha256('<split seed>:<item id>') -> u in [0,1): "
                              + ", ".join(f"{k} {v:.0%}" for k, v in FILE_SPLITS.items()))
    return rec


def eval_splits(data: str | DataSpec, seed: int) -> dict[str, tuple[str, int]]:
    """``{"dev": (spec, data seed), "test": (spec, data seed)}`` of the dev/test protocol
    (:meth:`auralens.interp.dataspec.DataSpec.dev_test`).

    Cue datasets use their fixed ``:dev`` / ``:test`` splits; plain ``cafe`` (or
    ``cafe:<tiers>``) uses the disjoint data seeds ``seed`` (dev) and ``seed + 1`` (test); a
    file dataset (MMAU/MMAR .json or a folder, ``path`` or ``path@<split seed>``) uses its hashed
    item-id splits ``path:dev[@s]`` / ``path:test[@s]`` (:func:`auralens.interp.dataspec.file_split`).
    Anything else has no split: ConfigError."""
    ds = DataSpec.parse(data, seed=seed)
    if ds.kind == "file" and not (Path(ds.name).suffix == ".json" or Path(ds.name).is_dir()):
        raise ConfigError(
            f"data {str(data)!r}: expected a dataset with dev/test splits (cafe, cafe-neutral|congruent|conflict, an "
            "MMAU/MMAR .json file or a folder with questions.jsonl), "
            "found one without; use protocol='sweep' for an in-sample sweep"
        )
    dev, test = ds.dev_test()
    return {"dev": (str(dev), dev.seed), "test": (str(test), test.seed)}


def item_keys(it) -> set:
    """What makes two items share data: the item id without its cue condition, and the audio."""
    iid = str(it.item_id)
    for cond in ("-neutral", "-congruent", "-conflict"):
        iid = iid.removesuffix(cond)
    return {("id", iid), ("audio", str(it.audio))}


def overlap(fit_items, items) -> int:
    """Number of ``items`` that share an item (any cue condition) or an audio clip with ``fit_items``."""
    keys = set().union(*(item_keys(it) for it in fit_items)) if fit_items else set()
    return sum(1 for it in items if item_keys(it) & keys)


def fit_items(vec):
    """``(items, None)``: the fit items recorded in ``vec.extra['fit']`` rebuilt identically (their
    fingerprint is the vector's ``data_fingerprint``), or ``(None, reason)``."""
    fit = vec.extra.get("fit")
    if not isinstance(fit, dict):
        return None, "the vector does not record its fit data (extra['fit'])"
    try:
        items = load_dataset(fit["data"], n=fit["n"], seed=fit["seed"])
    except Exception as exc:
        return None, f"cannot reload the fit data {fit.get('data')!r}: {exc}"
    if fingerprint(items) != vec.data_fingerprint:
        return None, "the reloaded fit data do not match the vector's data_fingerprint"
    return items, None

