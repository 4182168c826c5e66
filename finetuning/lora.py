"""LoRA for the fine-tuning recipe (``FinetuneConfig.lora_r > 0``): adapters on the decoder's
linear projections only, applied with peft (:class:`peft.LoraConfig`, :func:`peft.get_peft_model`),
trained by both phases (SFT on TRL's Trainer, GRPO's own loop), merged into the weights at the end.

**Which modules.**  The decoder is found from the architecture table (``lm.arch.table.decoder_layers``,
e.g. ``model.language_model.layers``), never from one model's names: ``lora_targets="auto"`` takes
the leaf name of every ``nn.Linear`` inside the decoder layers (``q_proj, k_proj, v_proj, o_proj,
gate_proj, up_proj, down_proj`` on Qwen2 / Llama decoders such as SmolLM2); explicit names must
each be the leaf of at least one such module.  peft gets the *full* module names, so an audio
encoder or projector layer sharing a leaf name (Whisper's ``q_proj``) is never adapted.

**Why merged weights in the final folder.**  Every downstream stage (eval, record, steer, compare)
loads a model with :func:`auralens.interp.loading.load_model` and hooks modules by the paths of the
architecture table; a peft adapter folder would need a second loading path and, unmerged, puts
``base_layer`` / ``lora_A`` modules under those paths.  ``merge_and_unload`` gives back the base
class with ``W + (alpha / r)·B·A`` folded in: the same files, the same loader, the same hooks.  The
adapter itself is kept only in the work folder's checkpoints (``adapter_model.safetensors``), where
resume needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from auralens.interp.errors import ConfigError

__all__ = ["ADAPTER_FILE", "apply_lora", "decoder_linear_names", "is_lora", "load_adapter", "merge_lora",
           "resolve_targets", "trainable_parameters"]

ADAPTER_FILE = "adapter_model.safetensors"  # what PeftModel.save_pretrained writes


def decoder_linear_names(model, decoder_layers: str) -> dict[str, list[str]]:
    """``{leaf name: [full module names]}`` of every ``nn.Linear`` under ``decoder_layers``
    (a dotted path from the top model, the architecture table's)."""
    import torch

    try:
        layers = model.get_submodule(decoder_layers)
    except AttributeError as e:
        raise ConfigError(f"LoRA: the architecture's decoder path {decoder_layers!r} is not a module of "
                          f"{type(model).__name__}") from e
    out: dict[str, list[str]] = {}
    for name, mod in layers.named_modules():
        if name and isinstance(mod, torch.nn.Linear):
            out.setdefault(name.rsplit(".", 1)[-1], []).append(f"{decoder_layers}.{name}")
    return out


def resolve_targets(model, decoder_layers: str, targets: str) -> list[str]:
    """The full names of the decoder's linear modules that ``targets`` (``"auto"`` or
    comma-separated leaf names) selects; an unknown name is a one-line :class:`ConfigError`."""
    found = decoder_linear_names(model, decoder_layers)
    if not found:
        raise ConfigError(f"FinetuneConfig.lora_targets: the decoder ({decoder_layers}) has no linear modules")
    names = sorted(found) if targets == "auto" else [t.strip() for t in targets.split(",") if t.strip()]
    unknown = [t for t in names if t not in found]
    if unknown:
        raise ConfigError(f"FinetuneConfig.lora_targets: expected leaf names of the decoder's linear modules "
                          f"({', '.join(sorted(found))}), found {', '.join(map(repr, unknown))}")
    return [full for t in names for full in found[t]]


def apply_lora(lm, *, r: int, alpha: int, dropout: float, targets: str) -> dict[str, Any]:
    """Wrap ``lm.model`` in a peft LoRA model (in place on ``lm``; every other weight frozen);
    returns what ``finetune.json`` records (targets, trainable and total parameters)."""
    from peft import LoraConfig, get_peft_model

    modules = resolve_targets(lm.model, lm.arch.table.decoder_layers, targets)
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=modules, bias="none")
    lm.model = get_peft_model(lm.model, cfg)
    n_train = sum(p.numel() for p in lm.model.parameters() if p.requires_grad)
    return {"r": r, "alpha": alpha, "dropout": dropout, "decoder_layers": lm.arch.table.decoder_layers,
            "targets": sorted({m.rsplit(".", 1)[-1] for m in modules}), "modules": len(modules),
            "trainable_params": int(n_train), "saved_as": "merged weights (merge_and_unload)"}


def is_lora(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def trainable_parameters(model) -> list:
    """The parameters an optimiser updates: the adapters' under LoRA, every one otherwise
    (today's full fine-tune, whose optimizer checkpoints index ``model.parameters()``)."""
    if is_lora(model):
        return [p for p in model.parameters() if p.requires_grad]
    return list(model.parameters())


def load_adapter(model, folder: Path) -> None:
    """Load a checkpoint's adapter weights (``adapter_model.safetensors``) into the peft ``model``;
    every adapter weight must be there."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    res = set_peft_model_state_dict(model, load_file(str(Path(folder) / ADAPTER_FILE)))
    missing = [k for k in getattr(res, "missing_keys", []) if "lora_" in k]
    unexpected = list(getattr(res, "unexpected_keys", []))
    if missing or unexpected:
        raise ConfigError(f"LoRA checkpoint {str(folder)!r}: expected the run's adapter weights, found "
                          f"{len(missing)} missing and {len(unexpected)} unexpected")


def merge_lora(lm) -> None:
    """Fold the adapters into the weights: ``lm.model`` becomes the base class again."""
    if is_lora(lm.model):
        lm.model = lm.model.merge_and_unload()
