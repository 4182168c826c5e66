"""The systems of ``auralens compare`` (:mod:`auralens.compare`): which fine-tuned arms exist,
each model's native format, training and steering-fit cost, the identity of its weights, and a
chosen steering setting (:class:`Steer`) read from a ``steer eval`` run."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from auralens.finetuning.config import FinetuneConfig
from auralens.finetuning.recipe import finetune
from auralens.interp import distributed as dist
from auralens.interp.cafe.formats import FORMATS  # the order of TrainConfig.format_weights
from auralens.interp.errors import ConfigError
from auralens.interp.generation import model_inputs
from auralens.interp.loading import resolve_source
from auralens.interp.micro import available
from auralens.steering.evaluate import PerInput

__all__ = ["TRAINABLE_ARMS", "Steer", "embedded_arm", "finetune_config", "finetune_cost", "fit_flops", "native_format",
           "read_steer_run", "steering_minutes", "train_arm", "vector_digest", "weights_identity"]

#: the arms ``auralens compare`` can train itself (``--mpar2 train`` / ``--sft train``)
TRAINABLE_ARMS: tuple[str, ...] = ("mpar2", "sft")
_STEER_MINUTES = "minutes.json"


def finetune_config(arm: str, *, lora_r: int, max_minutes: float, sft_steps: int, grpo_steps: int, threads: int,
                    sft_batch_size: int = 16, grpo_prompts: int = 8, group_size: int = 8) -> FinetuneConfig:
    """The recipe of an arm trained by compare: MPAR²-style SFT + GRPO (``"mpar2"``) or its SFT
    phase alone (``"sft"``: ``grpo_steps=0``, the whole budget for SFT); the other knobs are
    :class:`FinetuneConfig`'s defaults.  A bad option is a ConfigError naming the arm."""
    if arm not in TRAINABLE_ARMS:
        raise ConfigError(f"train: expected an arm in {list(TRAINABLE_ARMS)}, found {arm!r}")
    try:
        return FinetuneConfig(recipe="mpar2", lora_r=lora_r, max_minutes=max_minutes, sft_steps=sft_steps,
                              grpo_steps=grpo_steps if arm == "mpar2" else 0, threads=threads,
                              sft_batch_size=sft_batch_size, grpo_prompts=grpo_prompts, group_size=group_size)
    except ConfigError as e:
        raise ConfigError(f"--{arm} train: {e}") from None


def train_arm(base: str, folder: Path, cfg: FinetuneConfig, *, resume: bool, progress: bool) -> str:
    """Fine-tune ``base`` into ``folder`` (a finished run under ``resume`` is kept as it is); the folder."""
    finetune(base, folder, cfg, resume=resume, progress=progress)
    return str(folder)


def steering_minutes(folder: Path, minutes: float) -> float:
    """Add ``minutes`` to the steering folder's ``minutes.json`` (fit + dev sweep, summed over the
    sessions of a resumed run) and return the total."""
    p = Path(folder) / _STEER_MINUTES
    total = round(minutes + (float(json.loads(p.read_text()).get("minutes", 0.0)) if p.is_file() else 0.0), 4)
    if dist.writes_allowed():  # rank 0 of a launch writes it (and its tables); the others read it back
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps({"minutes": total}))
        tmp.replace(p)
    return total

def embedded_arm(base: str, recipe: str) -> str | None:
    """``<base>-<recipe>`` where that embedded model exists, else ``None``."""
    name = f"{base}-{recipe}"
    return name if available(name) else None


def native_format(lm) -> str:
    """The format a micro model was trained on (its training.json format weights), else structured."""
    p = Path(lm.source) / "training.json"
    if p.is_file():
        w = (json.loads(p.read_text()).get("train_config") or {}).get("format_weights")
        if isinstance(w, list) and len(w) == len(FORMATS):
            return FORMATS[int(np.argmax(w))]
    return "structured"


