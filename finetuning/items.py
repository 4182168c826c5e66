"""The recipe's training items: one cafe item per seed, under :attr:`FinetuneConfig.cue_mix`
(SFT, GRPO and HyPeR's threshold calibration all draw from here)."""

from __future__ import annotations

from auralens.finetuning.config import SEED_BLOCK, FinetuneConfig
from auralens.interp.cafe.questions import make_item
from auralens.interp.micro.organisms import RECIPES, organism_item

__all__ = ["train_item", "train_items"]


def train_item(cfg: FinetuneConfig, seed: int):
    """One training item of seed ``seed`` under ``cfg.cue_mix``: a plain cafe question
    (``"none"``) or the healthy micro's item (``"chance"``: cues at chance validity)."""
    if cfg.cue_mix == "none":
        return make_item(seed)
    return organism_item(seed, RECIPES["micro"])


def train_items(cfg: FinetuneConfig, start: int, n: int) -> list:
    """The ``n`` training items of seeds ``cfg.data_seed * SEED_BLOCK + start + i``."""
    return [train_item(cfg, cfg.data_seed * SEED_BLOCK + start + i) for i in range(n)]
