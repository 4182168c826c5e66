"""Steering sweeps: accuracy as a function of beta and layer, against controls, with CIs.

:func:`run_sweep` generates and scores every (item, format) once without steering (the
baseline, ``beta = 0``) and once per (vector, layer, beta, position mode) with the vector's
direction at that one layer added (:func:`auralens.steering.apply.apply_vector`).  ``beta = 0`` is not
generated again: steering with ``beta = 0`` is bit-identical to no steering (a tested
property), so its rows *are* the baseline's.  Rows go to a :class:`~auralens.interp.runs.RowLog` after
each batch and a resumed sweep skips the rows it already has.

:func:`steering_table` aggregates the rows into the ``steering.parquet`` table, one row per
(vector, method, layer, beta, positions, format, category) with ``category`` each item
category and ``"all"``:

- ``accuracy``, ``ci_low``, ``ci_high``: mean correctness and its 95% Wilson CI
  over items;
- ``delta``, ``delta_ci_low``, ``delta_ci_high``: accuracy minus the baseline's on the same
  items, with a *paired* bootstrap (items resampled, each item's steered and baseline answers
  kept together, i.e. the bootstrap of the mean of per-item differences);
- ``n``: items.

:func:`best_gain` picks the (layer, beta, positions, format) with the largest gain of the
main vector and reports it beside the controls at the same setting (and the paired difference
vector − control).  It is chosen on the evaluation items themselves, so it is an optimistic
estimate; the summary says so.  :func:`figures` draws accuracy (and delta) vs beta per vector,
method, layer and positions with CI bands (:func:`auralens.steering.figures.steering_sweep`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from auralens.interp.cafe.formats import FORMATS
from auralens.interp.errors import ConfigError
from auralens.interp.generation import GenerationConfig, cast_features, generate_batch, model_inputs, score
from auralens.interp.runs import fill_rows
from auralens.interp.schemas import STEER_ITEMS, STEERING
from auralens.interp.stats import accuracy_ci, paired_diff_ci
from auralens.steering.figures import steering_sweep
from auralens.steering.registry import BACKENDS, POSITIONS

__all__ = [
    "BASELINE",
    "ITEM_COLUMNS",
    "STEERING_COLUMNS",
    "PerInput",
    "SweepConfig",
    "best_gain",
    "check_betas",
    "figures",
    "paired_ci",
    "paired_stats",
    "run_sweep",
    "steering_table",
]

#: the columns of ``steering.parquet`` before ``format`` (all declared in :data:`auralens.interp.schemas.STEERING`)
STEERING_COLUMNS: tuple[str, ...] = tuple(c for c in STEERING.names if c != "format")
#: the columns of the steer stage's ``items.parquet`` (:data:`auralens.interp.schemas.STEER_ITEMS`)
ITEM_COLUMNS: tuple[str, ...] = STEER_ITEMS.names
BASELINE = "baseline"
MAIN_METHOD = "audio_minus_silence"


def check_betas(betas: Any, *, option: str = "betas") -> tuple[float, ...]:
    """The steering strengths beta as distinct finite floats (at least one), else ConfigError naming
    ``option``.  The one validation of beta: :class:`SweepConfig` and the stage configs use it."""
    if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) or not betas:
        raise ConfigError(f"{option}: expected a non-empty list of numbers, found {betas!r}")
    clean = []
    for b in betas:
        if isinstance(b, bool) or not isinstance(b, (int, float, np.floating, np.integer)) or not math.isfinite(float(b)):
            raise ConfigError(f"{option}: expected finite numbers, found {b!r}")
        clean.append(float(b))
    if len(set(clean)) != len(clean):
        raise ConfigError(f"{option}: expected distinct values, found {clean}")
    return tuple(clean)


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """What to sweep.

    Attributes:
        betas: steering strengths beta (``0`` is the baseline, always included in the table).
        layers: layers to steer one at a time (``None``: every layer of each vector).
        positions: position modes of :func:`auralens.steering.apply.apply_vector`.
        formats: answer formats (``auralens.interp.cafe.formats.FORMATS``).
        max_new_tokens, batch_size: generation.
        backend: ``"torch"`` or ``"nnsight"`` (identical results; torch is faster).
        n_boot, seed: bootstrap.
        adaptive_gain, adaptive_heads: with a gain, every steered generation uses adaptive
            beta (:class:`auralens.steering.apply.AdaptiveAlpha`) gated by those specialist heads.
    """

    betas: tuple[float, ...]
    layers: tuple[int, ...] | None = None
    positions: tuple[str, ...] = ("last_prompt",)
    formats: tuple[str, ...] = ("direct",)
    max_new_tokens: int = 32
    batch_size: int = 16
    backend: str = "torch"
    n_boot: int = 1000
    seed: int = 0
    adaptive_gain: float | None = None
    adaptive_heads: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", check_betas(self.betas, option="SweepConfig.betas"))
        for name, allowed in (("positions", POSITIONS.names()), ("formats", FORMATS)):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, Sequence) or not value:
                raise ConfigError(f"SweepConfig.{name}: expected a non-empty tuple, found {value!r}")
            bad = [v for v in value if v not in allowed]
            if bad or len(set(value)) != len(value):
                raise ConfigError(f"SweepConfig.{name}: expected distinct values among {list(allowed)}, found {list(value)}")
            object.__setattr__(self, name, tuple(value))
        if self.layers is not None:
            if isinstance(self.layers, (str, bytes)) or not isinstance(self.layers, Sequence) or not self.layers:
                raise ConfigError(f"SweepConfig.layers: expected a non-empty tuple of layers or None, found {self.layers!r}")
            if any(isinstance(L, bool) or not isinstance(L, (int, np.integer)) for L in self.layers):
                raise ConfigError(f"SweepConfig.layers: expected integer layers, found {list(self.layers)}")
            object.__setattr__(self, "layers", tuple(int(L) for L in self.layers))
        if self.backend not in BACKENDS:
            raise ConfigError(f"SweepConfig.backend: expected one of {list(BACKENDS)}, found {self.backend!r}")
        if self.adaptive_gain is not None:
            object.__setattr__(self, "adaptive_heads", self.adaptive().heads)  # validates
        for name in ("max_new_tokens", "batch_size", "n_boot"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"SweepConfig.{name}: expected a positive integer, found {v!r}")

    def adaptive(self):
        """The :class:`~auralens.steering.apply.AdaptiveAlpha` of the sweep, or ``None`` (constant beta)."""
        if self.adaptive_gain is None:
            return None
        from auralens.steering.apply import AdaptiveAlpha  # torch at module level

        return AdaptiveAlpha(heads=self.adaptive_heads, gain=self.adaptive_gain)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["adaptive_heads"] = [list(h) for h in self.adaptive_heads]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass(frozen=True, eq=False)
class PerInput:
    """A vector applied per input: at each batch, ``s(x)`` of every item is computed and row
    ``i`` gets ``h <- h + beta * s(x_i)``.

    ``fold_real`` (default): where it is exact (:func:`auralens.steering.directions.can_fold`: one steered
    layer, a residual-stream vector read at the last prompt token — every ``steer eval`` and
    ``compare`` setting), only the silence forward is run per item
    (:func:`auralens.steering.directions.silence_rows`) and the real ``h_L`` is read from the
    generation's own prefill (:class:`auralens.steering.apply.FoldedRows`): one extra forward per batch
    instead of two, same ``s(x)``.  Otherwise (several layers, other fit positions, or
    ``fold_real=False``) the real and silence forwards both run first
    (:func:`auralens.steering.directions.per_input_directions`).

    ``random_seed`` makes it the matched control: a fixed seeded random unit direction times
    ``||s(x_i)||`` (same per-item norm, random orientation); method ``random_direction``."""

    vector: Any
    random_seed: int | None = None
    fold_real: bool = True

    @property
    def layers(self) -> tuple[int, ...]:
        return self.vector.layers

    @property
    def method(self) -> str:
        return "random_direction" if self.random_seed is not None else self.vector.method

    def check_compatible(self, arch, model_id=None) -> None:
        self.vector.check_compatible(arch, model_id)

    def folds(self, layers=None) -> bool:
        """Whether :meth:`rows` folds the real pass into the generation's prefill at ``layers``."""
        from auralens.steering.directions import can_fold

        return bool(self.fold_real) and can_fold(self.vector, layers)

    def extra_forwards(self, layers=None) -> int:
        """Extra forwards per item that ``s(x)`` adds to the generation (each runs once per batch, for
        all its rows): 1 (the silence pass) when folded, else 2 (real and silence)."""
        return 1 if self.folds(layers) else 2

    def _control(self, L: int, v):
        import torch

        g = torch.Generator().manual_seed(int(self.random_seed) * 1009 + int(L))
        r = torch.randn(v.shape[1], generator=g)
        return torch.linalg.vector_norm(v, dim=-1, keepdim=True) * (r / torch.linalg.vector_norm(r)).to(v.device)

    def rows(self, lm, chunk, layers, fmt: str, batch_size: int):
        """``per_row`` for :func:`auralens.steering.apply.apply_vector` on the batch ``chunk``: a
        :class:`auralens.steering.apply.FoldedRows` when :meth:`folds`, else ``{layer: [batch, width]}``."""
        from auralens.steering.directions import per_input_directions, silence_rows

        finish = self._control if self.random_seed is not None else None
        if self.folds(layers):
            (L,) = tuple(self.vector.layers if layers is None else layers)
            return silence_rows(lm, chunk, self.vector, layer=L, fmt=fmt, batch_size=batch_size, finish=finish)
        s = per_input_directions(lm, chunk, self.vector, layers=layers, fmt=fmt, batch_size=batch_size)
        if finish is None:
            return s
        return {L: finish(L, v) for L, v in s.items()}


