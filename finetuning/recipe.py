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
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from auralens.finetuning.config import GRPO_SEED_OFFSET, SEED_BLOCK, SFT_TIME_SHARE, FinetuneConfig
from auralens.finetuning.grpo import group_advantages, grpo_update, sample_completions
from auralens.finetuning.rewards import REWARD_NAMES, combine_rewards, trace_rewards
from auralens.finetuning.sft import run_sft
from auralens.interp.errors import ConfigError

__all__ = ["finetune"]

_SAVE_RESERVE_MIN = 0.5  # GRPO stops this many minutes before max_minutes to save


# ------------------------------------------------------------------------------- checkpoints
def _save_folder(folder: Path, model, processor, *, json_files: Mapping[str, Any], opt=None) -> None:
    """One checkpoint (:func:`auralens.interp.micro.train.save_checkpoint`: atomic, no pickle)."""
    from auralens.interp.micro.train import save_checkpoint

    save_checkpoint(folder, model, processor, json_files=dict(json_files), opt=opt)


def _load_weights(model, folder: Path) -> None:
    """Load a checkpoint written by ``save_pretrained`` into ``model`` (strict).  Through
    ``from_pretrained``: transformers renames keys on save (``model.audio_tower.*`` is stored as
    ``audio_tower.*``), so the raw safetensors keys do not match ``model.state_dict()``."""
    param = next(model.parameters())
    loaded = type(model).from_pretrained(str(folder), dtype=param.dtype)
    model.load_state_dict(loaded.state_dict(), strict=True)


# ----------------------------------------------------------------------------------- GRPO data
def train_item(cfg: FinetuneConfig, seed: int):
    """One training item of seed ``seed`` under ``cfg.cue_mix`` (SFT and GRPO share it)."""
    from auralens.interp.cafe.questions import make_item

    if cfg.cue_mix == "none":
        return make_item(seed)
    from auralens.interp.micro.organisms import RECIPES, organism_item

    return organism_item(seed, RECIPES["micro"])  # the healthy model's items: cues at chance validity


def _items(cfg: FinetuneConfig, start: int, n: int):
    return [train_item(cfg, cfg.data_seed * SEED_BLOCK + start + i) for i in range(n)]


# -------------------------------------------------------------------------------------- main
def _n_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _base_training(source: str) -> dict[str, Any] | None:
    """Provenance of an embedded / locally trained base: its training.json summary, if any."""
    p = Path(source) / "training.json"
    if not p.exists():
        return None
    info = json.loads(p.read_text())
    return {k: info.get(k) for k in ("steps_done", "items_seen", "minutes", "final_loss")}


def _compute(n_params: int, sft_tokens: int, sample_tokens: int, update_tokens: int, ref_tokens: int) -> dict[str, float]:
    c = {
        "sft": 6.0 * n_params * sft_tokens,
        "grpo_sampling": 2.0 * n_params * sample_tokens,
        "grpo_updates": 6.0 * n_params * update_tokens,
        "grpo_reference": 2.0 * n_params * ref_tokens,
    }
    c["total"] = sum(c.values())
    return c


