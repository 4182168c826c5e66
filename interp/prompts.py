"""Prompt building: one audio clip + one question -> model inputs, through the real processor."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import soundfile as sf

from auralens.interp.audio import item_audio
from auralens.interp.errors import PromptError
from auralens.interp.items import Item
from auralens.interp.templates import TEMPLATES, check_template, question_text


def chat_text(processor, question: str, *, answer_prefix: str = "", system: str | None = None) -> str:
    """The chat prompt holding one audio clip and a question, rendered by the processor's own
    chat template (the audio placeholder is expanded later by the processor's __call__);
    ``system``: a system turn (None: the template's own default, if it has one)."""
    messages = [{"role": "user", "content": [{"type": "audio", "audio": "clip"}, {"type": "text", "text": question}]}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
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
    template: str = "cafe",
) -> Any:
    """Batch of model inputs, left-padded.  ``audios`` default to the items' own clips;
    ``template``: the prompt template (:mod:`auralens.interp.templates`) that words each item's
    question and sets the system turn.

    With ``targets`` the answer text (+ end-of-turn) is appended, for teacher forcing."""

    if items is not None:
        n = len(items)
        if isinstance(formats, str):
            formats = [formats] * n
        questions = questions or [question_text(it, f, template) for it, f in zip(items, formats)]
        audios = audios if audios is not None else [item_audio(it, processor) for it in items]
    if questions is None or audios is None or len(questions) != len(audios):
        raise PromptError(
            f"build_inputs: expected one audio per question, found {0 if questions is None else len(questions)} "
            f"questions and {0 if audios is None else len(audios)} audios"
        )
    system = TEMPLATES[check_template(template)].system
    if is_voxtral(processor):
        check_template_fits(processor, template)  # mistral_common: "not allowed prior to the tokenizer version 13"
        return voxtral_inputs(processor, questions, audios, targets=targets, system=system)
    texts = [chat_text(processor, q, system=system) for q in questions]
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


def check_template_fits(processor, template: str) -> None:
    """A :class:`PromptError` when ``processor`` cannot take ``template`` (Voxtral's tokenizer
    refuses a system turn beside audio), before any folder is made or item generated."""
    if is_voxtral(processor) and TEMPLATES[check_template(template)].system is not None:
        raise PromptError(f"prompt_template {template!r}: sets a system turn, which Voxtral's tokenizer "
                          "(mistral_common) refuses beside audio; expected a template without one "
                          "(cafe, chat, mmau, r1-aqa)")


def is_voxtral(processor) -> bool:
    """Voxtral's processor takes audio only through ``apply_chat_template`` (its ``__call__``
    refuses audio), so its prompts are built by :func:`voxtral_inputs`."""
    return type(processor).__name__ == "VoxtralProcessor"


def _wav_base64(audio: np.ndarray, sr: int) -> str:
    """A clip as base64 WAV with 32-bit float samples (decoded back bit-identical)."""


    buf = io.BytesIO()
    sf.write(buf, np.asarray(audio, dtype=np.float32), sr, format="WAV", subtype="FLOAT")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def voxtral_inputs(
    processor, questions: Sequence[str], audios: Sequence[np.ndarray], *, targets: Sequence[str] | None = None,
    system: str | None = None,
) -> Any:
    """A left-padded batch for Voxtral through its processor's own ``apply_chat_template``
    (``tokenize=True``): one user turn per row, the clip (base64 WAV, float samples) then the
    question; with ``targets`` an assistant turn holding the answer, continued
    (``continue_final_message``: mistral_common serves no conversation ending on a plain assistant
    turn) and closed with the tokenizer's ``</s>``, for teacher forcing.

    mistral_common pads each clip to a multiple of the tokenizer's ``chunk_length_s`` and gives
    the padding audio tokens too; the mel features are padded and cut into windows the same way:
    ``pad_to_multiple_of`` and ``max_source_positions`` are the feature extractor's own window
    (``n_samples``, ``nb_max_frames``: 480000 and 3000 for the released 30-s processor, the class
    defaults), so a processor with another window (the tiny test one) stays consistent."""
    fe = processor.feature_extractor
    sr = int(fe.sampling_rate)
    if targets is not None and len(targets) != len(questions):
        raise PromptError(f"build_inputs: expected one target per question, found {len(targets)} and {len(questions)}")
    conversations = []
    for i, (question, audio) in enumerate(zip(questions, audios)):
        content = [{"type": "audio", "base64": _wav_base64(audio, sr)}, {"type": "text", "text": question}]
        conv = [{"role": "user", "content": content}]
        if system is not None:
            conv.insert(0, {"role": "system", "content": system})
        if targets is not None:
            conv.append({"role": "assistant", "content": targets[i]})
        conversations.append(conv)
    tok = processor.tokenizer
    old_side = tok.padding_side
    tok.padding_side = "left"
    try:
        batch = processor.apply_chat_template(
            conversations,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            # the answer turn is continued (a prefix); its end-of-turn is appended below
            continue_final_message=targets is not None,
            processor_kwargs={
                "text_kwargs": {"padding": True, "padding_side": "left"},
                "audio_kwargs": {"sampling_rate": sr, "pad_to_multiple_of": int(fe.n_samples),
                                 "max_source_positions": int(fe.nb_max_frames)},
            },
        )
    finally:
        tok.padding_side = old_side
    if targets is not None:  # rows are left-padded: every row ends on its last column
        import torch

        ids, mask = batch["input_ids"], batch["attention_mask"]
        eos = torch.full((ids.shape[0], 1), int(tok.eos_token_id), dtype=ids.dtype)
        batch["input_ids"] = torch.cat([ids, eos], 1)
        batch["attention_mask"] = torch.cat([mask, torch.ones_like(eos, dtype=mask.dtype)], 1)
    return batch