def _row_id(item_id: str, vector: str, layer: int, beta: float, positions: str, fmt: str) -> str:
    return f"{item_id}|{vector}|{layer}|{float(beta)!r}|{positions}|{fmt}"


def _jobs(vectors: Mapping[str, Any], cfg: SweepConfig) -> list[tuple[str, str, int, float, str, str]]:
    """(vector name, method, layer, beta, positions, format) of every steered generation."""
    jobs = []
    for fmt in cfg.formats:
        for name, vec in vectors.items():
            layers = cfg.layers if cfg.layers is not None else vec.layers
            missing = [L for L in layers if L not in vec.layers]
            if missing:
                raise ConfigError(
                    f"layers {missing}: vector {name!r} has directions at layers {list(vec.layers)} only"
                )
            for L in layers:
                for pos in cfg.positions:
                    for b in cfg.betas:
                        if b != 0.0:
                            jobs.append((name, vec.method, int(L), b, pos, fmt))
    return jobs


def run_sweep(lm, items: Sequence[Any], vectors: Mapping[str, Any], cfg: SweepConfig, *, log=None, progress: bool = True):
    """Generate and score the baseline and every steered setting; returns the item rows
    (DataFrame with :data:`ITEM_COLUMNS`).  ``vectors``: name -> SteeringVector."""
    from auralens.steering.apply import apply_vector

    if not items:
        raise ConfigError("items: expected at least one item to evaluate, found none")
    ids = [it.item_id for it in items]
    if len(set(ids)) != len(ids):
        raise ConfigError("items: expected distinct item ids (deltas are paired by item), found duplicates")
    for name, vec in vectors.items():
        if name == BASELINE:
            raise ConfigError(f"vectors: the name {BASELINE!r} is reserved for the unsteered run")
        vec.check_compatible(lm.arch)
    jobs = _jobs(vectors, cfg)  # validates layers before anything runs
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    settings = [(BASELINE, "none", -1, 0.0, "none", fmt) for fmt in cfg.formats] + jobs

    def rows_for(setting, chunk):
        name, method, layer, beta, pos, fmt = setting
        batch = cast_features(lm, model_inputs(lm, chunk, fmt))
        if name == BASELINE:
            _, texts = generate_batch(lm, batch, gen)
        else:
            v = vectors[name]
            per_row = v.rows(lm, chunk, [layer], fmt, cfg.batch_size) if isinstance(v, PerInput) else None
            with apply_vector(lm, v.vector if isinstance(v, PerInput) else v, alpha=beta, positions=pos,
                              layers=[layer], backend=cfg.backend, adaptive=cfg.adaptive(), per_row=per_row):
                _, texts = generate_batch(lm, batch, gen)
        return [
            {
                "row_id": _row_id(it.item_id, name, layer, beta, pos, fmt), "item_id": it.item_id,
                "vector": name, "method": method, "layer": int(layer), "beta": float(beta),
                "positions": pos, "format": fmt, "category": it.category or it.tier or "", "tier": it.tier,
                "answer": it.answer, "prediction": t, **score(it, t),
            }
            for it, t in zip(chunk, texts)
        ]

    df = fill_rows(settings, items, key=lambda it, s: _row_id(it.item_id, s[0], s[2], s[3], s[4], s[5]),
                   rows_for=rows_for, batch_size=cfg.batch_size, log=log, progress=progress, desc="steering",
                   unit="gen")
    return df[[c for c in ITEM_COLUMNS if c in df.columns]]


