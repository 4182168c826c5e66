"""The MPAR²-style recipe's configuration (:class:`FinetuneConfig`) and its fixed numbers."""

from __future__ import annotations

import math
from dataclasses import dataclass

from auralens.interp.errors import ConfigError

__all__ = ["CUE_MIXES", "GRPO_SEED_OFFSET", "LOSS_TYPES", "MEASURED", "RECIPES", "SEED_BLOCK", "SFT_TIME_SHARE",
           "FinetuneConfig"]

SFT_TIME_SHARE = 0.4  # SFT stops after this share of max_minutes, leaving the rest to GRPO
# seeds: SFT items data_seed*100000 + i, GRPO prompts data_seed*100000 + 50000 + i
SEED_BLOCK, GRPO_SEED_OFFSET = 100_000, 50_000
#: GRPO's loss aggregations (see :func:`auralens.finetuning.grpo.grpo_loss`).
LOSS_TYPES: tuple[str, ...] = ("dapo", "grpo")
#: the two arms: MPAR²-style (geometric mean of five rewards) and HyPeR-style (PAUSE + weighted sum)
RECIPES: tuple[str, ...] = ("mpar2", "hyper")
#: training items: ``"none"`` plain cafe questions; ``"chance"`` the healthy micro's distribution —
#: half the questions carry a text cue naming a uniformly drawn choice (right at chance), so a cue
#: is seen and carries no information (:data:`auralens.interp.micro.organisms.RECIPES` ``["micro"]``)
CUE_MIXES: tuple[str, ...] = ("none", "chance")

