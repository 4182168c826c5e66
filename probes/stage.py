"""The probe stage (``auralens probe``): where audio attributes live, by layer and by reasoning step.

:class:`ProbeStageConfig` holds the stage's options; :func:`stage_probe` loads items, collects
residual-stream activations through nnsight into a run folder (:mod:`auralens.probes.collect`),
labels every item from ground truth or metadata (:mod:`auralens.probes.labels`), fits one
item-grouped, control-tasked probe per attribute x layer x position (and x reasoning step for
``step_mean``) with :func:`auralens.probes.probing.probe_store`, and writes:

- ``probes.parquet``         exactly :data:`auralens.probes.tables.TABLE_COLUMNS`
- ``probes_by_layer.html``   score by layer, one panel per (site, position)
- ``probes_by_step.html``    score by reasoning step at each attribute's best layer
- ``probe_summary.json``     per attribute: best layer (chosen on the select split) and its
  scores on the disjoint report split; decay over steps
- ``probe_directions.safetensors``  the best probe's direction per attribute (for steering)
- ``labels.parquet``, ``generations.parquet`` and ``activations/`` (chunks + index)

The figures and the summary are :mod:`auralens.probes.report`'s, the directions file
:mod:`auralens.probes.directions`'s (:func:`~auralens.probes.directions.load_probe_direction`
reads one back).

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

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auralens.interp.dataspec import DataSpec
from auralens.interp.distributed import on_main
from auralens.interp.errors import ProbeError
from auralens.interp.runs import atomic_write_text, check_dtype, check_int, check_n, load_items, open_run
from auralens.interp.stage_config import DTYPE_HELP, RESUME_HELP, ModelDataConfig, option, takes_config
from auralens.probes.collect import POSITIONS, CollectConfig, collect_activations
from auralens.probes.directions import save_directions
from auralens.probes.labels import label_table
from auralens.probes.probing import probe_store
from auralens.probes.report import probe_figures, probe_summary

__all__ = ["ProbeSplits", "ProbeStageConfig", "half_split", "probe_splits", "stage_probe", "stage_splits",
           "write_probe_run"]


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



@dataclass(frozen=True)
class ProbeSplits:
    """The items of a probe run and how they split: ``items`` (all of them; select's first when
    they come from two datasets), ``ids`` (``{"select": item ids, "report": item ids}``, disjoint)
    and ``names`` (what each split is: its dataset spec, or the half-split rule)."""

    items: list
    ids: dict[str, list[str]]
    names: dict[str, str]

    def manifest(self) -> dict[str, Any]:
        """The manifest's ``splits``: per split its data, item count and item ids."""
        return {k: {"data": self.names[k], "n": len(self.ids[k]), "item_ids": self.ids[k]} for k in ("select", "report")}


def stage_splits(data: str, *, n: int | None, seed: int) -> ProbeSplits:
    """Load and check the items of a probe run over ``data`` (:func:`probe_splits`): ``n`` items
    of each of the select and report datasets (disjoint), or ``n`` items split in halves
    (:func:`half_split`)."""
    specs = probe_splits(data, seed=seed)
    if specs is None:
        items = load_items(data, n=n, seed=seed, allow_all=True)
        rule = f"sha256('{seed}:<item id>') order"
        return ProbeSplits(items=items, ids=half_split([it.item_id for it in items], seed=seed),
                           names={"select": f"{data}: first half by {rule}", "report": f"{data}: second half by {rule}"})
    sel_items = load_items(specs[0], n=n, seed=seed, allow_all=True)
    rep_items = load_items(specs[1], n=n, seed=seed, allow_all=True)
    overlap = {it.item_id for it in sel_items} & {it.item_id for it in rep_items}
    if overlap:
        raise ProbeError(f"splits {specs}: expected disjoint items, found {len(overlap)} shared")
    return ProbeSplits(items=sel_items + rep_items,
                       ids={"select": [it.item_id for it in sel_items], "report": [it.item_id for it in rep_items]},
                       names={"select": specs[0], "report": specs[1]})


def write_probe_run(run, store, items: Sequence[Any], table, best: dict[str, Any], notes: dict[str, Any]) -> dict[str, Any]:
    """Write a probe run's results (``probes.parquet``, both pages, the directions,
    ``labels.parquet``, ``generations.parquet``); returns the summary (:func:`probe_summary`)."""
    run.write_table("probes.parquet", table)
    by_layer, by_step = probe_figures(table)
    atomic_write_text(run.file("probes_by_layer.html"), by_layer)
    atomic_write_text(run.file("probes_by_step.html"), by_step)
    save_directions(run, best)
    labels = label_table(items, list(table["attribute"].unique()))
    run.write_table("labels.parquet", labels.astype(str).where(labels.notna(), None).reset_index())
    run.write_table("generations.parquet", store.rows)
    return probe_summary(table, best, notes)


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
    t0 = time.perf_counter()
    # 1. validate: options (ProbeStageConfig, its CollectConfig), items, audio
    coll = cfg.collect()
    splits = stage_splits(cfg.data, n=cfg.n, seed=cfg.seed)
    items = splits.items
    if cfg.attributes is not None:
        label_table(items, list(cfg.attributes))  # unknown attribute names, before any folder
    # 2-4. folder check, model (and its layer range), folder
    run, lm = open_run(
        cfg.out, manifest=cfg.manifest(), items=items, resume=cfg.resume, lm=lm, model=cfg.model, dtype=cfg.dtype,
        device_map=cfg.device_map,
        before_create=lambda m: coll.resolve(m.arch),  # layer range errors before any folder or work
    )
    run.update_manifest(splits=splits.manifest())
    t1 = time.perf_counter()
    store = collect_activations(lm, items, run, coll, resume=cfg.resume, progress=not quiet)
    t2 = time.perf_counter()

    def fit():  # rank 0 fits the probes on every item's activations (auralens.interp.distributed)
        table, best, notes = probe_store(
            store, items, attributes=cfg.attributes, n_folds=cfg.n_folds, n_bootstrap=cfg.n_bootstrap,
            seed=cfg.seed, progress=not quiet, splits=splits.ids,
        )
        t3 = time.perf_counter()
        summary = write_probe_run(run, store, items, table, best, notes)
        t4 = time.perf_counter()
        result = {
            "model": cfg.model, "data": cfg.data, "n": len(items), "run": str(cfg.out),
            "n_rows": int(len(store.rows)), "n_probes": int(len(table)),
            "best_chosen_on": splits.names["select"], "reported_on": splits.names["report"],
            "n_select": len(splits.ids["select"]), "n_report": len(splits.ids["report"]),
            **summary,
            "timing_s": {"load": round(t1 - t0, 2), "collect": round(t2 - t1, 2), "probe": round(t3 - t2, 2),
                         "write": round(t4 - t3, 2), "total": round(t4 - t0, 2)},
        }
        run.write_json("probe_summary.json", result)
        run.mark_stage("probe", n_rows=result["n_rows"], n_probes=result["n_probes"])
        run.finish()
        return result

    return on_main(fit)