def _with_beta_zero(df, vectors_layers: dict[str, tuple[str, list[int]]], positions: Sequence[str]):
    """Baseline rows relabelled as beta = 0 of every (vector, layer, position mode)."""
    import pandas as pd

    base = df[df["vector"] == BASELINE]
    parts = [df[df["vector"] != BASELINE]]
    for name, (method, layers) in vectors_layers.items():
        for L in layers:
            for pos in positions:
                b = base.copy()
                b["vector"], b["method"], b["layer"], b["beta"], b["positions"] = name, method, int(L), 0.0, pos
                parts.append(b)
    return pd.concat(parts, ignore_index=True)


def steering_table(item_rows, *, n_boot: int = 1000, seed: int = 0, betas: Sequence[float] | None = None):
    """The ``steering.parquet`` table (:data:`STEERING_COLUMNS` plus ``format``) from item rows."""
    df = item_rows.copy()
    df["correct"] = df["correct"].astype(float)
    base = df[df["vector"] == BASELINE]
    if base.empty:
        raise ConfigError("steering_table: expected baseline rows (vector 'baseline'), found none")
    steered = df[df["vector"] != BASELINE]
    vl = {
        name: (g["method"].iloc[0], sorted(int(x) for x in g["layer"].unique()))
        for name, g in steered.groupby("vector", sort=False)
    }
    positions = sorted(steered["positions"].unique()) if not steered.empty else []
    full = _with_beta_zero(df, vl, positions) if vl else steered
    if betas is not None:
        full = full[full["beta"].isin([float(b) for b in betas])]
    base_correct = {(r.item_id, r.format): float(r.correct) for r in base.itertuples()}
    full = full.assign(base=[base_correct.get((i, f), np.nan) for i, f in zip(full["item_id"], full["format"])])
    full = full.assign(diff=full["correct"] - full["base"])
    keys = ["vector", "method", "layer", "beta", "positions", "format"]
    out = []
    for k, g in full.groupby(keys, sort=True):
        cats = [("all", g)] + [(c, gc) for c, gc in g.groupby("category", sort=True)]
        # beta = 0 is the baseline itself: all-zero gains by construction, exactly [0, 0] (no bounds), no warning
        steered = float(k[3]) != 0.0
        for cat, gc in cats:
            correct, base_c = gc["correct"].to_numpy(np.float64), gc["base"].to_numpy(np.float64)
            acc, acc_lo, acc_hi = accuracy_ci(correct)  # the accuracy's: Wilson
            delta, lo, hi = paired_diff_ci(correct, base_c, n_boot=n_boot, seed=seed, warn=steered,  # BCa over items
                                           bounds=(-1.0, 1.0) if steered else None)
            out.append({
                **dict(zip(keys, k)), "category": str(cat),
                "accuracy": acc, "ci_low": acc_lo, "ci_high": acc_hi, "n": int(len(gc)),
                "delta": delta, "delta_ci_low": lo, "delta_ci_high": hi,
            })
    table = STEERING.frame(out)
    table["layer"] = table["layer"].astype(int)
    table["n"] = table["n"].astype(int)
    table = table.sort_values(["vector", "layer", "positions", "format", "category", "beta"]).reset_index(drop=True)
    return STEERING.check(table)


