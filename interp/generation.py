"""Batched generation over items, with real audio or a silence baseline, and answer scoring."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from auralens.interp.answers import score_text
from auralens.interp.audio import item_audio, silence_like
from auralens.interp.items import Item
from auralens.interp.prompts import build_inputs
from auralens.interp.tokenizer import clean_decoded

AUDIO_MODES = ("real", "silence")


@dataclass(frozen=True, kw_only=True)
class GenerationConfig:
    max_new_tokens: int = 96
    batch_size: int = 16
    do_sample: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError(
                f"GenerationConfig: expected max_new_tokens >= 1 and batch_size >= 1, found {self.max_new_tokens}, {self.batch_size}"
            )


def batches(seq: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def model_inputs(lm, items: Sequence[Item], fmt: str, audio_mode: str = "real"):
    """Processor inputs for ``items`` with their real audio or silence of identical length."""

    if audio_mode not in AUDIO_MODES:
        raise ValueError(f"audio_mode: expected one of {AUDIO_MODES}, found {audio_mode!r}")
    audios = [item_audio(it, lm.processor) for it in items]
    if audio_mode == "silence":
        audios = [silence_like(a) for a in audios]
    batch = build_inputs(lm.processor, items, fmt, audios=audios, audio_kwarg=lm.arch.table.processor_audio_kwarg,
                         template=lm.prompt_template)
    return batch.to(lm.device)


def cast_features(lm, batch):
    """Audio features in the model's dtype (bf16/fp16 models)."""
    dtype = next(lm.model.parameters()).dtype
    for k in ("input_features",):
        if k in batch and batch[k].is_floating_point():
            batch[k] = batch[k].to(dtype)
    return batch


def generate_batch(lm, batch, cfg: GenerationConfig) -> tuple[Any, list[str]]:
    """Run ``generate``; return (new token ids [batch, new], decoded texts)."""
    import torch

    batch = cast_features(lm, batch)
    with torch.inference_mode():
        out = lm.model.generate(
            **batch,
            max_new_tokens=cfg.max_new_tokens,
            do_sample=cfg.do_sample,
            pad_token_id=lm.tokenizer.pad_token_id,
            **lm.generate_kwargs,
        )
    new = out[:, batch["input_ids"].shape[1] :]
    texts = [clean_decoded(t) for t in lm.tokenizer.batch_decode(new, skip_special_tokens=True)]
    return new, texts


def score(item: Item, text: str) -> dict[str, Any]:
    """Extract the answer span of a free-text generation and score it with MMAU's matching
    rule (:func:`auralens.interp.answers.score_text`: tags, answer lines, choice letters,
    negations; ``extracted`` says which step resolved it, ``"none"`` = an extraction failure)."""

    return score_text(item.answer, text, item.choices)


def item_row(item: Item, fmt: str, audio_mode: str, text: str) -> dict[str, Any]:
    return {
        "item_id": item.item_id,
        "row_id": f"{item.item_id}|{fmt}|{audio_mode}",
        "tier": item.tier,
        "category": item.category,
        "sub_category": item.sub_category,
        "format": fmt,
        "audio": audio_mode,
        "answer": item.answer,
        "prediction": text,
        **score(item, text),
    }