#: seconds per step measured on the shared 2-core development machine (micro; 1 torch thread while
#: another training run held the other core), from which the default step counts were set:
#: SFT at batch 16, GRPO at 8 prompts x 8 completions (~50 generated tokens each).
MEASURED: dict[str, float] = {"sft_step_b16_1thread": 0.36, "grpo_step_p8_g8_1thread": 2.32}


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """The MPAR²-style recipe's knobs (see :mod:`finetuning`).

    Attributes:
        sft_steps, sft_batch_size, lr: phase 1 (AdamW, cosine schedule with warmup).
        grpo_steps, grpo_prompts, group_size, grpo_lr: phase 2 (prompts per step, completions
            per prompt, AdamW learning rate).
        kl_coef: β of the KL penalty to the SFT model.  clip_eps: ε of the clipped ratio.
        grpo_iterations: updates per sampled batch (1: plain policy gradient with a baseline).
        loss_type: ``"dapo"`` (token-level mean over the batch, no length bias; TRL's default) or
            ``"grpo"`` (per-completion mean, the original paper's aggregation).
        temperature, max_new_tokens: sampling of the GRPO completions.
        max_minutes: wall-clock cap of the whole run.  seed: torch / sampling seed.
        data_seed: cafe item block (keep it different from the evaluation seed, 7 by default).
        threads: torch CPU threads.  save_every: GRPO checkpoint period (steps; 0 = never).
        dtype: model dtype ("float32" on CPU; "bfloat16" for a 7B model on GPU).
        recipe: ``"mpar2"`` (:mod:`finetuning`) or ``"hyper"`` (:mod:`auralens.finetuning.hyper`).
        cue_mix: the training items (:data:`CUE_MIXES`).
        pause_quantile, max_pauses: HyPeR's PAUSE rule (entropy threshold = this quantile of the
            Stage-I model's next-token entropies; pauses per answer); unused by ``"mpar2"``.
            0.98 was chosen on ``micro-prior``'s dev splits (structured answers, 100 items per cue
            condition) between 0.9 and 0.98: 0.74 / 0.79 / 0.72 (neutral / congruent / conflict)
            with 0.9 (three pauses in nearly every answer, KL to the SFT model ~0.3) against
            0.84 / 0.86 / 0.81 with 0.98 (0.25 pauses per answer, KL ~0.06); test items never seen.
        lora_r: LoRA rank (:mod:`auralens.finetuning.lora`; 0 = full fine-tune, the behaviour before
            LoRA existed).  Adapters on the decoder only, trained by SFT and GRPO, merged at the end.
        lora_alpha, lora_dropout: the adapters' scale (``alpha / r``) and dropout.
        lora_targets: ``"auto"`` (every linear module of the decoder layers, resolved from the
            architecture table) or comma-separated leaf names (``"q_proj,v_proj"``).
    """

    sft_steps: int = 600
    sft_batch_size: int = 16
    lr: float = 3e-4
    grpo_steps: int = 400
    grpo_prompts: int = 8
    group_size: int = 8
    grpo_lr: float = 1e-4
    kl_coef: float = 0.04
    clip_eps: float = 0.2
    grpo_iterations: int = 1
    loss_type: str = "dapo"
    temperature: float = 1.0
    max_new_tokens: int = 80
    max_minutes: float = 28.0
    seed: int = 0
    data_seed: int = 3
    threads: int = 2
    save_every: int = 20
    dtype: str = "float32"
    recipe: str = "mpar2"
    cue_mix: str = "chance"
    pause_quantile: float = 0.98
    max_pauses: int = 3
    lora_r: int = 0
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: str = "auto"

    def __post_init__(self) -> None:
        ints = {"sft_steps": 0, "sft_batch_size": 1, "grpo_steps": 0, "grpo_prompts": 1, "group_size": 2,
                "grpo_iterations": 1, "max_new_tokens": 1, "threads": 1, "save_every": 0, "seed": 0, "data_seed": 0}
        for name, lo in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"FinetuneConfig.{name}: expected an integer >= {lo}, found {v!r}")
        positive = ("lr", "grpo_lr", "temperature", "max_minutes")
        for name in (*positive, "kl_coef", "clip_eps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"FinetuneConfig.{name}: expected a finite number, found {v!r}")
            if (name in positive and v <= 0) or v < 0:
                raise ConfigError(f"FinetuneConfig.{name}: expected a number {'> 0' if name in positive else '>= 0'}, found {v!r}")
        if self.sft_steps + self.grpo_steps == 0:
            raise ConfigError("FinetuneConfig: expected sft_steps + grpo_steps >= 1, found 0 and 0")
        if self.sft_steps * self.sft_batch_size > GRPO_SEED_OFFSET:
            raise ConfigError(
                f"FinetuneConfig: sft_steps * sft_batch_size must be <= {GRPO_SEED_OFFSET} (one seed block), "
                f"found {self.sft_steps * self.sft_batch_size}"
            )
        if self.grpo_steps * self.grpo_prompts > SEED_BLOCK - GRPO_SEED_OFFSET:
            raise ConfigError(
                f"FinetuneConfig: grpo_steps * grpo_prompts must be <= {SEED_BLOCK - GRPO_SEED_OFFSET}, "
                f"found {self.grpo_steps * self.grpo_prompts}"
            )
        if self.data_seed == 7:
            raise ConfigError(
                "FinetuneConfig.data_seed: expected a seed other than 7 (the default evaluation seed of every "
                "stage, so training would see the evaluation items), found 7"
            )
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"FinetuneConfig.loss_type: expected one of {list(LOSS_TYPES)}, found {self.loss_type!r}")
        if self.recipe not in RECIPES:
            raise ConfigError(f"FinetuneConfig.recipe: expected one of {list(RECIPES)}, found {self.recipe!r}")
        if self.cue_mix not in CUE_MIXES:
            raise ConfigError(f"FinetuneConfig.cue_mix: expected one of {list(CUE_MIXES)}, found {self.cue_mix!r}")
        q = self.pause_quantile
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 < q < 1.0:
            raise ConfigError(f"FinetuneConfig.pause_quantile: expected a number in (0, 1), found {q!r}")
        if isinstance(self.max_pauses, bool) or not isinstance(self.max_pauses, int) or self.max_pauses < 1:
            raise ConfigError(f"FinetuneConfig.max_pauses: expected an integer >= 1, found {self.max_pauses!r}")
        self._check_lora()
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"FinetuneConfig.dtype: expected float32, bfloat16 or float16, found {self.dtype!r}")

    def _check_lora(self) -> None:
        r = self.lora_r
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise ConfigError(f"FinetuneConfig.lora_r: expected an integer >= 0 (0 = full fine-tune), found {r!r}")
        a = self.lora_alpha
        if isinstance(a, bool) or not isinstance(a, int) or a < 1:
            raise ConfigError(f"FinetuneConfig.lora_alpha: expected an integer >= 1, found {a!r}")
        d = self.lora_dropout
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d < 1.0:
            raise ConfigError(f"FinetuneConfig.lora_dropout: expected a number in [0, 1), found {d!r}")
        t = self.lora_targets
        if not isinstance(t, str) or not t.strip() or (t != "auto" and not all(x.strip() for x in t.split(","))):
            raise ConfigError(f"FinetuneConfig.lora_targets: expected 'auto' or comma-separated module names "
                              f"(q_proj,v_proj), found {t!r}")
        if r > 0 and self.recipe == "hyper":
            raise ConfigError("FinetuneConfig.lora_r: LoRA is supported for recipe 'mpar2' (and its SFT-only arm), "
                              "found recipe 'hyper' (its PAUSE token's new embedding row would stay untrained)")