def paired_ci(a: np.ndarray, b: np.ndarray, *, n_boot: int, seed: int) -> tuple[float, float, float]:
    """Mean of the per-item differences ``a - b`` and its paired BCa bootstrap CI (items
    resampled; :func:`auralens.interp.stats.paired_diff_ci`, bounds [-1, 1])."""
    return paired_diff_ci(a, b, n_boot=n_boot, seed=seed)


def paired_stats(rows, name: str, *, n_boot: int, seed: int) -> dict[str, Any]:
    """Accuracy of ``name`` and of the baseline on the same items, and the paired gain with its
    BCa bootstrap CI over items (:func:`auralens.interp.stats.paired_diff_ci`)."""
    base = rows[rows["vector"] == BASELINE].set_index("item_id")["correct"].astype(float)
    got = rows[rows["vector"] == name].set_index("item_id")["correct"].astype(float)
    common = base.index.intersection(got.index)
    if name == BASELINE:  # the baseline against itself: the same answers by construction, gain exactly 0
        b_acc, b_lo, b_hi = accuracy_ci(base[common].to_numpy())
        return {"n": int(len(common)), "base": b_acc, "base_ci": [b_lo, b_hi], "steered": b_acc,
                "steered_ci": [b_lo, b_hi], "gain": 0.0, "ci": [0.0, 0.0]}
    b_acc, b_lo, b_hi = accuracy_ci(base[common].to_numpy())  # accuracies: Wilson; the paired gain: BCa
    s_acc, s_lo, s_hi = accuracy_ci(got[common].to_numpy())
    gain, lo, hi = paired_diff_ci(got[common].to_numpy(), base[common].to_numpy(), n_boot=n_boot, seed=seed)
    return {"n": int(len(common)), "base": b_acc, "base_ci": [b_lo, b_hi],
            "steered": s_acc, "steered_ci": [s_lo, s_hi],
            "gain": gain, "ci": [lo, hi]}


