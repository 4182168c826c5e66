"""Steering against fine-tuning where there is something to repair (``auralens compare``).

**The grid.**  For each base model of ``base`` (comma-separated: ``micro,micro-prior,micro-decay``,
or one real checkpoint), five systems answer the *same* items of every condition of ``data``
(default the held-out test splits ``cafe-neutral:test, cafe-congruent:test, cafe-conflict:test``):

- ``base`` — the model as it is, in ``base_format`` (``auto``: the format it was trained on,
  read from its ``training.json``; ``structured`` when it has none);
- ``base+steering`` — the paper's protocol (:func:`auralens.steering.pipeline.stage_steer_eval`,
  ``dev_test``): an audio-minus-silence vector fitted on the steering data's calibration split,
  mode (fixed ``v`` or per-input ``s(x)``), layer, β and positions chosen on its dev split, then
  applied unchanged here (``steer``: ``auto`` runs fit and selection inside this run folder, a
  path reuses a ``steer eval`` run, ``none`` skips the steered systems);
- ``mpar2`` — the MPAR²-style fine-tune (:mod:`finetuning`; ``auto``: ``<base>-mpar2``), in
  ``ft_format``; ``mpar2+steering`` — with its own fitted and dev-chosen vector
  (``steer_mpar2="auto"``; ``"same"`` applies the base's setting unchanged);
- ``hyper`` — the HyPeR-style fine-tune (:mod:`auralens.finetuning.hyper`; ``auto``: ``<base>-hyper``),
  which generates with its PAUSE rule (``pause.json``).

Every (system, condition) is one :func:`auralens.interp.record.stage_record` run, so every number comes
from the same code as the perception-decay stage; the specialist heads of each model are ranked
once on the calibration split of the first condition (never on the reported items).

``compare.parquet`` (:data:`auralens.interp.schemas.COMPARE`): one row per number, with ``organism`` (the
base model), ``system``, ``condition`` (the dataset), ``format``, ``metric`` and ``group``:

- ``accuracy`` (``all``, ``tier=...`` and the other groupings that split the items; item-bootstrap
  CI); ``gain_vs_base`` (paired bootstrap over items against ``base`` on the same condition);
  ``gain_vs_unsteered`` (a steered system against its own model);
- ``claim_accuracy`` (``all`` and ``step=s``), ``claim_onset`` (the step after the largest fall of
  class-claim accuracy, :func:`auralens.organisms.onset`; -1 when fewer than two steps have
  ``min_claims`` claims) and ``claim_gap`` (class-claim accuracy before the onset − from it on,
  paired by item, CI); ``error_share`` (``perception`` / ``reasoning`` / ``unverifiable``, shares
  *of the wrong answers*); ``specialist_yield`` by step and ``yield_slope_specialists`` /
  ``yield_slope_all_heads``;
- cost: ``generated_tokens`` (per item, CI), ``pauses_per_item`` (HyPeR's PAUSE tokens, part of
  the generated tokens), ``forwards_per_item`` (one per generated token, +1 for per-input steering:
  the silence pass of ``s(x)``, whose real pass is folded into the prefill; +2 where it cannot be
  folded); ``training_flops`` / ``training_minutes`` (from
  the fine-tune's ``finetune.json``; 0 for base and steering) and ``steering_fit_flops``
  (condition and format empty).

The papers' numbers are added as ``source="reported"`` rows (:mod:`auralens.interp.papers`: other models,
other benchmarks — never on an axis with these).  Also written: ``compare.html``,
``summary.json``, ``manifest.json``; per organism its steering runs (``<organism>/steer/``) and
record runs (``<organism>/<system>/<condition>/``).

**Real checkpoints** (one GPU; see the README): ``--base Qwen/Qwen2-Audio-7B-Instruct --mpar2
<MPAR²-tuned folder> --hyper none --data mmau-test-mini.json:test`` or R1-AQA as ``--mpar2``
(it is Qwen2-Audio after GRPO): the same code path; MMAU has no scenes, so the claim and
error-share rows are left out.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from auralens.interp.dataspec import DataSpec
from auralens.interp.errors import ConfigError
from auralens.interp.papers import REPORTED, reported_rows
from auralens.interp.schemas import COMPARE, SYSTEMS
from auralens.interp.stage_config import DTYPE_HELP, RESUME_HELP, StageConfig, option, takes_config

__all__ = ["COMPARE_COLUMNS", "REPORTED", "SYSTEMS", "CompareConfig", "reported_rows", "stage_compare"]

COMPARE_COLUMNS: tuple[str, ...] = COMPARE.names
_DIRS = {"base": "base", "base+steering": "base_steering", "mpar2": "mpar2", "mpar2+steering": "mpar2_steering",
         "hyper": "hyper"}
_GROUP_KEYS = ("tier", "category", "task", "difficulty", "sub_category")
_ERROR_TYPES = ("perception", "reasoning", "unverifiable")
DEFAULT_DATA = "cafe-neutral:test,cafe-congruent:test,cafe-conflict:test"


# --------------------------------------------------------------------------------- rows
class _Rows(list):
    """Rows of one (organism, system, condition, format) cell."""

    def __init__(self, organism: str, system: str, condition: str, fmt: str):
        super().__init__()
        self.key = {"organism": organism, "system": system, "condition": condition, "format": fmt}

    def add(self, metric, group, value, lo=np.nan, hi=np.nan, n=0, note="") -> None:
        self.append({**self.key, "metric": metric, "group": group, "value": float(value), "ci_low": float(lo),
                     "ci_high": float(hi), "n": int(n), "source": "measured", "note": note})


def _mean_ci(values, *, n_boot: int, seed: int) -> tuple[float, float, float]:
    from auralens.interp.stats import bootstrap_mean_ci

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


def _accuracy(rows: _Rows, df, *, n_boot, seed) -> None:
    m, lo, hi = _mean_ci(df["correct"], n_boot=n_boot, seed=seed)
    rows.add("accuracy", "all", m, lo, hi, len(df))
    for key in _groupings(df):
        for val, g in df.groupby(df[key].fillna("").astype(str), sort=True):
            m, lo, hi = _mean_ci(g["correct"], n_boot=n_boot, seed=seed)
            rows.add("accuracy", f"{key}={val}", m, lo, hi, len(g))


def _gain(rows: _Rows, metric, df, ref, ref_name, *, n_boot, seed) -> None:
    a = df.set_index("item_id")["correct"].astype(float)
    b = ref.set_index("item_id")["correct"].astype(float)
    common = a.index.intersection(b.index)
    m, lo, hi = _mean_ci((a[common] - b[common]).to_numpy(), n_boot=n_boot, seed=seed)
    rows.add(metric, "all", m, lo, hi, len(common), note=f"paired bootstrap over items vs {ref_name}")


def _claims(rows: _Rows, run, *, n_boot, seed, min_claims: int) -> None:
    from auralens.organisms import claim_gap_by_item, class_claim_steps, onset

    claims = run.read_table("claims.parquet")
    if not len(claims):
        return
    per_item = claims.groupby("item_id")["claim_correct"].mean().to_numpy(float)
    _, lo, hi = _mean_ci(per_item, n_boot=n_boot, seed=seed)
    rows.add("claim_accuracy", "all", claims["claim_correct"].mean(), lo, hi, len(claims),
             note="perceptual claims checked against the scene; value pooled over claims, CI over items")
    for r in run.read_table("claim_accuracy.parquet").itertuples():
        rows.add("claim_accuracy", f"step={int(r.step)}", r.accuracy, r.ci_low, r.ci_high, r.n_claims,
                 note="claims made at this reasoning step")
    # onset and gap on class claims (auralens.organisms: the same measurement as the validator's)
    cls, acc = class_claim_steps(claims, min_claims)
    if len(acc) < 2:
        rows.add("claim_onset", "all", -1, n=len(cls),
                 note=f"fewer than two steps with {min_claims} class claims: no onset")
        return
    k = int(acc["step"].iloc[onset(acc["mean"].tolist())])
    rows.add("claim_onset", "all", k, n=len(cls), note="step after the largest fall of class-claim accuracy by step")
    diffs = claim_gap_by_item(cls, k)
    m, lo, hi = _mean_ci(diffs.to_numpy(float), n_boot=n_boot, seed=seed)
    rows.add("claim_gap", "all", m, lo, hi, len(diffs),
             note=f"class-claim accuracy before step {k} - from it on, paired by item")


def _errors(rows: _Rows, df, *, n_boot, seed) -> None:
    wrong = df[~df["correct"].astype(bool)]
    for et in _ERROR_TYPES:
        ind = (wrong["error_type"] == et).to_numpy(float)
        m, lo, hi = _mean_ci(ind, n_boot=n_boot, seed=seed) if len(ind) else (np.nan,) * 3
        rows.add("error_share", et, m, lo, hi, len(wrong), note="share of the wrong answers (auralens.interp.decay.attribute_errors)")


def _decay(rows: _Rows, run, df, top, *, n_boot, seed) -> None:
    from auralens.interp.decay import decay_summary, decay_table
    from auralens.interp.record import load_yields

    ys, ss, _, _ = load_yields(run, df)
    table = decay_table(ys, ss, top_heads=top, n_boot=n_boot, seed=seed, per_head=False)
    summ = decay_summary(table)
    heads = ", ".join(f"{L}:{h}" for L, h in top)
    for r in table[(table.group == "topk") & (table.axis == "step")].sort_values("step").itertuples():
        rows.add("specialist_yield", f"step={int(r.step)}", r.mean_yield, r.ci_low, r.ci_high, r.n,
                 note=f"mean audio yield of heads {heads} (ranked on calibration items)")
    for group, metric in (("topk", "yield_slope_specialists"), ("all", "yield_slope_all_heads")):
        s = summ[summ.group == group]
        if len(s):
            rows.add(metric, "all", s.slope.iloc[0], n=int(s.n_steps.iloc[0]),
                     note="least-squares slope of mean yield per reasoning step; < 0 = perception decay")


def _inference_cost(rows: _Rows, run, df, pause_id: int | None, extra_forwards: int, *, n_boot, seed) -> None:
    toks = df["n_tokens"].to_numpy(float)
    m, lo, hi = _mean_ci(toks, n_boot=n_boot, seed=seed)
    rows.add("generated_tokens", "all", m, lo, hi, len(df), note="generated tokens per item (end-of-turn included)")
    pauses = np.zeros(len(df))
    if pause_id is not None:
        for i, idx in enumerate(df["item_index"]):
            ids = run.read_tensors(f"yields/{int(idx):05d}.safetensors", framework="np")["token_ids"]
            pauses[i] = float((ids == pause_id).sum())
    rows.add("pauses_per_item", "all", pauses.mean(), n=len(df), note="PAUSE tokens per answer (HyPeR's rule)")
    rows.add("forwards_per_item", "all", toks.mean() + extra_forwards, n=len(df),
             note="one forward per generated token" + (
                 "" if not extra_forwards else ", +1 for s(x) (its silence pass; the real pass is the generation's prefill)"
                 if extra_forwards == 1 else f", +{extra_forwards} for s(x) (real and silence passes)"))


# ------------------------------------------------------------------------------ models
def _embedded_arm(base: str, recipe: str) -> str | None:
    from auralens.interp.micro.organisms import available

    name = f"{base}-{recipe}"
    return name if available(name) else None


def _native_format(lm) -> str:
    """The format a micro model was trained on (its training.json format weights), else structured."""
    p = Path(lm.source) / "training.json"
    if p.is_file():
        w = (json.loads(p.read_text()).get("train_config") or {}).get("format_weights")
        from auralens.interp.cafe.formats import FORMATS  # the order of TrainConfig.format_weights

        if isinstance(w, list) and len(w) == len(FORMATS):
            return FORMATS[int(np.argmax(w))]
    return "structured"


def _finetune_cost(lm) -> tuple[float, float, str]:
    p = Path(lm.source) / "finetune.json"
    if not p.exists():
        return np.nan, np.nan, f"no finetune.json in {lm.source}: training compute unknown"
    info = json.loads(p.read_text())
    total = (info.get("compute_flops") or {}).get("total")
    return (float(total) if total is not None else np.nan, float(info.get("minutes", np.nan)),
            f"from {p.name}: 6·N·tokens (SFT, GRPO updates) + 2·N·tokens (sampling, reference); "
            f"{info.get('timing', {}).get('threads', '?')} CPU threads")


def _fit_flops(vec, lm, items, fmt) -> tuple[float, str]:
    from auralens.interp.generation import model_inputs

    fit = (vec.extra or {}).get("fit") if vec is not None else None
    if not isinstance(fit, dict) or not isinstance(fit.get("n"), int):
        return np.nan, "the vector does not record its fit data (extra['fit']): fit cost unknown"
    sample = list(items[: min(len(items), 8)])
    batch = model_inputs(lm, sample, fit.get("format", fmt))
    mean_tokens = float(batch["attention_mask"].sum()) / len(sample)
    n_params = sum(p.numel() for p in lm.model.parameters())
    return (2.0 * n_params * 2 * fit["n"] * mean_tokens,
            f"estimate: {fit['n']} fit items × 2 forwards (audio, silence) × {mean_tokens:.0f} mean prompt tokens × 2·N")


def _digest(vec) -> str:
    return hashlib.sha256(vec.stacked().float().cpu().numpy().tobytes()).hexdigest()


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
_MODEL_JSON = ("config.json", "pause.json", "finetune.json", "training.json", "generation_config.json")


def _weights_identity(model: str) -> str | None:
    """sha256 of a local model folder's weight files and the JSON files that change what it
    generates (``pause.json``) or report (``finetune.json``), so a resume refuses a model retrained
    or replaced under the same name; ``None`` for a hub id (no local folder to read)."""
    from auralens.interp.loading import resolve_source

    folder = Path(resolve_source(model))
    if not folder.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if not f.is_file() or not (f.name in _MODEL_JSON or f.name.endswith(_WEIGHT_SUFFIXES)):
            continue
        h.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------- steering
@dataclass(frozen=True)
class _Steer:
    """A chosen steering setting: the vector, mode, layer, beta, positions (from a steer eval run)."""

    vec: Any
    mode: str
    layer: int
    beta: float
    positions: str
    fmt: str
    source: str

    def around(self, batch_size: int, fmt: str):
        """``around_batch`` for :func:`auralens.interp.record.stage_record`: steer each generated batch
        (per-input ``s(x)`` read from the prompts in ``fmt``, the format being recorded)."""
        from auralens.steering.apply import apply_vector

        def ctx(lm, items):
            per_row = None
            if self.mode == "per_input":
                from auralens.steering.evaluate import PerInput

                per_row = PerInput(self.vec).rows(lm, list(items), [self.layer], fmt, batch_size)
            return apply_vector(lm, self.vec, alpha=self.beta, positions=self.positions, layers=[self.layer],
                                per_row=per_row)

        return ctx

    @property
    def extra_forwards(self) -> int:
        if self.mode != "per_input":
            return 0
        from auralens.steering.evaluate import PerInput

        return PerInput(self.vec).extra_forwards([self.layer])  # 1 (silence) where the real pass is folded

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "mode": self.mode, "layer": self.layer, "beta": self.beta,
                "positions": self.positions, "chosen_in_format": self.fmt, "vector_sha256": _digest(self.vec),
                "method": self.vec.method, "fitted_on": self.vec.model_id}


def read_steer_run(path) -> _Steer:
    """The setting a ``steer eval`` (dev_test) run chose on dev (``vectors/selected.safetensors``)."""
    from auralens.steering.formats import load_vector

    f = Path(path) / "vectors" / "selected.safetensors"
    if not f.is_file():
        raise ConfigError(f"steer run {str(path)!r}: expected a `auralens steer eval` dev_test run folder with "
                          f"vectors/selected.safetensors, found {'no such folder' if not Path(path).exists() else 'none'}")
    vec = load_vector(f)
    s = (vec.extra or {}).get("steer")
    if not isinstance(s, dict) or s.get("chosen_on") != "dev":
        raise ConfigError(f"steer run {str(path)!r}: expected a setting chosen on dev (extra['steer']), found {s!r}")
    return _Steer(vec=vec, mode=str(s["mode"]), layer=int(s["layers"][0]), beta=float(s["beta"]),
                  positions=str(s["positions"]), fmt=str(s.get("format", "")), source=str(path))


def _select_steering(lm, model: str, fmt: str, folder: Path, cfg: "CompareConfig", quiet: bool) -> _Steer:
    """The paper's protocol for one model: fit on the steering data's calibration split, choose
    mode / layer / beta / positions on its dev split (:func:`auralens.steering.pipeline.stage_steer_eval`)."""
    from auralens.steering.pipeline import stage_steer_eval, stage_steer_fit

    folder.mkdir(parents=True, exist_ok=True)
    vec_path = folder / "vector.safetensors"
    if not vec_path.exists():
        stage_steer_fit(model=model, data=cfg.steer_data, n=cfg.n_cal, out_vector=vec_path, seed=cfg.seed, fmt=fmt,
                        lm=lm)
    stage_steer_eval(model=model, data=cfg.steer_data, vector=vec_path, n=cfg.n_dev, out=folder / "eval",
                     formats=(fmt,), alphas=cfg.betas, controls=False, seed=cfg.seed, resume=cfg.resume,
                     max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, n_boot=cfg.n_boot, lm=lm,
                     quiet=quiet)
    return read_steer_run(folder / "eval")


# ------------------------------------------------------------------------------- config
def _split_list(value, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
    out = tuple(str(v) for v in value if str(v).strip())
    if not out or len(set(out)) != len(out):
        raise ConfigError(f"{name}: expected a comma-separated list of distinct values, found {value!r}")
    return out


@dataclass(frozen=True, kw_only=True)
class CompareConfig(StageConfig):
    """``auralens compare``: base, base + steering, MPAR²-style, MPAR² + steering, HyPeR-style."""

    COMMAND = "auralens compare"

    base: str = option("micro,micro-prior,micro-decay",
                       help="Comma-separated base models ('micro', an organism, an HF id or a folder): one grid row each.")
    mpar2: str = option("auto", help="MPAR²-style fine-tune: auto (<base>-mpar2, embedded) | none | a model (one base only).")
    hyper: str = option("auto", help="HyPeR-style fine-tune: auto (<base>-hyper, embedded) | none | a model (one base only).")
    steer: str = option("auto", help="base+steering: auto (fit on --steer-data's calibration split, choose on its dev "
                                     "split, in this run folder) | none | a `steer eval` dev_test run folder (one base only).")
    steer_mpar2: str = option("auto", help="mpar2+steering: auto (its own fit and dev choice) | same (the base's "
                                           "setting unchanged) | none | a steer eval run folder.")
    steer_data: str = option("cafe-conflict", help="Dataset whose calibration/dev splits fit and choose the steering.")
    data: str = option(DEFAULT_DATA, short="-d", help="Comma-separated conditions (datasets) the systems answer; "
                                                      "held-out splits (':test').")
    n: int = option(100, help="Items per condition (>= 1).")
    n_cal: int = option(64, help="Calibration items: the steering fit and the specialist-head ranking (>= 1).")
    n_dev: int = option(60, help="Dev items on which the steering setting is chosen (>= 1).")
    betas: tuple[float, ...] = option((0.0, 2.0, 4.0, 8.0), parse="floats", cli_default="0,2,4,8",
                                      help="Steering strengths swept on dev.")
    base_format: str = option("auto", help="Answer format of base systems: auto (the format the model was trained on) | "
                                           "direct | cot | structured.")
    ft_format: str = option("structured", help="Answer format of the fine-tuned systems.")
    out: Path = option(Path("runs/compare"), identity=False, help="Run folder.")
    resume: bool = option(False, identity=False, help=RESUME_HELP)
    seed: int = option(7, help="Data seed (cafe items, bootstrap).")
    dtype: str = option("auto", help=DTYPE_HELP)
    batch_size: int = option(16, identity=False, help="Items per generation batch (>= 1).")
    max_new_tokens: int = option(128, help="Generated tokens per answer (>= 1).")
    top_k: int = option(8, help="Specialist (listening) heads measured per model.")
    min_claims: int = option(20, help="Claims a step needs to enter the onset.")
    n_boot: int = option(1000, identity=False, help="Bootstrap resamples of the confidence intervals (>= 1).")

    def __post_init__(self) -> None:
        from auralens.interp.runs import check_dtype, check_formats, check_int, check_n

        bases = _split_list(self.base, "base")
        self._set("base", ",".join(bases))
        self._set("data", ",".join(_split_list(self.data, "data")))
        for name in ("mpar2", "hyper", "steer", "steer_mpar2"):
            v = getattr(self, name)
            v = "none" if v is None else str(v)
            self._set(name, v)
            keyword = v in ("auto", "none") or (name == "steer_mpar2" and v == "same")
            if not keyword and len(bases) > 1:
                raise ConfigError(f"{name}: a model or run folder ({v!r}) applies to one base model; found {len(bases)} "
                                  f"({', '.join(bases)}): use auto or none")
        if self.steer_mpar2 == "same" and self.steer == "none" and self.mpar2 != "none":
            raise ConfigError("steer_mpar2: 'same' applies the base's steering setting to mpar2, found steer='none' "
                              "(no setting): pass --steer auto or a steer run, or --steer-mpar2 auto/none")
        for name in ("n", "n_cal", "n_dev"):
            check_n(getattr(self, name))
        for name in ("batch_size", "max_new_tokens", "top_k", "n_boot", "min_claims"):
            check_int(name, getattr(self, name))
        check_dtype(self.dtype)
        if self.base_format != "auto":
            check_formats(self.base_format, "base_format")
        check_formats(self.ft_format, "ft_format")
        betas = tuple(float(b) for b in self.betas)
        if not betas or not all(np.isfinite(betas)):
            raise ConfigError(f"betas: expected finite numbers, found {self.betas!r}")
        self._set("betas", betas)
        self._set("out", Path(self.out))

    @property
    def bases(self) -> tuple[str, ...]:
        return tuple(self.base.split(","))

    @property
    def conditions(self) -> tuple[str, ...]:
        return tuple(self.data.split(","))

    def manifest(self, **config: Any) -> dict[str, Any]:
        return {**super().manifest(**config), "model": self.base}


def _cond_dir(cond: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", cond).strip("_") or "data"


def _calibration_spec(cond: str) -> str | None:
    """The calibration split of a condition given as a test split (None otherwise)."""
    ds = DataSpec.parse(cond)
    return str(ds.split("calibration")) if ds.split_name == "test" else None


# -------------------------------------------------------------------------------- stage
@takes_config(CompareConfig)
def stage_compare(cfg: CompareConfig, *, models: dict | None = None, quiet: bool = False) -> dict[str, Any]:
    """The grid (see the module docstring); writes ``out`` and returns its summary.

    ``models``: already loaded models by name (e.g. ``{"micro": lm}``), loaded otherwise.

    Returns (also ``summary.json``; missing values are ``None``)::

        {"organisms": {base: {"systems": {system: {condition: {"accuracy", "gain_vs_base",
                                                              "gain_vs_unsteered", "claim_accuracy",
                                                              "claim_onset", "claim_gap", "error_shares",
                                                              "generated_tokens", "forwards_per_item",
                                                              "pauses_per_item"}}},
                              "models": {system: model}, "formats": {system: fmt},
                              "training": {system: {"flops", "minutes"}}, "steering": {system: setting}}},
         "run", "data", "n", "notes"}
    """
    import pandas as pd

    from auralens.interp.listening import top_k as pick_top
    from auralens.interp.loading import load_model
    from auralens.interp.record import stage_record
    from auralens.interp.runs import RunFolder, check_model, load_items, run_identity

    models = dict(models or {})
    notes: list[str] = []
    # 1. validate: options (CompareConfig), models named, items and audio headers, steer runs
    plan: dict[str, dict[str, str | None]] = {}
    for base in cfg.bases:
        arms = {}
        for recipe in ("mpar2", "hyper"):
            v = getattr(cfg, recipe)
            arms[recipe] = None if v == "none" else (_embedded_arm(base, recipe) if v == "auto" else v)
            if v == "auto" and arms[recipe] is None:
                notes.append(f"{base}: no embedded {base}-{recipe} (train it with `auralens organisms finetune {base} "
                             f"--recipe {recipe}`): the {recipe} systems were skipped")
        plan[base] = arms
    given_steer = {k: read_steer_run(getattr(cfg, k)) for k in ("steer", "steer_mpar2")
                   if getattr(cfg, k) not in ("auto", "none", "same")}
    items_by_cond = {c: load_items(c, n=cfg.n, seed=cfg.seed) for c in cfg.conditions}
    cal_spec = _calibration_spec(cfg.conditions[0])
    if cal_spec:
        load_items(cal_spec, n=cfg.n_cal, seed=cfg.seed)
    if cfg.steer == "auto" or cfg.steer_mpar2 == "auto":
        from auralens.steering.pipeline import eval_splits, fit_spec

        dev_spec, dev_seed = eval_splits(cfg.steer_data, cfg.seed)["dev"]  # it has calibration/dev splits
        load_items(fit_spec(cfg.steer_data), n=cfg.n_cal, seed=cfg.seed)  # and their items and audio are readable
        load_items(dev_spec, n=cfg.n_dev, seed=dev_seed)
    all_items = [it for c in cfg.conditions for it in items_by_cond[c]]
    weights = {m: _weights_identity(m) for base, arms in plan.items() for m in (base, *[a for a in arms.values() if a])}
    manifest = {**cfg.manifest(steer_runs={k: s.describe() for k, s in given_steer.items()},
                               arms={b: a for b, a in plan.items()}, weights=weights),
                **run_identity(all_items)}
    # 2. the folder would accept this run; 3. every model exists
    RunFolder.check(cfg.out, manifest=manifest, resume=cfg.resume)
    for base, arms in plan.items():
        for m in (base, *[a for a in arms.values() if a]):
            if m not in models:
                check_model(m)
    from auralens.interp import distributed as dist

    # under a launcher rank 0 creates the folder; the sub-stages share their items across ranks
    # (auralens.interp.distributed) and the run's own files are rank 0's writes
    def create():
        run = RunFolder.create(cfg.out, manifest=manifest, resume=cfg.resume)
        run.update_manifest(processes=dist.world())  # not identity: a resumption may use another number
        return run

    run = dist.on_main(create)

    def get(name: str):
        if name not in models:
            models[name] = load_model(name, dtype=cfg.dtype)
        return models[name]

    tables, summary_org = [], {}
    for base in cfg.bases:
        org_dir = Path(run.path) / _cond_dir(base)
        lm_base = get(base)
        fmt_base = _native_format(lm_base) if cfg.base_format == "auto" else cfg.base_format
        systems: dict[str, dict[str, Any]] = {"base": {"model": base, "lm": lm_base, "fmt": fmt_base, "steer": None}}
        steer_base = None
        if cfg.steer != "none":
            steer_base = given_steer.get("steer") or _select_steering(lm_base, base, fmt_base, org_dir / "steer" / "base",
                                                                      cfg, quiet)
            systems["base+steering"] = {"model": base, "lm": lm_base, "fmt": fmt_base, "steer": steer_base}
        if plan[base]["mpar2"]:
            m = plan[base]["mpar2"]
            lm_m = get(m)
            systems["mpar2"] = {"model": m, "lm": lm_m, "fmt": cfg.ft_format, "steer": None}
            if cfg.steer_mpar2 != "none" and not (cfg.steer_mpar2 == "same" and steer_base is None):
                if cfg.steer_mpar2 == "same":
                    st = steer_base
                    notes.append(f"{base}: mpar2+steering applies the base's vector and setting unchanged")
                else:
                    st = given_steer.get("steer_mpar2") or _select_steering(lm_m, m, cfg.ft_format,
                                                                            org_dir / "steer" / "mpar2", cfg, quiet)
                systems["mpar2+steering"] = {"model": m, "lm": lm_m, "fmt": cfg.ft_format, "steer": st}
        if plan[base]["hyper"]:
            m = plan[base]["hyper"]
            systems["hyper"] = {"model": m, "lm": get(m), "fmt": cfg.ft_format, "steer": None}
        # the specialist heads of each model, ranked once on calibration items (never the reported ones)
        heads_runs: dict[str, str | None] = {}
        for sys_name, spec in systems.items():
            if spec["steer"] is not None or spec["model"] in heads_runs:
                continue
            if cal_spec is None:
                heads_runs[spec["model"]] = None
                notes.append(f"{base}/{sys_name}: {cfg.conditions[0]!r} has no calibration split: specialist heads "
                             "ranked on the reported items (biased)")
                continue
            hdir = org_dir / "heads" / _DIRS[sys_name]
            stage_record(model=spec["model"], data=cal_spec, n=cfg.n_cal, fmt=spec["fmt"], out=hdir, resume=cfg.resume,
                         lm=spec["lm"], quiet=quiet, seed=cfg.seed, batch_size=cfg.batch_size,
                         max_new_tokens=cfg.max_new_tokens, top_k=cfg.top_k, n_boot=cfg.n_boot, calibration="none")
            heads_runs[spec["model"]] = str(hdir)
        rows: list[dict] = []
        frames: dict[tuple[str, str], Any] = {}
        for cond in cfg.conditions:
            meta = pd.DataFrame([{"item_id": it.item_id, "task": it.task, "difficulty": it.difficulty}
                                 for it in items_by_cond[cond]])
            for sys_name, spec in systems.items():
                lm, st = spec["lm"], spec["steer"]
                sub = org_dir / _DIRS[sys_name] / _cond_dir(cond)
                label = spec["model"] + (f" + steering({st.mode}, L{st.layer}, beta={st.beta})" if st else "")
                stage_record(model=label, data=cond, n=cfg.n, fmt=spec["fmt"], out=sub, resume=cfg.resume, lm=lm,
                             quiet=quiet, seed=cfg.seed, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens,
                             top_k=cfg.top_k, n_boot=cfg.n_boot, calibration="none",
                             heads_from=heads_runs.get(spec["model"]) or "",
                             around_batch=st.around(cfg.batch_size, spec["fmt"]) if st else None)
                srun = RunFolder.open(sub)
                df = srun.read_table("items.parquet").sort_values("item_index").reset_index(drop=True)
                df = df.merge(meta, on="item_id", how="left")
                frames[(sys_name, cond)] = (srun, df)
                r = _Rows(base, sys_name, cond, spec["fmt"])
                _accuracy(r, df, n_boot=cfg.n_boot, seed=cfg.seed)
                if any(it.scene for it in items_by_cond[cond]):
                    _claims(r, srun, n_boot=cfg.n_boot, seed=cfg.seed, min_claims=cfg.min_claims)
                    _errors(r, df, n_boot=cfg.n_boot, seed=cfg.seed)
                pause = lm.pause.token_id if lm.pause is not None else None
                _inference_cost(r, srun, df, pause, st.extra_forwards if st else 0, n_boot=cfg.n_boot, seed=cfg.seed)
                rows += r
        for cond in cfg.conditions:
            for sys_name, spec in systems.items():
                srun, df = frames[(sys_name, cond)]
                r = _Rows(base, sys_name, cond, spec["fmt"])
                if sys_name != "base":
                    _gain(r, "gain_vs_base", df, frames[("base", cond)][1], "base", n_boot=cfg.n_boot, seed=cfg.seed)
                if sys_name.endswith("+steering"):
                    plain = sys_name.removesuffix("+steering")
                    _gain(r, "gain_vs_unsteered", df, frames[(plain, cond)][1], plain, n_boot=cfg.n_boot, seed=cfg.seed)
                plain_run = frames[(sys_name.removesuffix("+steering"), cond)][0]
                heads = plain_run.read_table("heads.parquet")
                top = pick_top(heads, min(cfg.top_k, len(heads)))
                _decay(r, srun, df, top, n_boot=cfg.n_boot, seed=cfg.seed)
                rows += r
        # training and fit cost (condition and format empty)
        training = {}
        for sys_name, spec in systems.items():
            r = _Rows(base, sys_name, "", "")
            if sys_name.startswith("base"):
                r.add("training_flops", "all", 0.0, note="no training (the base model's own training not counted)")
                r.add("training_minutes", "all", 0.0, note="no training")
                training[sys_name] = {"flops": 0.0, "minutes": 0.0}
            else:
                flops, minutes, note = _finetune_cost(spec["lm"])
                r.add("training_flops", "all", flops, note=note)
                r.add("training_minutes", "all", minutes, note="wall-clock minutes of the fine-tune (finetune.json)")
                training[sys_name] = {"flops": flops, "minutes": minutes}
            if spec["steer"] is not None:
                f, note = _fit_flops(spec["steer"].vec, spec["lm"], items_by_cond[cfg.conditions[0]], spec["fmt"])
                r.add("steering_fit_flops", "all", f, note=note)
            rows += r
        table = COMPARE.frame(rows)
        tables.append(table)
        summary_org[base] = {
            "systems": _summary(table, list(systems), cfg.conditions),
            "models": {s: v["model"] for s, v in systems.items()},
            "formats": {s: v["fmt"] for s, v in systems.items()},
            "training": training,
            "steering": {s: v["steer"].describe() for s, v in systems.items() if v["steer"] is not None},
        }

    from auralens.steering.figures import compare_figure

    table = pd.concat([*tables, reported_rows()], ignore_index=True)
    COMPARE.write(run, table)
    run.write_figure("compare.html", compare_figure(table))
    summary = _finite({"organisms": summary_org, "run": str(cfg.out), "data": list(cfg.conditions), "n": cfg.n,
                       "notes": notes})
    run.write_json("summary.json", summary)
    run.mark_stage("compare", organisms=list(cfg.bases), conditions=list(cfg.conditions))
    run.finish()
    return summary


def _summary(table, systems, conditions) -> dict[str, Any]:
    def get(s, c, metric, group="all"):
        r = table[(table.system == s) & (table.condition == c) & (table.metric == metric) & (table.group == group)]
        if not len(r):
            return None
        r = r.iloc[0]
        return {"value": round(float(r.value), 4), "ci": [round(float(r.ci_low), 4), round(float(r.ci_high), 4)],
                "n": int(r.n)}

    out: dict[str, Any] = {}
    for s in systems:
        out[s] = {c: {"accuracy": get(s, c, "accuracy"), "gain_vs_base": get(s, c, "gain_vs_base"),
                      "gain_vs_unsteered": get(s, c, "gain_vs_unsteered"),
                      "claim_accuracy": get(s, c, "claim_accuracy"), "claim_onset": get(s, c, "claim_onset"),
                      "claim_gap": get(s, c, "claim_gap"),
                      "error_shares": {et: (get(s, c, "error_share", et) or {}).get("value") for et in _ERROR_TYPES},
                      "generated_tokens": get(s, c, "generated_tokens"),
                      "forwards_per_item": get(s, c, "forwards_per_item"),
                      "pauses_per_item": get(s, c, "pauses_per_item")}
                  for c in conditions}
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
