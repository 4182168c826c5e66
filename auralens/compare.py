"""Steering vs MPAR²-style fine-tuning, on the same model family and the same items
(``auralens compare``).

Four systems answer the same ``n`` items of ``data`` (data seed ``seed``): ``base``,
``base+steering`` (the vector at its ``default_alpha`` or the given ``alpha``, through
:func:`steering.apply.apply_vector`), ``finetuned`` and ``finetuned+steering`` (by default the same vector,
fitted on the base, applied unchanged; ``vector_ft`` gives the fine-tuned model its own).  Each (system, format) is one
:func:`interp.record.stage_record` run in ``<out>/<system>/<format>/`` (generation with the
attention-yield recorder, claims, error attribution), so every number here is computed by the
same code as the perception-decay stage.

``compare.parquet`` has one row per number, columns :data:`COMPARE_COLUMNS`
(:data:`interp.schemas.COMPARE`, checked on write):

- ``system``: one of :data:`SYSTEMS` for measured rows (``source="measured"``); the model name
  for rows quoted from the papers (``source="reported"``, :data:`interp.papers.REPORTED`; never
  measured here).
- ``metric`` / ``group`` (``<format>/<what>``):

  - ``accuracy``: ``<fmt>/all``, ``<fmt>/tier=...``, and ``category=``, ``task=``,
    ``difficulty=``, ``sub_category=`` wherever they split the items differently (MMAU: task
    sound/music/speech, category, difficulty); 95% item-bootstrap CI.
  - ``gain_vs_base`` / ``gain_vs_unsteered``: accuracy difference with the paired bootstrap
    (per-item differences resampled) against ``base`` / the same model without steering.
  - ``claim_accuracy``: accuracy of the perceptual claims (``<fmt>/all`` and ``<fmt>/step=s``
    per reasoning step; value pooled over claims, CI from the item bootstrap, ``n`` claims);
    only for items with a cafe scene.
  - ``error_share``: share of the wrong answers attributed to ``perception`` / ``reasoning`` /
    ``unverifiable`` (:func:`interp.decay.attribute_errors`); only with scenes.
  - ``specialist_yield``: mean audio yield of the specialist heads per reasoning step
    (``<fmt>/step=s``, CI over items); ``yield_slope_specialists`` / ``yield_slope_all_heads``:
    least-squares slope of the mean yield over steps (:func:`interp.decay.decay_summary`,
    negative = perception decay).  The specialists are the top-k heads of the *unsteered* run of
    the same model (:func:`interp.listening.top_k` on its ``heads.parquet``), so a steered
    system is measured on the heads of its own model.
  - ``training_flops``: from the fine-tuned folder's ``finetune.json`` (``compute_flops.total``;
    0 for the base and for steering, which trains nothing); ``steering_fit_flops``: an estimate
    of fitting the vector (2 forwards per fit item × mean prompt tokens of the evaluated items ×
    2 · parameters).

Also written: ``compare.html`` (self-contained plotly, :func:`steering.figures.compare_figure`),
``summary.json`` and ``manifest.json``.
The same function runs a real checkpoint on MMAU test-mini (``data`` = the JSON, audio under
``test-mini-audios/`` beside it; MMAU's matching rule scores every answer): nothing but the
claim and error-share rows needs a cafe scene, and those are left out when no item has one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from interp.errors import ConfigError
from interp.stage_config import DATA_HELP, DTYPE_HELP, RESUME_HELP, StageConfig, option, takes_config
from interp.papers import REPORTED, reported_rows
from interp.schemas import COMPARE, SYSTEMS

__all__ = ["COMPARE_COLUMNS", "REPORTED", "SYSTEMS", "CompareConfig", "reported_rows", "stage_compare"]

COMPARE_COLUMNS: tuple[str, ...] = COMPARE.names
_DIRS = {"base": "base", "base+steering": "base_steering", "finetuned": "finetuned",
         "finetuned+steering": "finetuned_steering"}
_GROUP_KEYS = ("tier", "category", "task", "difficulty", "sub_category")
_ERROR_TYPES = ("perception", "reasoning", "unverifiable")


def _row(system, metric, group, value, lo=np.nan, hi=np.nan, n=0, note="") -> dict[str, Any]:
    return {"system": system, "metric": metric, "group": group, "value": float(value), "ci_low": float(lo),
            "ci_high": float(hi), "n": int(n), "source": "measured", "note": note}


def _mean_ci(values, *, n_boot: int, seed: int) -> tuple[float, float, float]:
    from interp.stats import bootstrap_mean_ci

    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return np.nan, np.nan, np.nan
    m, lo, hi = bootstrap_mean_ci(v, n_boot=n_boot, seed=seed)
    return float(m), float(lo), float(hi)


def _groupings(df) -> list[str]:
    """The grouping columns that split the items, skipping one that repeats an earlier split."""
    keys, seen = [], []
    for k in _GROUP_KEYS:
        if k not in df or df[k].fillna("").astype(str).eq("").all():
            continue
        part = tuple(df[k].fillna("").astype(str).factorize()[0])
        if part in seen or df[k].nunique() < 2 and k != "tier":
            continue
        seen.append(part)
        keys.append(k)
    return keys


def _accuracy_rows(system, fmt, df, *, n_boot, seed) -> list[dict]:
    rows = []
    m, lo, hi = _mean_ci(df["correct"], n_boot=n_boot, seed=seed)
    rows.append(_row(system, "accuracy", f"{fmt}/all", m, lo, hi, len(df)))
    for key in _groupings(df):
        for val, g in df.groupby(df[key].fillna("").astype(str), sort=True):
            m, lo, hi = _mean_ci(g["correct"], n_boot=n_boot, seed=seed)
            rows.append(_row(system, "accuracy", f"{fmt}/{key}={val}", m, lo, hi, len(g)))
    return rows


def _gain_row(system, metric, fmt, df, ref, ref_name, *, n_boot, seed) -> dict:
    a = df.set_index("item_id")["correct"].astype(float)
    b = ref.set_index("item_id")["correct"].astype(float)
    common = a.index.intersection(b.index)
    d = (a[common] - b[common]).to_numpy()
    m, lo, hi = _mean_ci(d, n_boot=n_boot, seed=seed)
    return _row(system, metric, f"{fmt}/all", m, lo, hi, len(d), note=f"paired bootstrap over items vs {ref_name}")


def _claim_rows(system, fmt, run, *, n_boot, seed) -> list[dict]:
    claims = run.read_table("claims.parquet")
    if not len(claims):
        return []
    per_item = claims.groupby("item_id")["claim_correct"].mean().to_numpy(float)
    _, lo, hi = _mean_ci(per_item, n_boot=n_boot, seed=seed)
    rows = [_row(system, "claim_accuracy", f"{fmt}/all", claims["claim_correct"].mean(), lo, hi, len(claims),
                 note="perceptual claims checked against the scene; value pooled over claims, CI over items")]
    for r in run.read_table("claim_accuracy.parquet").itertuples():
        rows.append(_row(system, "claim_accuracy", f"{fmt}/step={int(r.step)}", r.accuracy, r.ci_low, r.ci_high,
                         r.n_claims, note="claims made at this reasoning step"))
    return rows


def _error_rows(system, fmt, df, *, n_boot, seed) -> list[dict]:
    wrong = df[~df["correct"].astype(bool)]
    rows = []
    for et in _ERROR_TYPES:
        ind = (wrong["error_type"] == et).to_numpy(float)
        m, lo, hi = _mean_ci(ind, n_boot=n_boot, seed=seed) if len(ind) else (np.nan,) * 3
        rows.append(_row(system, "error_share", f"{fmt}/{et}", m, lo, hi, len(wrong),
                         note="share of the wrong answers (interp.decay.attribute_errors)"))
    return rows


def _decay_rows(system, fmt, run, df, top, *, n_boot, seed) -> list[dict]:
    from interp.decay import decay_summary, decay_table
    from interp.record import load_yields

    ys, ss, _, _ = load_yields(run, df)
    table = decay_table(ys, ss, top_heads=top, n_boot=n_boot, seed=seed, per_head=False)
    summ = decay_summary(table)
    heads = ", ".join(f"{L}:{h}" for L, h in top)
    rows = []
    for r in table[(table.group == "topk") & (table.axis == "step")].sort_values("step").itertuples():
        rows.append(_row(system, "specialist_yield", f"{fmt}/step={int(r.step)}", r.mean_yield, r.ci_low, r.ci_high,
                         r.n, note=f"mean audio yield of heads {heads}"))
    for group, metric in (("topk", "yield_slope_specialists"), ("all", "yield_slope_all_heads")):
        s = summ[summ.group == group]
        if len(s):
            rows.append(_row(system, metric, f"{fmt}/all", s.slope.iloc[0], n=int(s.n_steps.iloc[0]),
                             note=f"least-squares slope of mean yield per reasoning step"
                                  f"{' (heads ' + heads + ')' if group == 'topk' else ''}; < 0 = perception decay"))
    return rows


def _finetune_flops(lm) -> tuple[float, str]:
    p = Path(lm.source) / "finetune.json"
    if not p.exists():
        return np.nan, f"no finetune.json in {lm.source} (not fine-tuned by finetuning.recipe): training compute unknown"
    info = json.loads(p.read_text())
    total = info.get("compute_flops", {}).get("total")
    if total is None:
        return np.nan, f"{p} records no compute_flops"
    return float(total), f"from {p.name}: 6·N·tokens (SFT, GRPO updates) + 2·N·tokens (sampling, reference)"


def _fit_flops(vec, lm, items, fmt) -> tuple[float, str]:
    from interp.generation import model_inputs

    fit = (vec.extra or {}).get("fit") if vec is not None else None
    if not isinstance(fit, dict) or not isinstance(fit.get("n"), int):
        return np.nan, "the vector does not record its fit data (extra['fit']): fit cost unknown"
    sample = list(items[: min(len(items), 8)])
    batch = model_inputs(lm, sample, fit.get("format", fmt))
    mean_tokens = float(batch["attention_mask"].sum()) / len(sample)
    n_params = sum(p.numel() for p in lm.model.parameters())
    flops = 2.0 * n_params * 2 * fit["n"] * mean_tokens
    return flops, (f"estimate: {fit['n']} fit items × 2 forwards (audio, silence) × {mean_tokens:.0f} mean prompt "
                   f"tokens × 2·N; no training")


def _vector_digest(vec) -> str:
    return hashlib.sha256(vec.stacked().float().cpu().numpy().tobytes()).hexdigest()


@dataclass(frozen=True, kw_only=True)
class CompareConfig(StageConfig):
    """``auralens compare``: base, base + steering, fine-tuned, fine-tuned + steering."""

    COMMAND = "auralens compare"

    base: str = option("micro", help="The base model ('micro', an HF id or a folder).")
    finetuned: str = option("micro-mpar2", help="The fine-tuned model ('micro-mpar2', an HF id or a folder).")
    vector: Any = option(identity=False, cli_type=Path,
                         help="Steering vector file fitted on --base (None: the steered systems are skipped).")
    data: str = option("cafe", short="-d", help=DATA_HELP)
    n: int = option(90, help="Number of items (>= 1).")
    alpha: float | None = option(None, help="Default: the vector's default alpha.")
    formats: tuple[str, ...] = option(("structured",), flag="--format", parse="one",
                                      help="Answer format: direct | cot | structured.")
    out: Path = option(Path("runs/compare"), identity=False, help="Run folder.")
    resume: bool = option(False, identity=False,
                          help=RESUME_HELP)
    seed: int = option(7, help="Data seed (cafe items, bootstrap and controls).")
    dtype: str = option("auto", help=DTYPE_HELP)
    positions: str = option("last_prompt", help="Where the steering applies: last_prompt | generated | both.")
    batch_size: int = option(16, identity=False, help="Items per generation batch (>= 1).")
    max_new_tokens: int = option(128, help="Generated tokens per answer (>= 1).")
    top_k: int = option(8, help="Specialist (listening) heads measured per model.")
    n_boot: int = option(1000, identity=False, help="Bootstrap resamples of the confidence intervals (>= 1).")
    vector_ft: Any = option(None, identity=False, cli=False,
                            help="The fine-tuned model's own vector (default: --vector, applied unchanged).")

    def __post_init__(self) -> None:
        from interp.runs import check_dtype, check_formats, check_int, check_n

        self._set("formats", check_formats(self.formats))
        check_n(self.n)
        for name in ("batch_size", "max_new_tokens", "top_k", "n_boot"):
            check_int(name, getattr(self, name))
        check_dtype(self.dtype)
        alpha = self.alpha
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not np.isfinite(alpha)):
            raise ConfigError(f"alpha: expected a finite number or None, found {alpha!r}")
        try:
            from steering.apply import POSITION_MODES
        except ImportError:  # the steering package is optional for this stage
            POSITION_MODES = (self.positions,)
        if self.positions not in POSITION_MODES:
            raise ConfigError(f"positions: expected one of {list(POSITION_MODES)}, found {self.positions!r}")
        self._set("out", Path(self.out))

    def manifest(self, **config: Any) -> dict[str, Any]:
        return {**super().manifest(**config), "model": f"{self.base} vs {self.finetuned}"}


@takes_config(CompareConfig)
def stage_compare(cfg: CompareConfig, *, lm_base=None, lm_ft=None, quiet: bool = False) -> dict[str, Any]:
    """Base, base + steering, fine-tuned, fine-tuned + steering on the same items; writes the run
    folder ``out`` (see the module docstring) and returns its summary.

    ``vector``: a vector file or a :class:`~steering.vector.SteeringVector` (``None``: the
    steered systems are skipped, with a note); ``vector_ft``: a vector for the fine-tuned model
    (default: ``vector``, applied unchanged).  ``alpha``: default each vector's
    ``default_alpha``.  ``lm_base`` / ``lm_ft``: already loaded models (else loaded from
    ``base`` / ``finetuned``; the same spec loads once).

    Returns (also ``summary.json``; missing values are ``None``)::

        {"systems": {system: {fmt: {"accuracy": {"value", "ci": [low, high], "n"},
                                    "accuracy_by_tier": {tier: value},
                                    "claim_accuracy", "gain_vs_base", "gain_vs_unsteered",
                                    "yield_slope_specialists": {"value", "ci", "n"} or None,
                                    "error_shares": {"perception", "reasoning", "unverifiable"}},
                              "training_flops": float or None}},
         "run", "base", "finetuned", "data", "n", "alpha", "notes": [str]}
    """
    import pandas as pd

    from interp.listening import top_k as pick_top
    from interp.loading import load_model
    from interp.record import stage_record
    from interp.runs import RunFolder, check_model, load_items, run_identity
    from steering.figures import compare_figure

    # 1. validate: options (CompareConfig), vectors, items and every audio header (nothing written yet)
    base, finetuned, vector, vector_ft, data, n, out, resume, formats, alpha, seed = (
        cfg.base, cfg.finetuned, cfg.vector, cfg.vector_ft, cfg.data, cfg.n, cfg.out, cfg.resume, cfg.formats,
        cfg.alpha, cfg.seed)
    positions, batch_size, max_new_tokens, top_k, n_boot, dtype = (
        cfg.positions, cfg.batch_size, cfg.max_new_tokens, cfg.top_k, cfg.n_boot, cfg.dtype)
    notes: list[str] = []
    vec = vec_ft = None
    apply_vector = None
    if vector is None:
        notes.append("no steering vector given: the steered systems were skipped")
    else:
        try:
            from steering.apply import apply_vector
            from steering.formats import load_vector
            from steering.vector import SteeringVector
        except ImportError as exc:  # the steering package is optional for this stage
            notes.append(f"steering is unavailable ({exc}): the steered systems were skipped")
        else:
            vec = vector if isinstance(vector, SteeringVector) else load_vector(vector)
            vec_ft = vec if vector_ft is None else (
                vector_ft if isinstance(vector_ft, SteeringVector) else load_vector(vector_ft))
    alpha_ft = None
    if vec is not None:
        alpha_ft = float(alpha if alpha is not None else vec_ft.default_alpha)
        alpha = float(alpha if alpha is not None else vec.default_alpha)
    systems = [s for s in SYSTEMS if vec is not None or "steering" not in s]

    items = load_items(data, n=n, seed=seed)
    manifest = {**cfg.manifest(alpha=alpha, alpha_ft=alpha_ft,
                               vector_sha256=_vector_digest(vec) if vec is not None else None,
                               vector_source=str(vector) if vec is not None and vector is not vec else None,
                               vector_ft_sha256=_vector_digest(vec_ft) if vec is not None and vec_ft is not vec else None),
                **run_identity(items)}
    # 2. the folder would accept this run (read-only); 3. the models
    RunFolder.check(out, manifest=manifest, resume=resume)
    if lm_base is None:
        check_model(base)
    if lm_ft is None and finetuned != base:
        check_model(finetuned)
    lm_base = lm_base or load_model(base, dtype=dtype)
    if lm_ft is None:
        lm_ft = lm_base if finetuned == base else load_model(finetuned, dtype=dtype)
    if vec is not None:
        vec.check_compatible(lm_base.arch)
        vec_ft.check_compatible(lm_ft.arch)
        notes.append(f"steering: vector {vec.method} fitted on {vec.model_id!r}, layers {list(vec.layers)}, "
                     f"alpha {alpha}, positions {positions}"
                     + ("; applied unchanged to both models" if vec_ft is vec else
                        f"; the fine-tuned model's own vector fitted on {vec_ft.model_id!r}, layers "
                        f"{list(vec_ft.layers)}, alpha {alpha_ft}"))
    # 4. the folder, then the rows (one record run per system and format)
    run = RunFolder.create(out, manifest=manifest, resume=resume)
    has_scene = any(it.scene for it in items)
    if not has_scene:
        notes.append("no item has a cafe scene: claim accuracy and error attribution rows are left out")
    meta = pd.DataFrame([{"item_id": it.item_id, "task": it.task, "difficulty": it.difficulty} for it in items])

    rows: list[dict] = []
    frames: dict[tuple[str, str], Any] = {}
    for system in systems:
        on_base = system.startswith("base")
        lm = lm_base if on_base else lm_ft
        v, a = (vec, alpha) if on_base else (vec_ft, alpha_ft)
        steered = system.endswith("+steering")
        label = f"{base if on_base else finetuned}{f' + steering(alpha={a})' if steered else ''}"
        for fmt in formats:
            sub = run.file(f"{_DIRS[system]}/{fmt}")
            ctx = apply_vector(lm, v, alpha=a, positions=positions) if steered else contextlib.nullcontext()
            with ctx:
                stage_record(model=label, data=data, n=n, fmt=fmt, out=sub, resume=resume, lm=lm, quiet=quiet,
                             seed=seed, batch_size=batch_size, max_new_tokens=max_new_tokens, top_k=top_k,
                             n_boot=n_boot)
            srun = RunFolder.open(sub)
            df = srun.read_table("items.parquet").sort_values("item_index").reset_index(drop=True)
            df = df.merge(meta, on="item_id", how="left")
            frames[(system, fmt)] = (srun, df)
            rows += _accuracy_rows(system, fmt, df, n_boot=n_boot, seed=seed)
            if has_scene:
                rows += _claim_rows(system, fmt, srun, n_boot=n_boot, seed=seed)
                rows += _error_rows(system, fmt, df, n_boot=n_boot, seed=seed)

    # paired gains, and the specialists' yield (heads of the unsteered run of the same model)
    for system in systems:
        for fmt in formats:
            srun, df = frames[(system, fmt)]
            if system != "base":
                rows.append(_gain_row(system, "gain_vs_base", fmt, df, frames[("base", fmt)][1], "base",
                                      n_boot=n_boot, seed=seed))
            if system.endswith("+steering"):
                plain = system.removesuffix("+steering")
                rows.append(_gain_row(system, "gain_vs_unsteered", fmt, df, frames[(plain, fmt)][1], plain,
                                      n_boot=n_boot, seed=seed))
            plain_run = frames[(system.removesuffix("+steering"), fmt)][0]
            heads = plain_run.read_table("heads.parquet")
            top = pick_top(heads, min(top_k, len(heads)))
            rows += _decay_rows(system, fmt, srun, df, top, n_boot=n_boot, seed=seed)

    # cost
    ft_flops, ft_note = _finetune_flops(lm_ft)
    fits = {}
    if vec is not None:
        fits["base+steering"] = _fit_flops(vec, lm_base, items, formats[0])
        fits["finetuned+steering"] = _fit_flops(vec_ft, lm_ft, items, formats[0])
    for system in systems:
        if system.startswith("base"):
            rows.append(_row(system, "training_flops", "all", 0.0, note="no training (the base model's own training not counted)"))
        else:
            rows.append(_row(system, "training_flops", "all", ft_flops, note=ft_note))
        if system.endswith("+steering"):
            rows.append(_row(system, "steering_fit_flops", "all", fits[system][0], note=fits[system][1]))

    table = pd.concat([COMPARE.frame(rows), reported_rows()], ignore_index=True)
    COMPARE.write(run, table)
    run.write_figure("compare.html", compare_figure(table))
    summary = _summary(table, systems, formats)
    summary.update({"run": str(out), "base": base, "finetuned": finetuned, "data": data, "n": len(items),
                    "alpha": alpha, "alpha_ft": alpha_ft, "notes": notes})
    summary = _finite(summary)
    run.write_json("summary.json", summary)
    run.mark_stage("compare", systems=list(systems), formats=list(formats))
    run.finish()
    return summary


def _summary(table, systems, formats) -> dict[str, Any]:
    m = table[table.source == "measured"]

    def get(system, metric, group):
        r = m[(m.system == system) & (m.metric == metric) & (m.group == group)]
        if not len(r):
            return None
        r = r.iloc[0]
        return {"value": round(float(r.value), 4), "ci": [round(float(r.ci_low), 4), round(float(r.ci_high), 4)],
                "n": int(r.n)}

    out: dict[str, Any] = {"systems": {}}
    for s in systems:
        per = {}
        for fmt in formats:
            tiers = m[(m.system == s) & (m.metric == "accuracy") & m.group.str.startswith(f"{fmt}/tier=")]
            per[fmt] = {
                "accuracy": get(s, "accuracy", f"{fmt}/all"),
                "accuracy_by_tier": {g.split("=", 1)[1]: round(float(v), 4) for g, v in zip(tiers.group, tiers.value)},
                "claim_accuracy": get(s, "claim_accuracy", f"{fmt}/all"),
                "gain_vs_base": get(s, "gain_vs_base", f"{fmt}/all"),
                "gain_vs_unsteered": get(s, "gain_vs_unsteered", f"{fmt}/all"),
                "yield_slope_specialists": get(s, "yield_slope_specialists", f"{fmt}/all"),
                "error_shares": {et: (get(s, "error_share", f"{fmt}/{et}") or {}).get("value") for et in _ERROR_TYPES},
            }
        flops = get(s, "training_flops", "all")
        per["training_flops"] = None if flops is None or np.isnan(flops["value"]) else flops["value"]
        out["systems"][s] = per
    return out


def _finite(obj):
    """NaN -> None, recursively (summary.json is strict JSON)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