def finetune_cost(lm) -> tuple[float, float, str]:
    """Training FLOPs, minutes and a note, from the model folder's ``finetune.json`` (NaNs without one)."""
    p = Path(lm.source) / "finetune.json"
    if not p.exists():
        return np.nan, np.nan, f"no finetune.json in {lm.source}: training compute unknown"
    info = json.loads(p.read_text())
    total = (info.get("compute_flops") or {}).get("total")
    lora = info.get("lora")
    train = (f"LoRA r={lora.get('r')} on the decoder, 4·N·tokens (SFT, GRPO updates)" if isinstance(lora, dict)
             else "6·N·tokens (SFT, GRPO updates)")
    steps = info.get("steps")
    stopped = (f"; stopped by the time budget at {steps.get('sft')} SFT / {steps.get('grpo')} GRPO steps"
               if info.get("stopped_early") and isinstance(steps, dict) else "")
    return (float(total) if total is not None else np.nan, float(info.get("minutes", np.nan)),
            f"from {p.name}: {train} + 2·N·tokens (sampling, reference); "
            f"{info.get('timing', {}).get('threads', '?')} CPU threads{stopped}")


def fit_flops(vec, lm, items, fmt) -> tuple[float, str]:
    """Estimated FLOPs of fitting ``vec`` (from its recorded fit size and the mean prompt length of
    ``items`` in its fit format) and a note; NaN where the vector does not record its fit."""
    fit = (vec.extra or {}).get("fit") if vec is not None else None
    if not isinstance(fit, dict) or not isinstance(fit.get("n"), int):
        return np.nan, "the vector does not record its fit data (extra['fit']): fit cost unknown"
    sample = list(items[: min(len(items), 8)])
    batch = model_inputs(lm, sample, fit.get("format", fmt))
    mean_tokens = float(batch["attention_mask"].sum()) / len(sample)
    n_params = sum(p.numel() for p in lm.model.parameters())
    return (2.0 * n_params * 2 * fit["n"] * mean_tokens,
            f"estimate: {fit['n']} fit items × 2 forwards (audio, silence) × {mean_tokens:.0f} mean prompt tokens × 2·N")


def vector_digest(vec) -> str:
    """sha256 of the vector's stacked float values."""
    return hashlib.sha256(vec.stacked().float().cpu().numpy().tobytes()).hexdigest()


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


_MODEL_JSON = ("config.json", "pause.json", "finetune.json", "training.json", "generation_config.json")


def weights_identity(model: str) -> str | None:
    """sha256 of a local model folder's weight files and the JSON files that change what it
    generates (``pause.json``) or report (``finetune.json``), so a resume refuses a model retrained
    or replaced under the same name; ``None`` for a hub id (no local folder to read)."""
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


@dataclass(frozen=True)
class Steer:
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
                per_row = PerInput(self.vec).rows(lm, list(items), [self.layer], fmt, batch_size)
            return apply_vector(lm, self.vec, alpha=self.beta, positions=self.positions, layers=[self.layer],
                                per_row=per_row)

        return ctx

    @property
    def extra_forwards(self) -> int:
        """Forwards per item beyond generation: 0 for a fixed vector, per-input ``s(x)``'s passes otherwise."""
        if self.mode != "per_input":
            return 0
        return PerInput(self.vec).extra_forwards([self.layer])  # 1 (silence) where the real pass is folded

    def describe(self) -> dict[str, Any]:
        """The setting as recorded in the summary (source, mode, layer, beta, positions, vector digest)."""
        return {"source": self.source, "mode": self.mode, "layer": self.layer, "beta": self.beta,
                "positions": self.positions, "chosen_in_format": self.fmt, "vector_sha256": vector_digest(self.vec),
                "method": self.vec.method, "fitted_on": self.vec.model_id}


def read_steer_run(path) -> Steer:
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
    return Steer(vec=vec, mode=str(s["mode"]), layer=int(s["layers"][0]), beta=float(s["beta"]),
                 positions=str(s["positions"]), fmt=str(s.get("format", "")), source=str(path))

