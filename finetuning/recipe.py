"""The whole MPAR²-style run (:func:`finetune`): SFT, then GRPO, checkpoints, resume, and the
final folder with ``finetune.json``.  The recipe itself is described in :mod:`finetuning`.

**Compute estimate** (``finetune.json["compute_flops"]``, N = parameters, tokens = non-padding
positions, audio placeholders included): SFT ``6·N·tokens``; GRPO sampling ``2·N·(prompt +
generated tokens)``; GRPO updates ``6·N·tokens`` per update; the reference model's forward
``2·N·tokens`` (listed separately; it is real compute the paper's recipe also pays).

**Budget** (``micro``): measured on the shared 2-core development machine
(:data:`~auralens.finetuning.config.MEASURED`, 1 thread: 0.36 s per SFT step of 16, 2.3 s per GRPO step
of 8 × 8 completions), the defaults —
600 SFT steps (~4 min) and 400 GRPO steps (~16 min), each phase's ``finetune.json["timing"]``
records the real figure — fit in 30 minutes with room for a busy machine (the shipped
``micro-mpar2``: 600 + 400 steps in 19.2 minutes, 0.38 s and 2.30 s per step, 1 thread beside
another 1-thread training run; with ``threads=2`` beside that run SFT took 5.7 s per step —
never give torch more threads than free cores); ``max_minutes``
(28) is a hard stop either way (SFT may use at most :data:`~auralens.finetuning.config.SFT_TIME_SHARE` of
it; GRPO stops
early enough to save).  GRPO's learning rate, on dev items (seed 8, 300 structured answers,
greedy), each run 300 SFT + 100 GRPO steps: on the 1530-step micro 2e-4 added +3 points over SFT
alone (0.600 → 0.633; base 0.523) at KL ~0.02/token, while 5e-4 (GRPO only) drifted to KL ~0.6;
on the 4200-step micro (base 0.900, SFT 0.913) no GRPO setting beat SFT alone (0.83–0.89 over
four runs: lr 1e-4 / 2e-4 × both aggregations), so the default is the conservative 1e-4 with
``"dapo"``.  A model this sharp (mean log-prob −0.008 per sampled token at T = 1) yields few
groups whose completions differ, hence little signal per step.

**Resume** (``resume=True``): after SFT the SFT weights are checkpointed in
``.<out>.work/sft``; GRPO checkpoints (weights and AdamW moments as safetensors, optimizer
structure and curves as JSON; nothing pickled) every ``save_every`` steps in ``.<out>.work/grpo``.
An interrupted SFT phase restarts from the base: the Trainer's own checkpoints (``optimizer.pt``,
``rng_state.pth``: pickles) are never written (``save_strategy="no"``) nor resumed from, and its
output folder is deleted after training; the phase is a few minutes.  An interrupted GRPO
phase continues from its last checkpoint with the same items and sampling seeds.  The final
folder (``model.safetensors``, config, processor, ``finetune.json``) appears in one rename.

**LoRA** (``lora_r > 0``, :mod:`auralens.finetuning.lora`): applied after the base loads and before
the work folder (an unknown target module fails there); the checkpoints hold the adapter and the
adapters' AdamW moments; the final folder merged weights (``finetune.json["lora"]`` records the
rank, alpha, targets and trainable parameters).  With ``grpo_steps=0`` (the SFT-only arm) SFT may
use the whole ``max_minutes`` but the time to save.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from auralens.finetuning.config import GRPO_SEED_OFFSET, SEED_BLOCK, SFT_TIME_SHARE, FinetuneConfig
from auralens.finetuning.grpo import GRPOBatch, GRPOUpdateConfig, group_advantages, grpo_update, sample_completions
from auralens.finetuning.hyper import HYPER_REWARD_NAMES, add_pause_token, calibrate_threshold, hyper_rewards
from auralens.finetuning.items import train_items
from auralens.finetuning.lora import ADAPTER_FILE, apply_lora, is_lora, load_adapter, merge_lora, trainable_parameters
from auralens.finetuning.rewards import REWARD_NAMES, trace_rewards
from auralens.finetuning.sft import run_sft
from auralens.interp.errors import ConfigError
from auralens.interp.generation import model_inputs
from auralens.interp.loading import load_model
from auralens.interp.micro.train import has_optimizer, load_optimizer, save_checkpoint
from auralens.interp.pause import PAUSE_FILE, PauseConfig, generate_kwargs_for
from auralens.interp.runs import check_model
from auralens.interp.tokenizer import clean_decoded

__all__ = ["finetune"]

_SAVE_RESERVE_MIN = 0.5  # GRPO stops this many minutes before max_minutes to save
_RUNTIME_KEYS = frozenset({"max_minutes", "threads", "save_every"})  # may change between sessions
_NO_SFT = {"steps": 0, "losses": [], "tokens": 0, "minutes": 0.0}
_NEW_GRPO = {"steps": 0, "curves": [], "sample_tokens": 0, "update_tokens": 0, "ref_tokens": 0, "step_seconds": []}


# ------------------------------------------------------------------------------- checkpoints
def _save_folder(folder: Path, model, processor, *, json_files: Mapping[str, Any], opt=None) -> None:
    """One checkpoint (:func:`auralens.interp.micro.train.save_checkpoint`: atomic, no pickle)."""
    save_checkpoint(folder, model, processor, json_files=dict(json_files), opt=opt)


def _has_checkpoint(folder: Path) -> bool:
    """A complete weights checkpoint (full: ``config.json``; LoRA: the adapter file)."""
    return (folder / "config.json").exists() or (folder / ADAPTER_FILE).exists()


def _load_weights(model, folder: Path) -> None:
    """Load a checkpoint written by ``save_pretrained`` into ``model`` (strict).  Through
    ``from_pretrained``: transformers renames keys on save (``model.audio_tower.*`` is stored as
    ``audio_tower.*``), so the raw safetensors keys do not match ``model.state_dict()``.  Under
    LoRA the checkpoint is the adapter (:func:`auralens.finetuning.lora.load_adapter`)."""
    if is_lora(model):
        load_adapter(model, folder)
        return
    param = next(model.parameters())
    loaded = type(model).from_pretrained(str(folder), dtype=param.dtype)
    model.load_state_dict(loaded.state_dict(), strict=True)


# ------------------------------------------------------------------------------- provenance
def _n_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _base_training(source: str) -> dict[str, Any] | None:
    """Provenance of an embedded / locally trained base: its training.json summary, if any."""
    p = Path(source) / "training.json"
    if not p.exists():
        return None
    info = json.loads(p.read_text())
    return {k: info.get(k) for k in ("steps_done", "items_seen", "minutes", "final_loss")}


def _compute(n_params: int, sft_tokens: int, sample_tokens: int, update_tokens: int, ref_tokens: int, *,
             lora: bool = False) -> dict[str, float]:
    """FLOPs; a training token costs ``6·N`` (forward, activation and weight gradients), ``4·N``
    under LoRA (no weight gradients of the frozen weights; the adapters' are negligible)."""
    train = 4.0 if lora else 6.0
    c = {
        "sft": train * n_params * sft_tokens,
        "grpo_sampling": 2.0 * n_params * sample_tokens,
        "grpo_updates": train * n_params * update_tokens,
        "grpo_reference": 2.0 * n_params * ref_tokens,
    }
    c["total"] = sum(c.values())
    return c


def _identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """The options that identify a run (``config`` without the ones a session may change; the
    LoRA options only under LoRA, so a full fine-tune's identity is what it was before they existed)."""
    lora = bool(config.get("lora_r", 0))
    return {k: v for k, v in config.items() if k not in _RUNTIME_KEYS and (lora or not k.startswith("lora_"))}


# ------------------------------------------------------------------- step 1: the inputs
def _finished_run(out_dir: Path, identity: dict[str, Any], *, resume: bool) -> dict[str, Any] | None:
    """The stored record of a finished run of the same options under ``resume`` (``None``: no
    finished run); refuses a finished run otherwise, a file, and a folder holding other files."""
    if (out_dir / "finetune.json").exists():
        done = json.loads((out_dir / "finetune.json").read_text())
        if resume and _identity(done.get("config", {})) == identity:
            return done
        raise ConfigError(
            f"finetune: expected no finished fine-tune in {out_dir}, found one (finetune.json); "
            "choose another folder or remove it"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"finetune: expected an output folder, found a file {str(out_dir)!r}")
    if out_dir.is_dir() and any(out_dir.iterdir()):  # the final save replaces the folder: never someone's files
        raise ConfigError(f"finetune: expected a new or empty output folder, found {str(out_dir)!r} holding other files "
                          "(the fine-tune would replace them); choose another folder")
    return None


def _resumed_state(work: Path, identity: dict[str, Any], base_dir, *, resume: bool) -> dict[str, Any] | None:
    """The interrupted run's ``state.json`` under ``resume`` (``None``: a fresh run); refuses a
    work folder started with other options or another base."""
    if not (resume and (work / "state.json").exists()):
        return None
    state = json.loads((work / "state.json").read_text())
    old = _identity(state.get("config", {}))
    if old != identity or state.get("base") != str(base_dir):
        raise ConfigError(f"finetune --resume: {work} was started with {old} on {state.get('base')}, not {identity} on {base_dir}")
    return state


def _load_base(base_dir, cfg: FinetuneConfig):
    """The base model, loaded after a one-line check of its config (load_model's is a ValueError)."""
    check_model(str(base_dir))
    return load_model(str(base_dir), dtype=cfg.dtype)


def _apply_lora(lm, cfg: FinetuneConfig) -> dict[str, Any] | None:
    """LoRA on the decoder (``cfg.lora_r > 0``; a target the decoder lacks fails here, before the
    work folder); its record for ``finetune.json``, ``None`` for a full fine-tune."""
    if cfg.lora_r == 0:
        return None
    return apply_lora(lm, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, targets=cfg.lora_targets)


# --------------------------------------------------------------- step 2: the work folder
class _WorkFolder:
    """``.<out>.work``: ``state.json`` (the phases' records, the options, the minutes spent over
    all sessions) and the SFT / GRPO checkpoints."""

    def __init__(self, path: Path, *, cfg: FinetuneConfig, base_dir, state: dict[str, Any] | None, t_start: float):
        if state is None and path.exists():  # a fresh run: an earlier run's leftovers go
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        self.path, self.state = path, {} if state is None else state
        self.config, self.base = asdict(cfg), str(base_dir)
        self._minutes_before, self._t_start = float(self.state.get("minutes", 0.0)), t_start

    def minutes(self) -> float:
        """Minutes spent on this run, earlier sessions included."""
        return self._minutes_before + (time.time() - self._t_start) / 60

    def save_state(self, **changes: Any) -> None:
        """Record ``changes`` (with the options, the base and the minutes so far) in ``state.json``."""
        self.state.update(changes, config=self.config, base=self.base, minutes=round(self.minutes(), 3))
        (self.path / "state.json").write_text(json.dumps(self.state, indent=2))


# ------------------------------------------------------------------------- step 3: SFT
def _sft_phase(lm, cfg: FinetuneConfig, work: _WorkFolder, *, progress: bool) -> dict[str, Any]:
    """Phase 1 (:func:`auralens.finetuning.sft.run_sft`), or its checkpoint when resuming; its record."""
    import torch

    if "sft" in work.state and _has_checkpoint(work.path / "sft"):
        _load_weights(lm.model, work.path / "sft")
        return work.state["sft"]
    if cfg.sft_steps > 0:
        # SFT-only (grpo_steps 0, compare's "sft" arm): the whole budget but the time to save
        budget = cfg.max_minutes * SFT_TIME_SHARE if cfg.grpo_steps else cfg.max_minutes - _SAVE_RESERVE_MIN
        sft = run_sft(lm, cfg, work_dir=work.path, max_minutes=budget - work.minutes(), progress=progress)
        torch.set_num_threads(cfg.threads)
        _save_folder(work.path / "sft", lm.model, lm.processor, json_files={})
    else:
        sft = dict(_NO_SFT, losses=[])
    work.save_state(sft=sft)
    return sft


# ------------------------------------------------------------- HyPeR: the PAUSE rule
def _pause_rule(lm, cfg: FinetuneConfig, work: _WorkFolder) -> PauseConfig | None:
    """HyPeR's PAUSE token (added to ``lm``) and its entropy threshold, calibrated once and kept
    in the state; ``None`` for the MPAR²-style recipe."""
    import torch

    if cfg.recipe != "hyper":
        return None
    pause_id = add_pause_token(lm)
    if "pause" not in work.state:
        torch.manual_seed(cfg.seed * 1_000_003 - 1)
        cal = model_inputs(lm, train_items(cfg, SEED_BLOCK - 1000, 16), "structured")
        thr = calibrate_threshold(lm.model, lm.tokenizer, cal, pause_id=pause_id, quantile=cfg.pause_quantile,
                                  temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                                  generate_kwargs=lm.arch.table.generate_kwargs,
                                  suppress_ids=[int(lm.arch.audio_token_id)])
        work.save_state(pause=PauseConfig(token_id=pause_id, entropy_threshold=round(thr, 6),
                                          max_pauses=cfg.max_pauses).to_json())
    return PauseConfig(**work.state["pause"])


def _rewards_of(cfg: FinetuneConfig) -> tuple[Callable[[str, Any], dict[str, float]], tuple[str, ...]]:
    """The reward function of ``cfg.recipe`` and the names of its terms."""
    if cfg.recipe == "hyper":
        return hyper_rewards, HYPER_REWARD_NAMES
    return trace_rewards, REWARD_NAMES


# ------------------------------------------------------------------------ step 4: GRPO
@dataclass(frozen=True, kw_only=True)
class _GRPOContext:
    """What every GRPO step of one run uses: the models, the optimiser and the fixed settings."""

    lm: Any
    cfg: FinetuneConfig
    ref: Any
    opt: Any
    update: GRPOUpdateConfig
    generate_kwargs: dict[str, Any]
    suppress: list[int]
    pause: PauseConfig | None
    reward_fn: Callable[[str, Any], dict[str, float]]
    reward_names: tuple[str, ...]


def _grpo_context(lm, cfg: FinetuneConfig, pause_cfg: PauseConfig | None) -> _GRPOContext:
    """The frozen reference (the SFT model), AdamW, the sampling and update settings."""
    import torch

    policy = lm.model
    suppress = [int(lm.arch.audio_token_id)]
    lp_suppress = suppress if pause_cfg is None else [*suppress, pause_cfg.token_id]  # a forced pause is no action
    reward_fn, reward_names = _rewards_of(cfg)
    return _GRPOContext(
        lm=lm, cfg=cfg, ref=copy.deepcopy(policy).eval().requires_grad_(False),
        opt=torch.optim.AdamW(trainable_parameters(policy), lr=cfg.grpo_lr, weight_decay=0.0, betas=(0.9, 0.99)),
        update=GRPOUpdateConfig(kl_coef=cfg.kl_coef, clip_eps=cfg.clip_eps, temperature=cfg.temperature,
                                iterations=cfg.grpo_iterations, loss_type=cfg.loss_type, suppress_ids=tuple(lp_suppress)),
        generate_kwargs={**lm.arch.table.generate_kwargs, **generate_kwargs_for(pause_cfg)},
        suppress=suppress, pause=pause_cfg, reward_fn=reward_fn, reward_names=reward_names,
    )


def _grpo_step(ctx: _GRPOContext, step: int, grpo: dict[str, Any]) -> dict[str, Any]:
    """One GRPO step: sample, score, one update; adds its token counts to ``grpo``, returns its curve row."""
    import torch

    cfg, lm, policy = ctx.cfg, ctx.lm, ctx.lm.model
    torch.manual_seed(cfg.seed * 1_000_003 + step)
    items = train_items(cfg, GRPO_SEED_OFFSET + step * cfg.grpo_prompts, cfg.grpo_prompts)
    batch = model_inputs(lm, items, "structured")
    policy.eval()
    rep, ids, mask = sample_completions(policy, lm.tokenizer, batch, group_size=cfg.group_size,
                                        temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                                        generate_kwargs=ctx.generate_kwargs, suppress_ids=ctx.suppress)
    texts = [clean_decoded(t) for t in lm.tokenizer.batch_decode(ids * mask + lm.tokenizer.pad_token_id * (1 - mask),
                                                                  skip_special_tokens=True)]
    rewards = [ctx.reward_fn(t, items[i // cfg.group_size]) for i, t in enumerate(texts)]
    total = torch.tensor([r["total"] for r in rewards])
    adv = group_advantages(total, cfg.group_size)
    loss_mask = mask if ctx.pause is None else mask * (ids != ctx.pause.token_id).long()
    stats = grpo_update(policy, ctx.ref, ctx.opt, GRPOBatch(prompts=rep, ids=ids, mask=mask, advantages=adv,
                                                            loss_mask=loss_mask), ctx.update)
    seq_tokens = int(rep["attention_mask"].sum() + mask.sum())
    grpo["sample_tokens"] += seq_tokens
    grpo["update_tokens"] += seq_tokens * cfg.grpo_iterations
    grpo["ref_tokens"] += seq_tokens
    g = total.view(-1, cfg.group_size)
    pauses = float((ids == ctx.pause.token_id).sum(1).float().mean()) if ctx.pause is not None else 0.0
    return {"step": step, **{k: round(float(np.mean([r[k] for r in rewards])), 4) for k in (*ctx.reward_names, "total")},
            "pauses_per_completion": round(pauses, 3),
            "zero_std_groups": int((g.std(1) < 1e-8).sum()), "completion_tokens": round(float(mask.sum(1).float().mean()), 2),
            **{k: float(f"{v:.6g}") for k, v in stats.items()}}


def _grpo_phase(lm, cfg: FinetuneConfig, work: _WorkFolder, pause_cfg: PauseConfig | None, *,
                progress: bool) -> tuple[dict[str, Any], bool]:
    """Phase 2 from its last checkpoint (if any) until ``grpo_steps`` or the time limit;
    returns its record and whether it stopped early."""
    ctx = _grpo_context(lm, cfg, pause_cfg)
    grpo = work.state.get("grpo", copy.deepcopy(_NEW_GRPO))
    if grpo["steps"] and has_optimizer(work.path / "grpo"):
        _load_weights(lm.model, work.path / "grpo")
        load_optimizer(work.path / "grpo", ctx.opt)
    bar = None
    if progress and cfg.grpo_steps:

        bar = tqdm(total=cfg.grpo_steps, initial=grpo["steps"], desc="GRPO", unit="step")
    stopped_early = False
    for step in range(grpo["steps"], cfg.grpo_steps):
        # the next step is expected to take as long as the recent ones: stop if it would end past the cap
        expected = float(np.mean(grpo["step_seconds"][-5:])) / 60 if grpo["step_seconds"] else 0.0
        if work.minutes() + expected > cfg.max_minutes - _SAVE_RESERVE_MIN:
            stopped_early = True
            break
        t0 = time.time()
        row = _grpo_step(ctx, step, grpo)
        grpo["curves"].append(row)
        grpo["step_seconds"].append(round(time.time() - t0, 3))
        grpo["steps"] = step + 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(reward=f"{row['total']:.3f}", acc=f"{row['answer']:.2f}", kl=f"{row['kl']:.3f}")
        if cfg.save_every and grpo["steps"] % cfg.save_every == 0 and grpo["steps"] < cfg.grpo_steps:
            _save_folder(work.path / "grpo", lm.model, lm.processor, json_files={}, opt=ctx.opt)
            work.save_state(grpo=grpo)
    if bar is not None:
        bar.close()
    return grpo, stopped_early


# --------------------------------------------------------------- step 5: the final folder
def _final_record(lm, cfg: FinetuneConfig, base_dir, *, n_params: int, sft: dict[str, Any], grpo: dict[str, Any],
                  stopped_early: bool, pause_cfg: PauseConfig | None, minutes: float,
                  lora: dict[str, Any] | None = None) -> dict[str, Any]:
    """What ``finetune.json`` holds."""
    _, reward_names = _rewards_of(cfg)
    sft_steps_s = sft["minutes"] * 60 / max(sft["steps"], 1)
    return {
        "recipe": cfg.recipe,
        "recipe_description": ("MPAR²-style SFT (TRL SFTTrainer) + GRPO (own loop), see finetuning" if cfg.recipe == "mpar2"
                               else "HyPeR-style Stage I SFT (TRL SFTTrainer) + Stage II GRPO with PAUSE tokens, "
                                    "see auralens.finetuning.hyper"),
        "pause": pause_cfg.to_json() if pause_cfg is not None else None,
        "base": str(base_dir), "base_source": lm.source, "base_training": _base_training(lm.source),
        "config": asdict(cfg), "n_params": n_params, "lora": lora,
        "sft": sft,
        "grpo": {k: v for k, v in grpo.items() if k not in ("step_seconds", "curves")},  # curves: reward_curves
        "steps": {"sft": sft["steps"], "grpo": grpo["steps"]},
        "stopped_early": stopped_early or sft["steps"] < cfg.sft_steps,
        "minutes": round(minutes, 3),
        "timing": {"sft_seconds_per_step": round(sft_steps_s, 3),
                   "grpo_seconds_per_step": round(float(np.mean(grpo["step_seconds"])), 3) if grpo["step_seconds"] else None,
                   "threads": cfg.threads},
        "reward_curves": grpo["curves"],
        "compute_flops": _compute(n_params, sft["tokens"], grpo["sample_tokens"], grpo["update_tokens"], grpo["ref_tokens"],
                                  lora=lora is not None),
        "rewards": ({"combination": "geometric mean, no epsilon", "names": list(REWARD_NAMES)} if cfg.recipe == "mpar2"
                    else {"combination": "0.7 answer + 0.2 perceptual_consistency + 0.1 length, + format (binary)",
                          "names": list(reward_names)}),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _save_final(out_dir: Path, work: _WorkFolder, lm, info: dict[str, Any], pause_cfg: PauseConfig | None) -> None:
    """The final folder in one rename (weights, config, processor, ``finetune.json``, HyPeR's
    ``pause.json``); the work folder goes."""
    files = {"finetune.json": info}
    if pause_cfg is not None:
        files[PAUSE_FILE] = pause_cfg.to_json()
    _save_folder(out_dir, lm.model, lm.processor, json_files=files)
    shutil.rmtree(work.path, ignore_errors=True)


# -------------------------------------------------------------------------------------- main
def finetune(base_dir: str | Path, out_dir: str | Path, cfg: FinetuneConfig = FinetuneConfig(), *,
             resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Fine-tune ``base_dir`` (anything :func:`auralens.interp.loading.load_model` loads: ``"micro"``, a
    folder, a hub id) with ``cfg.recipe`` (MPAR²-style or HyPeR-style) into ``out_dir``; returns
    what ``finetune.json`` holds.  Steps: check the inputs (a bad option, output folder or base
    model fails before ``.<out>.work`` is touched), prepare the work folder, SFT, the PAUSE rule
    (HyPeR), GRPO, the final folder."""
    import torch

    if not isinstance(cfg, FinetuneConfig):
        raise ConfigError(f"cfg: expected a FinetuneConfig, found {type(cfg).__name__}")
    torch.set_num_threads(cfg.threads)
    t_start = time.time()
    out_dir = Path(out_dir)
    work_path = out_dir.with_name(f".{out_dir.name}.work")
    identity = _identity(asdict(cfg))
    done = _finished_run(out_dir, identity, resume=resume)
    if done is not None:
        return done
    state = _resumed_state(work_path, identity, base_dir, resume=resume)
    lm = _load_base(base_dir, cfg)
    n_params = _n_params(lm.model)
    lora = _apply_lora(lm, cfg)
    work = _WorkFolder(work_path, cfg=cfg, base_dir=base_dir, state=state, t_start=t_start)
    torch.manual_seed(cfg.seed)
    sft = _sft_phase(lm, cfg, work, progress=progress)
    pause_cfg = _pause_rule(lm, cfg, work)
    grpo, stopped_early = _grpo_phase(lm, cfg, work, pause_cfg, progress=progress)
    merge_lora(lm)  # the final folder holds merged weights (see auralens.finetuning.lora)
    lm.model.eval()
    info = _final_record(lm, cfg, base_dir, n_params=n_params, sft=sft, grpo=grpo, stopped_early=stopped_early,
                         pause_cfg=pause_cfg, minutes=work.minutes(), lora=lora)
    _save_final(out_dir, work, lm, info, pause_cfg)
    return info
