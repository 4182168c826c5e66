"""Prompt building: one audio clip + one question -> model inputs, through the real processor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from interp.errors import PromptError
from interp.items import Item


def chat_text(processor, question: str, *, answer_prefix: str = "") -> str:
    """The chat prompt holding one audio clip and a question, rendered by the processor's own
    chat template (the audio placeholder is expanded later by the processor's __call__)."""
    messages = [{"role": "user", "content": [{"type": "audio", "audio": "clip"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + answer_prefix


def build_inputs(
    processor,
    items: Sequence[Item] | None,
    formats: Sequence[str] | str,
    *,
    audios: Sequence[np.ndarray] | None = None,
    questions: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    audio_kwarg: str = "audio",
) -> Any:
    """Batch of model inputs, left-padded.  ``audios`` default to the items' own clips.

    With ``targets`` the answer text (+ end-of-turn) is appended, for teacher forcing."""
    from interp.audio import item_audio
    from interp.cafe.formats import prompt_text

    if items is not None:
        n = len(items)
        if isinstance(formats, str):
            formats = [formats] * n
        questions = questions or [prompt_text(it, f) for it, f in zip(items, formats)]
        audios = audios if audios is not None else [item_audio(it, processor) for it in items]
    if questions is None or audios is None or len(questions) != len(audios):
        raise PromptError(
            f"build_inputs: expected one audio per question, found {0 if questions is None else len(questions)} "
            f"questions and {0 if audios is None else len(audios)} audios"
        )
    texts = [chat_text(processor, q) for q in questions]
    if targets is not None:
        eos = processor.tokenizer.eos_token or ""
        texts = [t + tgt + eos for t, tgt in zip(texts, targets)]
    sr = processor.feature_extractor.sampling_rate
    tok = processor.tokenizer
    old_side = tok.padding_side
    tok.padding_side = "left"
    try:
        batch = processor(text=texts, **{audio_kwarg: list(audios)}, sampling_rate=sr, return_tensors="pt", padding=True)
    finally:
        tok.padding_side = old_side
    return batch
