"""Steering against fine-tuning where there is something to repair (``auralens compare``).

**The grid.**  For each base model of ``base`` (comma-separated: ``micro,micro-prior,micro-decay``,
or one real checkpoint), five systems answer the *same* items of every condition of ``data``
(default the held-out test splits ``cafe-neutral:test, cafe-congruent:test, cafe-conflict:test``):

- ``base`` — the model as it is, in ``base_format`` (``auto``: the format it was trained on,
  read from its ``training.json``; ``structured`` when it has none);
- ``base+steering`` — the paper's protocol (:func:`auralens.steering.stage_eval.stage_steer_eval`,
  ``dev_test``): an audio-minus-silence vector fitted on the steering data's calibration split,
  mode (fixed ``v`` or per-input ``s(x)``), layer, β and positions chosen on its dev split, then
  applied unchanged here (``steer``: ``auto`` runs fit and selection inside this run folder, a
  path reuses a ``steer eval`` run, ``none`` skips the steered systems);
- ``mpar2`` — the MPAR²-style fine-tune (:mod:`finetuning`; ``auto``: ``<base>-mpar2``), in
  ``ft_format``; ``mpar2+steering`` — with its own fitted and dev-chosen vector
  (``steer_mpar2="auto"``; ``"same"`` applies the base's setting unchanged);
- ``hyper`` — the HyPeR-style fine-tune (:mod:`auralens.finetuning.hyper`; ``auto``: ``<base>-hyper``),
  which generates with its PAUSE rule (``pause.json``);
- ``sft`` — the SFT-only arm (the MPAR²-style recipe's phase 1 alone, ``grpo_steps=0``; default
  ``none``), in ``ft_format``.

**Arms trained here** (``mpar2="train"`` / ``sft="train"``): after the run folder opens, each is
fine-tuned from the base into ``<organism>/train/<arm>`` (:func:`auralens.finetuning.recipe.finetune`,
``max_minutes=ft_minutes``, ``ft_sft_steps`` / ``ft_grpo_steps``, LoRA of rank ``lora_r`` on the
decoder, 0 = full fine-tune; resumed with the run), then loaded like any arm: the merged weights
load through :func:`auralens.interp.loading.load_model`.  LoRA is never chosen for you:
``lora_r`` defaults to 0, what ``micro``'s arms were trained with; pass ``--lora-r 16`` for
``smol-audio``.  Defaults of every new option leave the runs of ``micro`` as they were.

Every (system, condition) is one :func:`auralens.interp.record.stage_record` run, so every number comes
from the same code as the perception-decay stage; the specialist heads of each model are ranked
once on the calibration split of the first condition (never on the reported items).

``compare.parquet`` (:data:`auralens.interp.schemas.COMPARE`): one row per number, with ``organism`` (the
base model), ``system``, ``condition`` (the dataset), ``format``, ``metric`` and ``group``:

- ``accuracy`` (``all``, ``tier=...`` and the other groupings that split the items; item-bootstrap
  CI); ``gain_vs_base`` (paired bootstrap over items against ``base`` on the same condition);
  ``gain_vs_unsteered`` (a steered system against its own model);
- ``claim_accuracy`` (``all`` and ``step=s``), ``claim_onset`` (the onset test with a null,
  :func:`auralens.organisms.validate.claim_onset`, on the model's calibration heads run: chosen on
  other items than those reported; a steered system takes its unsteered model's; -1 for "no
  onset" or fewer than two steps with ``min_claims`` claims) and ``claim_gap`` (class-claim
  accuracy of the reported items before that onset − from it on, paired by item, CI; none
  without an onset); ``error_share`` (``perception`` / ``reasoning`` / ``unverifiable``, shares
  *of the wrong answers*); ``specialist_yield`` by step and ``yield_slope_specialists`` /
  ``yield_slope_all_heads``;
- cost: ``generated_tokens`` (per item, CI), ``pauses_per_item`` (HyPeR's PAUSE tokens, part of
  the generated tokens), ``forwards_per_item`` (one per generated token, +1 for per-input steering:
  the silence pass of ``s(x)``, whose real pass is folded into the prefill; +2 where it cannot be
  folded); ``training_flops`` / ``training_minutes`` (from
  the fine-tune's ``finetune.json``; 0 for base and steering), ``steering_fit_flops`` and
  ``steering_minutes`` (wall minutes of the vector's fit and the dev sweep that chose the setting,
  measured in this run; NaN for a given steer run) (condition and format empty).

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

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auralens.compare_metrics import (
    Rows,
    add_accuracy,
    add_claims,
    add_decay,
    add_errors,
    add_gain,
    add_inference_cost,
    finite,
    summarize,
)
from auralens.compare_systems import (
    TRAINABLE_ARMS,
    Steer,
    embedded_arm,
    finetune_config,
    finetune_cost,
    fit_flops,
    native_format,
    read_steer_run,
    steering_minutes,
    train_arm,
    weights_identity,
)
from auralens.interp import distributed as dist
from auralens.interp.dataspec import DataSpec
from auralens.interp.errors import ConfigError
from auralens.interp.listening import top_k as pick_top
from auralens.interp.loading import load_model
from auralens.interp.papers import REPORTED, reported_rows
from auralens.interp.record import stage_record
from auralens.interp.runs import (
    RunFolder,
    check_dtype,
    check_formats,
    check_int,
    check_model,
    check_n,
    load_items,
    open_run,
)
from auralens.interp.schemas import COMPARE, SYSTEMS
from auralens.interp.stage_config import DTYPE_HELP, RESUME_HELP, StageConfig, option, takes_config
from auralens.steering.evaluate import check_betas
from auralens.steering.figures import compare_figure
from auralens.steering.splits import eval_splits, fit_spec
from auralens.steering.stage_eval import stage_steer_eval
from auralens.steering.stage_fit import stage_steer_fit

__all__ = ["COMPARE_COLUMNS", "REPORTED", "SYSTEMS", "CompareConfig", "reported_rows", "stage_compare"]

COMPARE_COLUMNS: tuple[str, ...] = COMPARE.names
_DIRS = {"base": "base", "base+steering": "base_steering", "mpar2": "mpar2", "mpar2+steering": "mpar2_steering",
         "hyper": "hyper", "sft": "sft"}
_ARMS = ("mpar2", "hyper", "sft")
DEFAULT_DATA = "cafe-neutral:test,cafe-congruent:test,cafe-conflict:test"


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
    sft: str = option("none", identity=None,
                      help="SFT-only fine-tune: none | train (here, from the base) | auto (<base>-sft, embedded) | "
                           "a model (one base only).")
    lora_r: int = option(0, identity=None, help="LoRA rank of the arms trained here (--mpar2/--sft train; "
                                                "0 = full fine-tune).")
    ft_minutes: float = option(45.0, identity=None, help="Wall-clock cap of each arm trained here, minutes.")
    ft_sft_steps: int = option(600, identity=None, help="SFT steps of the arms trained here (the budget may stop them).")
    ft_grpo_steps: int = option(400, identity=None, help="GRPO steps of the MPAR²-style arm trained here.")
    ft_sft_batch_size: int = option(16, identity=None, help="SFT batch of the arms trained here.")
    ft_grpo_prompts: int = option(8, identity=None, help="GRPO prompts per step of the MPAR²-style arm trained here.")
    ft_group_size: int = option(8, identity=None, help="GRPO completions per prompt of the MPAR²-style arm trained here.")
    ft_threads: int = option(2, identity=False, help="CPU threads of the fine-tunes trained here.")
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
        bases = _split_list(self.base, "base")
        self._set("base", ",".join(bases))
        self._set("data", ",".join(_split_list(self.data, "data")))
        for name in ("mpar2", "hyper", "sft", "steer", "steer_mpar2"):
            v = getattr(self, name)
            v = "none" if v is None else str(v)
            self._set(name, v)
            if v == "train" and name not in TRAINABLE_ARMS:
                raise ConfigError(f"{name}: 'train' trains {' or '.join(TRAINABLE_ARMS)} here, found it for {name}")
            keyword = v in ("auto", "none") or (name == "steer_mpar2" and v == "same") or v == "train"
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
        self._set("betas", check_betas(self.betas))
        self._set("out", Path(self.out))
        for arm in self.trained_arms:
            self.finetune_config(arm)  # LoRA and budget options checked before any folder or model

    @property
    def trained_arms(self) -> tuple[str, ...]:
        """The arms trained in this run (``"train"``)."""
        return tuple(a for a in TRAINABLE_ARMS if getattr(self, a) == "train")

    def finetune_config(self, arm: str):
        """The :class:`~auralens.finetuning.config.FinetuneConfig` of an arm trained here."""
        return finetune_config(arm, lora_r=self.lora_r, max_minutes=self.ft_minutes, sft_steps=self.ft_sft_steps,
                               grpo_steps=self.ft_grpo_steps, threads=self.ft_threads,
                               sft_batch_size=self.ft_sft_batch_size, grpo_prompts=self.ft_grpo_prompts,
                               group_size=self.ft_group_size)

    @property
    def bases(self) -> tuple[str, ...]:
        return tuple(self.base.split(","))

    @property
    def conditions(self) -> tuple[str, ...]:
        return tuple(self.data.split(","))

    def manifest(self, **config: Any) -> dict[str, Any]:
        """The stage manifest, with the base models as its ``model``."""
        return {**super().manifest(**config), "model": self.base}


def _cond_dir(cond: str) -> str:
    """A folder name for a condition or a model name (runs of other characters than ``[A-Za-z0-9_.-]`` become ``_``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", cond).strip("_") or "data"


def _calibration_spec(cond: str) -> str | None:
    """The calibration split of a condition given as a test split (None otherwise)."""
    ds = DataSpec.parse(cond)
    return str(ds.split("calibration")) if ds.split_name == "test" else None


# ---------------------------------------------------------------------------- steering
def _select_steering(lm, model: str, fmt: str, folder: Path, cfg: CompareConfig, quiet: bool) -> tuple[Steer, float]:
    """The paper's protocol for one model: fit on the steering data's calibration split, choose
    mode / layer / beta / positions on its dev split (:func:`auralens.steering.stage_eval.stage_steer_eval`);
    returns the setting and the wall minutes of the fit and the dev sweep (all sessions of the run)."""
    t0 = time.time()
    done_before = _complete(folder / "eval")
    folder.mkdir(parents=True, exist_ok=True)
    vec_path = folder / "vector.safetensors"
    if not vec_path.exists():
        stage_steer_fit(model=model, data=cfg.steer_data, n=cfg.n_cal, out_vector=vec_path, seed=cfg.seed, fmt=fmt,
                        lm=lm)
    stage_steer_eval(model=model, data=cfg.steer_data, vector=vec_path, n=cfg.n_dev, out=folder / "eval",
                     formats=(fmt,), betas=cfg.betas, controls=False, seed=cfg.seed, resume=cfg.resume,
                     max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, n_boot=cfg.n_boot, lm=lm,
                     quiet=quiet)
    # a resumed run whose sweep was already done adds nothing (its stored minutes are the cost)
    return read_steer_run(folder / "eval"), steering_minutes(folder, 0.0 if done_before else (time.time() - t0) / 60)


def _complete(folder: Path) -> bool:
    """Whether ``folder`` holds a finished run (its manifest's status)."""
    try:
        return json.loads((folder / "manifest.json").read_text()).get("status") == "complete"
    except (OSError, ValueError, AttributeError):
        return False


# --------------------------------------------------------------------------- the stage
@dataclass(frozen=True)
class _System:
    """One system of a base's grid row: the model (name and loaded), its answer format and steering."""

    model: str
    lm: Any
    fmt: str
    steer: Steer | None
    steer_minutes: float = float("nan")  # wall minutes of choosing the steering (NaN: a given steer run)


@dataclass(frozen=True, kw_only=True)
class _Inputs:
    """What the validation step read: the given steer runs, each condition's items, the
    calibration split of the first condition (``None``: it has none)."""

    given_steer: dict[str, Steer]
    items: dict[str, list]
    cal_spec: str | None

    @property
    def all_items(self) -> list:
        """Every condition's items, in condition order (the run's identity)."""
        return [it for its in self.items.values() for it in its]


def _plan_arms(cfg: CompareConfig, notes: list[str]) -> dict[str, dict[str, str | None]]:
    """Per base, the model of each fine-tuned arm (``None``: skipped, with a note for a missing embedded one)."""
    plan: dict[str, dict[str, str | None]] = {}
    for base in cfg.bases:
        arms: dict[str, str | None] = {}
        for recipe in _ARMS:
            v = getattr(cfg, recipe)
            if v == "train":  # trained after the folder opens (_train_arms)
                arms[recipe] = None
                continue
            arms[recipe] = None if v == "none" else (embedded_arm(base, recipe) if v == "auto" else v)
            if v == "auto" and arms[recipe] is None:
                how = (f"pass --{recipe} train or a folder" if recipe == "sft"
                       else f"train it with `auralens organisms finetune {base} --recipe {recipe}`")
                notes.append(f"{base}: no embedded {base}-{recipe} ({how}): the {recipe} systems were skipped")
        plan[base] = arms
    return plan


def _read_inputs(cfg: CompareConfig) -> _Inputs:
    """The given steer runs, every condition's items (audio headers checked), the calibration
    items, and the steering data's calibration / dev splits where steering is chosen here."""
    given_steer = {k: read_steer_run(getattr(cfg, k)) for k in ("steer", "steer_mpar2")
                   if getattr(cfg, k) not in ("auto", "none", "same")}
    items = {c: load_items(c, n=cfg.n, seed=cfg.seed) for c in cfg.conditions}
    cal_spec = _calibration_spec(cfg.conditions[0])
    if cal_spec:
        load_items(cal_spec, n=cfg.n_cal, seed=cfg.seed)
    if cfg.steer == "auto" or cfg.steer_mpar2 == "auto":

        dev_spec, dev_seed = eval_splits(cfg.steer_data, cfg.seed)["dev"]  # it has calibration/dev splits
        load_items(fit_spec(cfg.steer_data), n=cfg.n_cal, seed=cfg.seed)  # and their items and audio are readable
        load_items(dev_spec, n=cfg.n_dev, seed=dev_seed)
    return _Inputs(given_steer=given_steer, items=items, cal_spec=cal_spec)


def _model_names(plan: dict[str, dict[str, str | None]]) -> list[str]:
    """Every model of the grid, once each, in grid order (a base, then its arms)."""
    names = [m for base, arms in plan.items() for m in (base, *[a for a in arms.values() if a])]
    return list(dict.fromkeys(names))


def _open_compare_run(cfg: CompareConfig, plan, inputs: _Inputs, models: dict) -> RunFolder:
    """:func:`auralens.interp.runs.open_run` for the grid: the folder would accept the run, every
    model's config is checked and the models are loaded (the first base through ``open_run``,
    the others before the folder is created), then the folder is created.  Fills ``models``."""
    names = _model_names(plan)
    manifest = cfg.manifest(steer_runs={k: s.describe() for k, s in inputs.given_steer.items()},
                            arms={b: a for b, a in plan.items()}, weights={m: weights_identity(m) for m in names})
    first = cfg.bases[0]

    def load_the_others(lm) -> None:
        models[first] = lm
        missing = [m for m in names if m not in models]
        for m in missing:
            check_model(m)
        for m in missing:
            models[m] = load_model(m, dtype=cfg.dtype, **dist.placement(None))

    run, _ = open_run(cfg.out, manifest=manifest, items=inputs.all_items, resume=cfg.resume, lm=models.get(first),
                      model=first, dtype=cfg.dtype, before_create=load_the_others)
    return run


def _systems(cfg: CompareConfig, base: str, arms: dict[str, str | None], inputs: _Inputs, models: dict,
             org_dir: Path, notes: list[str], quiet: bool) -> dict[str, _System]:
    """The systems of one base (steering chosen or read where it applies)."""
    lm_base = models[base]
    fmt_base = native_format(lm_base) if cfg.base_format == "auto" else cfg.base_format
    systems = {"base": _System(base, lm_base, fmt_base, None)}
    steer_base, minutes_base = None, float("nan")
    if cfg.steer != "none":
        steer_base = inputs.given_steer.get("steer")
        if steer_base is None:
            steer_base, minutes_base = _select_steering(lm_base, base, fmt_base, org_dir / "steer" / "base", cfg, quiet)
        systems["base+steering"] = _System(base, lm_base, fmt_base, steer_base, minutes_base)
    if arms["mpar2"]:
        m = arms["mpar2"]
        systems["mpar2"] = _System(m, models[m], cfg.ft_format, None)
        if cfg.steer_mpar2 != "none" and not (cfg.steer_mpar2 == "same" and steer_base is None):
            minutes = float("nan")
            if cfg.steer_mpar2 == "same":
                st, minutes = steer_base, 0.0
                notes.append(f"{base}: mpar2+steering applies the base's vector and setting unchanged")
            else:
                st = inputs.given_steer.get("steer_mpar2")
                if st is None:
                    st, minutes = _select_steering(models[m], m, cfg.ft_format, org_dir / "steer" / "mpar2", cfg, quiet)
            systems["mpar2+steering"] = _System(m, models[m], cfg.ft_format, st, minutes)
    for arm in ("hyper", "sft"):
        name = arms.get(arm)
        if name:
            systems[arm] = _System(name, models[name], cfg.ft_format, None)
    return systems


def _train_arms(cfg: CompareConfig, base: str, arms: dict[str, str | None], models: dict, org_dir: Path,
                quiet: bool) -> dict[str, str | None]:
    """The arms trained here (``"train"``): fine-tuned from ``base`` into ``<organism>/train/<arm>``
    (resumed with the run), loaded into ``models``; returns ``arms`` with their folders."""
    arms = dict(arms)
    for arm in cfg.trained_arms:
        folder = train_arm(base, org_dir / "train" / arm, cfg.finetune_config(arm), resume=cfg.resume,
                           progress=not quiet)
        if folder not in models:
            models[folder] = load_model(folder, dtype=cfg.dtype, **dist.placement(None))
        arms[arm] = folder
    return arms


def _record_args(cfg: CompareConfig, quiet: bool) -> dict[str, Any]:
    """The :func:`auralens.interp.record.stage_record` options every sub-run of the grid shares."""
    return {"resume": cfg.resume, "quiet": quiet, "seed": cfg.seed, "batch_size": cfg.batch_size,
            "max_new_tokens": cfg.max_new_tokens, "top_k": cfg.top_k, "n_boot": cfg.n_boot, "calibration": "none"}


def _rank_heads(cfg: CompareConfig, base: str, systems: dict[str, _System], cal_spec: str | None, org_dir: Path,
                notes: list[str], quiet: bool) -> dict[str, str | None]:
    """The specialist heads of each unsteered model, ranked once on calibration items (never the
    reported ones): model -> its heads run folder (``None``: ranked on the reported items)."""
    heads_runs: dict[str, str | None] = {}
    for sys_name, spec in systems.items():
        if spec.steer is not None or spec.model in heads_runs:
            continue
        if cal_spec is None:
            heads_runs[spec.model] = None
            notes.append(f"{base}/{sys_name}: {cfg.conditions[0]!r} has no calibration split: specialist heads "
                         "ranked on the reported items (biased)")
            continue
        hdir = org_dir / "heads" / _DIRS[sys_name]
        stage_record(model=spec.model, data=cal_spec, n=cfg.n_cal, fmt=spec.fmt, out=hdir, lm=spec.lm,
                     **_record_args(cfg, quiet))
        heads_runs[spec.model] = str(hdir)
    return heads_runs


def _record_cell(cfg: CompareConfig, base: str, sys_name: str, spec: _System, cond: str, *, items: list, meta,
                 heads_run: str | None, org_dir: Path, quiet: bool):
    """One (system, condition): its record run, its items table and its rows (accuracy, claims and
    errors where the items have scenes, inference cost)."""
    st = spec.steer
    sub = org_dir / _DIRS[sys_name] / _cond_dir(cond)
    label = spec.model + (f" + steering({st.mode}, L{st.layer}, beta={st.beta})" if st else "")
    stage_record(model=label, data=cond, n=cfg.n, fmt=spec.fmt, out=sub, lm=spec.lm, heads_from=heads_run or "",
                 around_batch=st.around(cfg.batch_size, spec.fmt) if st else None, **_record_args(cfg, quiet))
    srun = RunFolder.open(sub)
    df = srun.read_table("items.parquet").sort_values("item_index").reset_index(drop=True)
    df = df.merge(meta, on="item_id", how="left")
    r = Rows(base, sys_name, cond, spec.fmt)
    add_accuracy(r, df, n_boot=cfg.n_boot, seed=cfg.seed)
    if any(it.scene for it in items):
        add_claims(r, srun, n_boot=cfg.n_boot, seed=cfg.seed, min_claims=cfg.min_claims,
                   onset_run=RunFolder.open(heads_run) if heads_run else None)
        add_errors(r, df, n_boot=cfg.n_boot, seed=cfg.seed)
    pause = spec.lm.pause.token_id if spec.lm.pause is not None else None
    add_inference_cost(r, srun, df, pause, st.extra_forwards if st else 0, n_boot=cfg.n_boot, seed=cfg.seed)
    return srun, df, r


def _record_conditions(cfg: CompareConfig, base: str, systems: dict[str, _System], inputs: _Inputs,
                       heads_runs: dict[str, str | None], org_dir: Path, quiet: bool):
    """Every (system, condition) recorded: ``{(system, condition): (run, items table)}`` and their rows."""
    import pandas as pd

    rows: list[dict] = []
    frames: dict[tuple[str, str], Any] = {}
    for cond in cfg.conditions:
        meta = pd.DataFrame([{"item_id": it.item_id, "task": it.task, "difficulty": it.difficulty}
                             for it in inputs.items[cond]])
        for sys_name, spec in systems.items():
            srun, df, r = _record_cell(cfg, base, sys_name, spec, cond, items=inputs.items[cond], meta=meta,
                                       heads_run=heads_runs.get(spec.model), org_dir=org_dir, quiet=quiet)
            frames[(sys_name, cond)] = (srun, df)
            rows += r
    return frames, rows


def _paired_rows(cfg: CompareConfig, base: str, systems: dict[str, _System], frames) -> list[dict]:
    """Gains against base and against the unsteered model (paired by item), and the yield of each
    model's specialist heads (ranked in its unsteered run)."""
    rows: list[dict] = []
    for cond in cfg.conditions:
        for sys_name, spec in systems.items():
            srun, df = frames[(sys_name, cond)]
            r = Rows(base, sys_name, cond, spec.fmt)
            if sys_name != "base":
                add_gain(r, "gain_vs_base", df, frames[("base", cond)][1], "base", n_boot=cfg.n_boot, seed=cfg.seed)
            plain = sys_name.removesuffix("+steering")
            if sys_name.endswith("+steering"):
                add_gain(r, "gain_vs_unsteered", df, frames[(plain, cond)][1], plain, n_boot=cfg.n_boot, seed=cfg.seed)
            heads = frames[(plain, cond)][0].read_table("heads.parquet")
            add_decay(r, srun, df, pick_top(heads, min(cfg.top_k, len(heads))), n_boot=cfg.n_boot, seed=cfg.seed)
            rows += r
    return rows


def _cost_rows(cfg: CompareConfig, base: str, systems: dict[str, _System], inputs: _Inputs):
    """Training and steering-fit cost per system (condition and format empty), and the training summary."""
    rows: list[dict] = []
    training = {}
    for sys_name, spec in systems.items():
        r = Rows(base, sys_name, "", "")
        if sys_name.startswith("base"):
            r.add("training_flops", "all", 0.0, note="no training (the base model's own training not counted)")
            r.add("training_minutes", "all", 0.0, note="no training")
            training[sys_name] = {"flops": 0.0, "minutes": 0.0}
        else:
            flops, minutes, note = finetune_cost(spec.lm)
            r.add("training_flops", "all", flops, note=note)
            r.add("training_minutes", "all", minutes, note="wall-clock minutes of the fine-tune (finetune.json)")
            training[sys_name] = {"flops": flops, "minutes": minutes}
        if spec.steer is not None:
            f, note = fit_flops(spec.steer.vec, spec.lm, inputs.items[cfg.conditions[0]], spec.fmt)
            r.add("steering_fit_flops", "all", f, note=note)
            r.add("steering_minutes", "all", spec.steer_minutes,
                  note=("the base's setting reused: no fit or sweep" if spec.steer_minutes == 0.0 else
                        "wall-clock minutes of the vector's fit and the dev sweep that chose the setting"
                        if spec.steer_minutes == spec.steer_minutes else "a given steer run: its time is not known here"))
            training[sys_name]["steering_minutes"] = spec.steer_minutes
        rows += r
    return rows, training


def _compare_base(cfg: CompareConfig, base: str, arms: dict[str, str | None], inputs: _Inputs, models: dict,
                  run: RunFolder, notes: list[str], quiet: bool):
    """One grid row: its systems, their record runs and rows; returns (table, summary)."""
    org_dir = Path(run.path) / _cond_dir(base)
    arms = _train_arms(cfg, base, arms, models, org_dir, quiet)
    systems = _systems(cfg, base, arms, inputs, models, org_dir, notes, quiet)
    heads_runs = _rank_heads(cfg, base, systems, inputs.cal_spec, org_dir, notes, quiet)
    frames, rows = _record_conditions(cfg, base, systems, inputs, heads_runs, org_dir, quiet)
    rows += _paired_rows(cfg, base, systems, frames)
    cost, training = _cost_rows(cfg, base, systems, inputs)
    table = COMPARE.frame(rows + cost)
    return table, {
        "systems": summarize(table, list(systems), cfg.conditions),
        "models": {s: v.model for s, v in systems.items()},
        "formats": {s: v.fmt for s, v in systems.items()},
        "training": training,
        "arms": {a: m for a, m in arms.items() if m},
        "steering": {s: v.steer.describe() for s, v in systems.items() if v.steer is not None},
    }


def _write_outputs(cfg: CompareConfig, run: RunFolder, tables: list, summary_org: dict, notes: list[str]) -> dict[str, Any]:
    """``compare.parquet`` (with the reported rows), ``compare.html``, ``summary.json``; the run marked finished."""
    import pandas as pd


    table = pd.concat([*tables, reported_rows()], ignore_index=True)
    COMPARE.write(run, table)
    run.write_figure("compare.html", compare_figure(table))
    summary = finite({"organisms": summary_org, "run": str(cfg.out), "data": list(cfg.conditions), "n": cfg.n,
                      "notes": notes})
    run.write_json("summary.json", summary)
    run.mark_stage("compare", organisms=list(cfg.bases), conditions=list(cfg.conditions))
    run.finish()
    return summary


@takes_config(CompareConfig)
def stage_compare(cfg: CompareConfig, *, models: dict | None = None, quiet: bool = False) -> dict[str, Any]:
    """The grid (see the module docstring); writes ``out`` and returns its summary.

    ``models``: already loaded models by name (e.g. ``{"micro": lm}``), loaded otherwise.
    Steps: the arms of each base; the inputs read and checked (steer runs, items, audio headers);
    the run opened (:func:`auralens.interp.runs.open_run`: folder checked, models checked and
    loaded, then the folder created); per base its systems, record runs and rows; the outputs.

    Returns (also ``summary.json``; missing values are ``None``)::

        {"organisms": {base: {"systems": {system: {condition: {"accuracy", "gain_vs_base",
                                                              "gain_vs_unsteered", "claim_accuracy",
                                                              "claim_onset", "claim_gap", "error_shares",
                                                              "generated_tokens", "forwards_per_item",
                                                              "pauses_per_item"}}},
                              "models": {system: model}, "formats": {system: fmt},
                              "training": {system: {"flops", "minutes"[, "steering_minutes"]}},
                              "steering": {system: setting}, "arms": {arm: model}}},
         "run", "data", "n", "notes"}
    """
    models = dict(models or {})
    if cfg.trained_arms and dist.active():
        raise ConfigError(f"--{cfg.trained_arms[0]} train: fine-tunes in one process; under a {dist.world()}-process "
                          "launch train first (`auralens micro finetune --base B --out DIR`) and pass the folder")
    notes: list[str] = []
    plan = _plan_arms(cfg, notes)
    inputs = _read_inputs(cfg)
    run = _open_compare_run(cfg, plan, inputs, models)
    tables, summary_org = [], {}
    for base in cfg.bases:
        table, summary_org[base] = _compare_base(cfg, base, plan[base], inputs, models, run, notes, quiet)
        tables.append(table)
    return _write_outputs(cfg, run, tables, summary_org, notes)