def finetune(base_dir: str | Path, out_dir: str | Path, cfg: FinetuneConfig = FinetuneConfig(), *,
             resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Fine-tune ``base_dir`` (anything :func:`auralens.interp.loading.load_model` loads: ``"micro"``, a
    folder, a hub id) with ``cfg.recipe`` (MPAR²-style or HyPeR-style) into ``out_dir``; returns
    what ``finetune.json`` holds."""
    import copy

    import torch

    from auralens.interp.generation import model_inputs
    from auralens.interp.loading import load_model

    if not isinstance(cfg, FinetuneConfig):
        raise ConfigError(f"cfg: expected a FinetuneConfig, found {type(cfg).__name__}")
    torch.set_num_threads(cfg.threads)
    t_start = time.time()
    out_dir = Path(out_dir)
    work = out_dir.with_name(f".{out_dir.name}.work")
    cfg_dict = asdict(cfg)
    runtime = {"max_minutes", "threads", "save_every"}  # may change between sessions
    identity = {k: v for k, v in cfg_dict.items() if k not in runtime}
    if (out_dir / "finetune.json").exists():
        done = json.loads((out_dir / "finetune.json").read_text())
        if resume and {k: v for k, v in done.get("config", {}).items() if k not in runtime} == identity:
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
    state: dict[str, Any] = {}
    resuming = resume and (work / "state.json").exists()
    if resuming:
        state = json.loads((work / "state.json").read_text())
        old = {k: v for k, v in state.get("config", {}).items() if k not in runtime}
        if old != identity or state.get("base") != str(base_dir):
            raise ConfigError(f"finetune --resume: {work} was started with {old} on {state.get('base')}, not {identity} on {base_dir}")
    from auralens.interp.runs import check_model

    check_model(str(base_dir))  # one-line error for a folder without a usable config (load_model's is a ValueError)
    lm = load_model(str(base_dir), dtype=cfg.dtype)  # a bad model fails before .<out>.work is touched
    if not resuming and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    minutes_before = float(state.get("minutes", 0.0))

    def minutes() -> float:
        return minutes_before + (time.time() - t_start) / 60

    def save_state(**changes) -> None:
        state.update(changes, config=cfg_dict, base=str(base_dir), minutes=round(minutes(), 3))
        (work / "state.json").write_text(json.dumps(state, indent=2))

    n_params = _n_params(lm.model)
    torch.manual_seed(cfg.seed)

    # ---- phase 1: SFT -------------------------------------------------------------------
    if "sft" in state and (work / "sft" / "config.json").exists():
        _load_weights(lm.model, work / "sft")
        sft = state["sft"]
    elif cfg.sft_steps > 0:
        sft = run_sft(lm, cfg, work_dir=work, max_minutes=cfg.max_minutes * SFT_TIME_SHARE - minutes(), progress=progress)
        torch.set_num_threads(cfg.threads)
        _save_folder(work / "sft", lm.model, lm.processor, json_files={})
        save_state(sft=sft)
    else:
        sft = {"steps": 0, "losses": [], "tokens": 0, "minutes": 0.0}
        save_state(sft=sft)

    # ---- HyPeR: the PAUSE token and its entropy threshold (calibrated once, kept in the state) ---
    pause_cfg = None
    reward_fn, reward_names = trace_rewards, REWARD_NAMES
    if cfg.recipe == "hyper":
        from auralens.finetuning.hyper import HYPER_REWARD_NAMES, add_pause_token, calibrate_threshold, hyper_rewards
        from auralens.interp.pause import PauseConfig

        reward_fn, reward_names = hyper_rewards, HYPER_REWARD_NAMES
        pause_id = add_pause_token(lm)
        if "pause" not in state:
            torch.manual_seed(cfg.seed * 1_000_003 - 1)
            cal = model_inputs(lm, _items(cfg, SEED_BLOCK - 1000, 16), "structured")
            thr = calibrate_threshold(lm.model, lm.tokenizer, cal, pause_id=pause_id, quantile=cfg.pause_quantile,
                                      temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                                      generate_kwargs=lm.arch.table.generate_kwargs,
                                      suppress_ids=[int(lm.arch.audio_token_id)])
            save_state(pause=PauseConfig(token_id=pause_id, entropy_threshold=round(thr, 6),
                                         max_pauses=cfg.max_pauses).to_json())
        pause_cfg = PauseConfig(**state["pause"])
    from auralens.interp.pause import generate_kwargs_for

    gen_kwargs = {**lm.arch.table.generate_kwargs, **generate_kwargs_for(pause_cfg)}

    # ---- phase 2: GRPO ------------------------------------------------------------------
    policy = lm.model
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.grpo_lr, weight_decay=0.0, betas=(0.9, 0.99))
    grpo = state.get("grpo", {"steps": 0, "curves": [], "sample_tokens": 0, "update_tokens": 0, "ref_tokens": 0,
                              "step_seconds": []})
    from auralens.interp.micro.train import has_optimizer, load_optimizer

    if grpo["steps"] and has_optimizer(work / "grpo"):
        _load_weights(policy, work / "grpo")
        load_optimizer(work / "grpo", opt)
    suppress = [int(lm.arch.audio_token_id)]
    bar = None
    if progress and cfg.grpo_steps:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.grpo_steps, initial=grpo["steps"], desc="GRPO", unit="step")
    stopped_early = False
    for step in range(grpo["steps"], cfg.grpo_steps):
        if minutes() > cfg.max_minutes - _SAVE_RESERVE_MIN:
            stopped_early = True
            break
        t0 = time.time()
        torch.manual_seed(cfg.seed * 1_000_003 + step)
        items = _items(cfg, GRPO_SEED_OFFSET + step * cfg.grpo_prompts, cfg.grpo_prompts)
        batch = model_inputs(lm, items, "structured")
        policy.eval()
        rep, ids, mask = sample_completions(policy, lm.tokenizer, batch, group_size=cfg.group_size,
                                            temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                                            generate_kwargs=gen_kwargs, suppress_ids=suppress)
        from auralens.interp.tokenizer import clean_decoded

        texts = [clean_decoded(t) for t in lm.tokenizer.batch_decode(ids * mask + lm.tokenizer.pad_token_id * (1 - mask),
                                                                      skip_special_tokens=True)]
        rewards = [reward_fn(t, items[i // cfg.group_size]) for i, t in enumerate(texts)]
        total = torch.tensor([r["total"] for r in rewards])
        adv = group_advantages(total, cfg.group_size)
        loss_mask, lp_suppress = mask, suppress
        if pause_cfg is not None:  # a forced pause is not an action of the policy
            loss_mask = mask * (ids != pause_cfg.token_id).long()
            lp_suppress = [*suppress, pause_cfg.token_id]
        stats = grpo_update(policy, ref, opt, rep, ids, mask, adv, kl_coef=cfg.kl_coef, clip_eps=cfg.clip_eps,
                            temperature=cfg.temperature, iterations=cfg.grpo_iterations, suppress_ids=lp_suppress,
                            loss_type=cfg.loss_type, loss_mask=loss_mask)
        seq_tokens = int(rep["attention_mask"].sum() + mask.sum())
        grpo["sample_tokens"] += seq_tokens
        grpo["update_tokens"] += seq_tokens * cfg.grpo_iterations
        grpo["ref_tokens"] += seq_tokens
        g = total.view(-1, cfg.group_size)
        pauses = float((ids == pause_cfg.token_id).sum(1).float().mean()) if pause_cfg is not None else 0.0
        row = {"step": step, **{k: round(float(np.mean([r[k] for r in rewards])), 4) for k in (*reward_names, "total")},
               "pauses_per_completion": round(pauses, 3),
               "zero_std_groups": int((g.std(1) < 1e-8).sum()), "completion_tokens": round(float(mask.sum(1).float().mean()), 2),
               **{k: float(f"{v:.6g}") for k, v in stats.items()}}
        grpo["curves"].append(row)
        grpo["step_seconds"].append(round(time.time() - t0, 3))
        grpo["steps"] = step + 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(reward=f"{row['total']:.3f}", acc=f"{row['answer']:.2f}", kl=f"{row['kl']:.3f}")
        if cfg.save_every and grpo["steps"] % cfg.save_every == 0 and grpo["steps"] < cfg.grpo_steps:
            _save_folder(work / "grpo", policy, lm.processor, json_files={}, opt=opt)
            save_state(grpo=grpo)
    if bar is not None:
        bar.close()

    # ---- final folder -------------------------------------------------------------------
    policy.eval()
    sft_steps_s = sft["minutes"] * 60 / max(sft["steps"], 1)
    info = {
        "recipe": cfg.recipe,
        "recipe_description": ("MPAR²-style SFT (TRL SFTTrainer) + GRPO (own loop), see finetuning" if cfg.recipe == "mpar2"
                               else "HyPeR-style Stage I SFT (TRL SFTTrainer) + Stage II GRPO with PAUSE tokens, "
                                    "see auralens.finetuning.hyper"),
        "pause": pause_cfg.to_json() if pause_cfg is not None else None,
        "base": str(base_dir), "base_source": lm.source, "base_training": _base_training(lm.source),
        "config": cfg_dict, "n_params": n_params,
        "sft": sft,
        "grpo": {k: v for k, v in grpo.items() if k not in ("step_seconds", "curves")},  # curves: reward_curves
        "steps": {"sft": sft["steps"], "grpo": grpo["steps"]},
        "stopped_early": stopped_early or sft["steps"] < cfg.sft_steps,
        "minutes": round(minutes(), 3),
        "timing": {"sft_seconds_per_step": round(sft_steps_s, 3),
                   "grpo_seconds_per_step": round(float(np.mean(grpo["step_seconds"])), 3) if grpo["step_seconds"] else None,
                   "threads": cfg.threads},
        "reward_curves": grpo["curves"],
        "compute_flops": _compute(n_params, sft["tokens"], grpo["sample_tokens"], grpo["update_tokens"], grpo["ref_tokens"]),
        "rewards": ({"combination": "geometric mean, no epsilon", "names": list(REWARD_NAMES)} if cfg.recipe == "mpar2"
                    else {"combination": "0.7 answer + 0.2 perceptual_consistency + 0.1 length, + format (binary)",
                          "names": list(reward_names)}),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    files = {"finetune.json": info}
    if pause_cfg is not None:
        from auralens.interp.pause import PAUSE_FILE

        files[PAUSE_FILE] = pause_cfg.to_json()
    _save_folder(out_dir, policy, lm.processor, json_files=files)
    shutil.rmtree(work, ignore_errors=True)
    return info