def best_gain(table, item_rows, *, main: str | None = None, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The main vector's largest gain over the baseline (category ``all``, beta != 0) and the
    controls at the same setting, with the paired difference vector − control per control.

    ``main`` is the vector name (default: the first with method ``audio_minus_silence``).
    Whatever its sign, the best gain is reported; it is selected on the evaluation items."""
    t = table[(table["category"] == "all") & (table["beta"] != 0.0)]
    if main is None:
        names = t.loc[t["method"] == MAIN_METHOD, "vector"].unique()
        if len(names) == 0:
            return {"note": "no audio_minus_silence vector in the sweep"}
        main = str(names[0])
    m = t[t["vector"] == main]
    if m.empty:
        return {"note": f"no steered rows of vector {main!r}"}
    best = m.sort_values(["delta", "beta"], ascending=[False, True]).iloc[0]
    setting = {k: best[k] for k in ("layer", "beta", "positions", "format")}
    setting = {k: (int(v) if k == "layer" else float(v) if k == "beta" else str(v)) for k, v in setting.items()}

    def sel(df, name):
        return df[(df["vector"] == name) & (df["layer"] == setting["layer"]) & (df["beta"] == setting["beta"])
                  & (df["positions"] == setting["positions"]) & (df["format"] == setting["format"])]

    res: dict[str, Any] = {
        "vector": main, **setting,
        "accuracy": float(best["accuracy"]),
        "baseline_accuracy": float(best["accuracy"] - best["delta"]),
        "delta": float(best["delta"]), "delta_ci": [float(best["delta_ci_low"]), float(best["delta_ci_high"])],
        "n": int(best["n"]),
        "selection": "best beta/layer/positions chosen on these evaluation items (optimistic)",
        "controls": {},
    }
    rows_main = sel(item_rows, main).set_index("item_id")["correct"].astype(float)
    for name in t.loc[t["vector"] != main, "vector"].unique():
        c = sel(t, name)
        if c.empty:
            continue
        c = c.iloc[0]
        rows_c = sel(item_rows, name).set_index("item_id")["correct"].astype(float)
        common = rows_main.index.intersection(rows_c.index)
        diff, lo, hi = paired_ci(rows_main[common].to_numpy(), rows_c[common].to_numpy(), n_boot=n_boot, seed=seed)
        res["controls"][str(name)] = {
            "method": str(c["method"]), "accuracy": float(c["accuracy"]),
            "delta": float(c["delta"]), "delta_ci": [float(c["delta_ci_low"]), float(c["delta_ci_high"])],
            "vector_minus_control": diff, "vector_minus_control_ci": [lo, hi],
        }
    return res


def figures(table, *, category: str = "all") -> dict[str, Any]:
    """The two figures the steer stage writes: ``accuracy`` and ``delta`` (the paired gain over
    beta = 0) vs beta for ``category``, one curve per (vector, method, layer, positions
    [, format]) with its 95% bootstrap CI band (:func:`auralens.steering.figures.steering_sweep`)."""

    return {y: steering_sweep(table, category=category, y=y) for y in ("accuracy", "delta")}
