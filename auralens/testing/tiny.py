"""Tiny random-init models of the real transformers LALM classes, with processors built locally.

Used by the tests (``tests/conftest.py``) and ``auralens bench``; the architecture facts (model
class, names) come from the tables of :mod:`auralens.interp.arch`, what is here is how to build a small
model and processor of each class.

Every builder returns ``(model, processor)`` for one architecture, seeded, small enough for a test
on 2 CPU cores, and of the *real* class (so every hook path is the one a 7B checkpoint takes):

- ``qwen2_audio``            ``Qwen2AudioForConditionalGeneration`` + ``Qwen2AudioProcessor``
- ``qwen2_5_omni_thinker``   ``Qwen2_5OmniThinkerForConditionalGeneration`` + a minimal processor
                             (see :func:`build_tiny_processor` for why it is not
                             ``Qwen2_5OmniProcessor``)
- ``audioflamingo3``         ``AudioFlamingo3ForConditionalGeneration`` + ``AudioFlamingo3Processor``
- ``voxtral``                ``VoxtralForConditionalGeneration`` + ``VoxtralProcessor`` over a tiny
                             tekken.json (mistral_common's ``MistralCommonBackend``)

Shapes shared by all of them: a Qwen2-style decoder with grouped-query attention (4 query heads,
2 key/value heads, head_dim 16, d_model 64, 2 layers), a 2-layer Whisper-style audio encoder on
16 mel bins, and a feature extractor with 2 s chunks, so one clip is at most 50 audio tokens.

:func:`build_shaped` builds a random-init model with Qwen2-Audio-7B-Instruct's real dimensions
for GPU benchmarks: about 8.4 billion parameters, never to be built in a test.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from auralens.interp import compat
from auralens.interp.arch import audio_token_id_of, table_by_name, table_for_class
from auralens.interp.errors import ArchitectureError, ConfigError
from auralens.interp.processors import (
    granite_mel_extractor_class,
    granite_processor_class,
    no_image_processor_class,
    phi4_processor_class,
    qwen3_omni_processor_class,
)
from auralens.interp.prompts import build_inputs
from auralens.interp.tokenizer import QWEN_AUDIO_SPECIALS, build_word_tokenizer

SAMPLING_RATE = 16_000
TINY_CHUNK_SECONDS = 2
TINY_MELS = 16

# Decoder and audio-encoder sizes of every tiny model (GQA: 4 query heads share 2 kv heads).
TINY_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    rope_theta=10_000.0,
)
# Qwen3-ASR's encoder window (mel frames / 2 per chunk); the real 50 = 1 s chunks of 13 tokens.
QWEN3_ASR_WINDOW = 50
TINY_AUDIO = dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64)

# Qwen2-Audio-7B-Instruct's real dimensions (config.json of the released checkpoint).
PRESETS: dict[str, dict[str, Any]] = {
    "qwen2-audio-7b": dict(
        text=dict(
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            vocab_size=156032,
            max_position_embeddings=8192,
            rope_theta=10_000.0,
        ),
        audio=dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120),
        n_mels=128,
        chunk_seconds=30,
    ),
}

# Words of the chat templates plus a small question/answer vocabulary (word-level tokenizer).
TINY_WORDS = (
    "system user assistant You are a helpful assistant. Audio 1: 2: 3: "
    "what is the sound ? how many events are there in this clip which one comes first second "
    "last louder higher lower pitch tone chirp noise burst click train buzz silence speech word "
    "answer with yes no zero one two three four five up down then so because step perception "
    "reasoning review count order A B C D ( ) . , : listen describe"
).split()

OMNI_SPECIALS = [
    *QWEN_AUDIO_SPECIALS,
    "<|IMAGE|>",
    "<|VIDEO|>",
    "<|vision_bos|>",
    "<|vision_eos|>",
]
AF3_SPECIALS = ["<pad>", "<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<sound>"]
MF_SPECIALS = [*AF3_SPECIALS, "<|sound_bos|>", "<|sound_eos|>"]
# GLM-ASR's placeholder is "<|pad|>" (not the padding token "<pad>").
GLMASR_SPECIALS = ["<pad>", "<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>", "<|begin_of_audio|>", "<|end_of_audio|>"]

# A chat template in the Qwen2.5-Omni layout (audio block inside the user turn).
OMNI_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# A chat template in the Audio Flamingo 3 layout (<sound> first in the user turn).
AF3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'audio' %}<sound>"
    "{% endif %}{% endfor %}"
    "{% for content in message['content'] %}{% if content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

QWEN3_ASR_SPECIALS = ["<pad>", "<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_start|>", "<|audio_end|>", "<|audio_pad|>"]
# Qwen3-ASR's processor reads its audio tokens from the tokenizer's named special tokens.
QWEN3_ASR_NAMED = {"audio_token": "<|audio_pad|>", "audio_bos_token": "<|audio_start|>", "audio_eos_token": "<|audio_end|>"}
# A chat template in the Qwen3-ASR layout (audio block inside the user turn).
QWEN3_ASR_CHAT_TEMPLATE = OMNI_CHAT_TEMPLATE.replace("<|audio_bos|><|AUDIO|><|audio_eos|>", "<|audio_start|><|audio_pad|><|audio_end|>")

# A chat template in the GLM-ASR layout (the audio block, begin/end markers around the placeholder).
GLMASR_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' %}<|begin_of_audio|><|pad|><|end_of_audio|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Voxtral's tokenizer is mistral_common's tekken (MistralCommonBackend over a tekken.json): the
# control tokens in mistral_common's order (<unk> 0, <s> 1, </s> 2, [INST] 3, [/INST] 4, ... <pad>
# 11), [AUDIO] at 24 (VoxtralProcessor hard-codes audio_token_id 24), then the byte vocabulary and
# TINY_WORDS (every prefix, so BPE merges reach whole words).
VOXTRAL_NUM_SPECIAL = 100
VOXTRAL_AUDIO_ID = 24
VOXTRAL_FRAME_RATE = 12.5  # audio tokens per second (4 encoder frames of 20 ms merged)

TINY_ARCHS = ("qwen2_audio", "qwen2_5_omni_thinker", "audioflamingo3", "musicflamingo", "glmasr", "qwen3_asr",
              "voxtral", "granite_speech", "phi4_multimodal", "qwen3_omni_moe_thinker")

# Granite Speech: its placeholder and a chat template in its layout (roles between markers).
GRANITE_SPECIALS = ["<pad>", "<unk>", "<|end_of_text|>", "<|start_of_role|>", "<|end_of_role|>", "<|audio|>"]
GRANITE_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|start_of_role|>{{ message['role'] }}<|end_of_role|>"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' %}<|audio|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|end_of_text|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_of_role|>assistant<|end_of_role|>{% endif %}"
)
# Granite Speech's projector: windows of 15 encoder frames, 3 queries each (the released values).
GRANITE_WINDOW, GRANITE_DOWNSAMPLE = 15, 5

# Phi-4-multimodal: the tokenizer names its image and audio placeholders (the processor reads them).
PHI4_SPECIALS = ["<pad>", "<unk>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>",
                 "<|image|>", "<|audio|>"]
PHI4_NAMED = {"image_token": "<|image|>", "audio_token": "<|audio|>"}
PHI4_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' %}<|audio|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|end|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# Qwen3-Omni: Qwen2.5-Omni's specials and layout; its processor reads the names from the tokenizer.
QWEN3_OMNI_NAMED = {"audio_token": "<|AUDIO|>", "image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>",
                    "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
                    "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"}
# The thinker's encoder window in mel frames / 2 (the released 50: 100 frames = 1 s, 13 tokens)
QWEN3_OMNI_WINDOW = 50


def canonical_arch(arch_name: str) -> str:
    """Table name (``auralens.interp.arch`` vocabulary) for an architecture or transformers class name
    (or an alias a table lists); only the architectures with a tiny builder are accepted."""

    try:
        name = table_by_name(arch_name).name
    except ArchitectureError:
        name = None
    if name not in TINY_ARCHS:
        raise ConfigError(
            f"arch_name {arch_name!r}: expected one of {', '.join(TINY_ARCHS)} (or their "
            "transformers class names)"
        )
    return name


# --- processors ------------------------------------------------------------------------------


def _feature_extractor(n_mels: int, chunk_seconds: int):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(
        feature_size=n_mels,
        sampling_rate=SAMPLING_RATE,
        hop_length=160,
        chunk_length=chunk_seconds,
        n_fft=400,
        padding_value=0.0,
        return_attention_mask=True,
    )


def tiny_tekken(n_mels: int = TINY_MELS, chunk_seconds: int = TINY_CHUNK_SECONDS) -> dict:
    """A tiny tekken tokenizer file (the format of Voxtral's ``tekken.json``), as JSON data.

    Audio section as in the released file but for the tiny shapes: 16 kHz, 12.5 tokens per second,
    ``chunk_length_s`` = the feature extractor's window (the processor pads each clip to a
    multiple of it and gives the padding audio tokens)."""

    from mistral_common.tokens.tokenizers.base import SpecialTokens

    names = [t.value for t in SpecialTokens]
    ranks: dict[str, int] = {n: i for i, n in enumerate(names[:20])}  # <unk> .. [TOOL_CONTENT]
    for i in range(20, VOXTRAL_AUDIO_ID):
        ranks[f"<SPECIAL_{i}>"] = i
    ranks.update({"[AUDIO]": VOXTRAL_AUDIO_ID, "[BEGIN_AUDIO]": VOXTRAL_AUDIO_ID + 1,
                  "[TRANSCRIBE]": VOXTRAL_AUDIO_ID + 2})
    nxt = VOXTRAL_AUDIO_ID + 3
    for n in names:
        if n not in ranks:
            ranks[n], nxt = nxt, nxt + 1
    for i in range(nxt, VOXTRAL_NUM_SPECIAL):
        ranks[f"<SPECIAL_{i}>"] = i
    specials = [{"rank": r, "token_str": n, "is_control": True} for n, r in sorted(ranks.items(), key=lambda x: x[1])]
    pieces: list[bytes] = [bytes([i]) for i in range(256)]
    seen = set(pieces)
    for word in TINY_WORDS:
        for w in (word, " " + word):
            b = w.encode()
            for k in range(2, len(b) + 1):
                if b[:k] not in seen:
                    seen.add(b[:k])
                    pieces.append(b[:k])
    vocab = [{"rank": i, "token_bytes": base64.b64encode(b).decode("ascii"),
              "token_str": b.decode("utf-8", "replace")} for i, b in enumerate(pieces)]
    pattern = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
               r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}|"
               r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
    return {
        "config": {"pattern": pattern, "num_vocab_tokens": len(vocab),
                   "default_vocab_size": len(vocab) + VOXTRAL_NUM_SPECIAL,
                   "default_num_special_tokens": VOXTRAL_NUM_SPECIAL, "version": "v7"},
        "vocab": vocab,
        "special_tokens": specials,
        "audio": {"sampling_rate": SAMPLING_RATE, "frame_rate": VOXTRAL_FRAME_RATE,
                  "audio_encoding_config": {"num_mel_bins": n_mels, "hop_length": 160, "window_size": 400},
                  "chunk_length_s": float(chunk_seconds)},
    }


def tiny_tekken_file(n_mels: int, chunk_seconds: int) -> Path:
    """``tekken.json`` of :func:`tiny_tekken` in a per-content temporary folder (MistralCommonBackend
    reads a file and keeps its path: ``save_pretrained`` copies it next to the model)."""

    text = json.dumps(tiny_tekken(n_mels, chunk_seconds), sort_keys=True)
    folder = Path(tempfile.gettempdir()) / f"auralens-tiny-tekken-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    path = folder / "tekken.json"
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"tekken.json.{os.getpid()}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return path


def build_tiny_processor(
    arch_name: str, *, n_mels: int = TINY_MELS, chunk_seconds: int = TINY_CHUNK_SECONDS
):
    """The processor of a tiny model, built offline from a word-level tokenizer.

    ``qwen2_5_omni_thinker`` gets a ``Qwen2AudioProcessor`` with an Omni-layout chat template,
    not ``Qwen2_5OmniProcessor``: the real class insists on a video processor
    (``Qwen2VLVideoProcessor``), which needs torchvision, and the only torchvision on the
    registry is a CUDA build that does not load next to the CPU torch wheel (it fails with
    ``operator torchvision::nms does not exist``).  For audio + text the two processors do the
    same thing: Whisper log-mels with ``feature_attention_mask``, and ``<|AUDIO|>`` expanded to
    ``((L - 1) // 2 + 1 - 2) // 2 + 1`` tokens, the count the thinker's audio encoder returns.
    """
    from transformers import AudioFlamingo3Processor, Qwen2AudioProcessor

    arch = canonical_arch(arch_name)
    fe = _feature_extractor(n_mels, chunk_seconds)
    if arch == "qwen2_audio":
        tok = build_word_tokenizer(TINY_WORDS, specials=QWEN_AUDIO_SPECIALS)
        return Qwen2AudioProcessor(feature_extractor=fe, tokenizer=tok)
    if arch == "qwen2_5_omni_thinker":
        tok = build_word_tokenizer(TINY_WORDS, specials=OMNI_SPECIALS)
        return Qwen2AudioProcessor(feature_extractor=fe, tokenizer=tok, chat_template=OMNI_CHAT_TEMPLATE)
    if arch == "musicflamingo":
        from transformers import MusicFlamingoProcessor

        tok = build_word_tokenizer(TINY_WORDS, specials=MF_SPECIALS)
        return MusicFlamingoProcessor(
            feature_extractor=fe,
            tokenizer=tok,
            chat_template=AF3_CHAT_TEMPLATE,
            audio_token="<sound>",
            max_audio_len=4 * chunk_seconds,
        )
    if arch == "glmasr":
        from transformers import GlmAsrProcessor

        tok = build_word_tokenizer(TINY_WORDS, specials=GLMASR_SPECIALS)
        return GlmAsrProcessor(
            feature_extractor=fe,
            tokenizer=tok,
            chat_template=GLMASR_CHAT_TEMPLATE,
            audio_token="<|pad|>",
            max_audio_len=4 * chunk_seconds,
        )
    if arch == "voxtral":
        # The real pair: VoxtralProcessor over mistral_common's MistralCommonBackend (tekken.json)
        # and a Whisper feature extractor; clips are padded to chunk_seconds multiples.
        from transformers import MistralCommonBackend, VoxtralProcessor

        tok = MistralCommonBackend(str(tiny_tekken_file(n_mels, chunk_seconds)))
        return VoxtralProcessor(feature_extractor=fe, tokenizer=tok)
    if arch == "qwen3_asr":
        from transformers import PreTrainedTokenizerFast, Qwen3ASRFeatureExtractor, Qwen3ASRProcessor

        base = build_word_tokenizer(TINY_WORDS, specials=QWEN3_ASR_SPECIALS)
        tok = PreTrainedTokenizerFast(
            tokenizer_object=base.backend_tokenizer,
            unk_token="<unk>",
            pad_token="<pad>",
            eos_token="<|im_end|>",
            additional_special_tokens=QWEN3_ASR_SPECIALS[2:],
            extra_special_tokens=QWEN3_ASR_NAMED,
        )
        tok.padding_side = "left"
        qfe = Qwen3ASRFeatureExtractor(
            feature_size=n_mels, sampling_rate=SAMPLING_RATE, chunk_length=chunk_seconds, n_window=QWEN3_ASR_WINDOW
        )
        return Qwen3ASRProcessor(feature_extractor=qfe, tokenizer=tok, chat_template=QWEN3_ASR_CHAT_TEMPLATE)
    if arch == "granite_speech":
        tok = build_word_tokenizer(TINY_WORDS, specials=GRANITE_SPECIALS, eos_token="<|end_of_text|>")
        gfe = granite_mel_extractor_class()(n_mels=n_mels, projector_window_size=GRANITE_WINDOW,
                                            projector_downsample_rate=GRANITE_DOWNSAMPLE)
        return granite_processor_class()(audio_processor=gfe, tokenizer=tok, audio_token="<|audio|>",
                                         chat_template=GRANITE_CHAT_TEMPLATE)
    if arch == "phi4_multimodal":
        from transformers import Phi4MultimodalFeatureExtractor

        tok = _named_tokenizer(PHI4_SPECIALS, PHI4_NAMED, eos_token="<|end|>")
        pfe = Phi4MultimodalFeatureExtractor(feature_size=n_mels, sampling_rate=SAMPLING_RATE)
        return phi4_processor_class()(image_processor=no_image_processor_class()(), audio_processor=pfe,
                                      tokenizer=tok, chat_template=PHI4_CHAT_TEMPLATE)
    if arch == "qwen3_omni_moe_thinker":
        tok = _named_tokenizer(OMNI_SPECIALS, QWEN3_OMNI_NAMED, eos_token="<|im_end|>")
        return qwen3_omni_processor_class()(feature_extractor=fe, tokenizer=tok, chat_template=OMNI_CHAT_TEMPLATE)
    tok = build_word_tokenizer(TINY_WORDS, specials=AF3_SPECIALS)
    return AudioFlamingo3Processor(
        feature_extractor=fe,
        tokenizer=tok,
        chat_template=AF3_CHAT_TEMPLATE,
        audio_token="<sound>",
        max_audio_len=4 * chunk_seconds,
    )


def _named_tokenizer(specials: Sequence[str], named: dict[str, str], *, eos_token: str):
    """The word-level tokenizer with named special tokens (``tokenizer.audio_token`` ...), which
    processors such as Phi-4's and Qwen3-Omni's read."""
    from transformers import PreTrainedTokenizerFast

    base = build_word_tokenizer(TINY_WORDS, specials=list(specials), eos_token=eos_token)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token=eos_token,
        additional_special_tokens=[t for t in specials if t not in ("<unk>", "<pad>")],
        extra_special_tokens=named,
    )
    tok.padding_side = "left"
    return tok


# --- configs ---------------------------------------------------------------------------------


def _ids(tok, names: Sequence[str]) -> dict[str, int]:
    out = {}
    for name in names:
        idx = tok.convert_tokens_to_ids(name)
        if idx is None or idx == tok.unk_token_id and name != tok.unk_token:
            raise ConfigError(f"tokenizer has no token {name!r}")
        out[name] = int(idx)
    return out


@dataclass(frozen=True)
class _ConfigParts:
    """What every per-architecture config builder reads: the tokenizer, the decoder and encoder
    sizes (``text`` without ``vocab_size``/``rope_theta``), and the values derived from them."""

    tokenizer: Any
    text: dict[str, Any]
    audio: dict[str, Any]
    common_text: dict[str, Any]
    rope_theta: Any
    n_mels: int
    max_source_positions: int


def _config_parts(
    tokenizer: Any, text: dict[str, Any] | None, audio: dict[str, Any] | None, n_mels: int, chunk_seconds: int
) -> _ConfigParts:
    """The sizes (defaults ``TINY_TEXT``/``TINY_AUDIO``), vocabulary, rope theta, encoder positions
    and the decoder config fields shared by every architecture."""
    text = dict(TINY_TEXT if text is None else text)
    audio = dict(TINY_AUDIO if audio is None else audio)
    vocab = max(int(text.pop("vocab_size", 0)), len(tokenizer))
    rope_theta = text.pop("rope_theta", 10_000.0)
    # The encoder sees chunk_seconds * 100 mel frames; its conv2 halves them.
    max_source_positions = chunk_seconds * SAMPLING_RATE // 160 // 2
    common_text = dict(
        text,
        vocab_size=vocab,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        use_sliding_window=False,
    )
    return _ConfigParts(tokenizer, text, audio, common_text, rope_theta, n_mels, max_source_positions)


def _qwen2_text(p: _ConfigParts) -> dict[str, Any]:
    return dict(p.common_text, model_type="qwen2", rope_parameters={"rope_type": "default", "rope_theta": p.rope_theta})


def _llama_text(p: _ConfigParts) -> dict[str, Any]:
    llama_text = dict(
        p.common_text,
        model_type="llama",
        head_dim=p.text["hidden_size"] // p.text["num_attention_heads"],
        rope_parameters={"rope_type": "default", "rope_theta": p.rope_theta},
    )
    llama_text.pop("use_sliding_window")
    return llama_text


def _af3_audio(p: _ConfigParts) -> dict[str, Any]:
    return dict(
        model_type="audioflamingo3_encoder",
        num_mel_bins=p.n_mels,
        max_source_positions=p.max_source_positions,
        hidden_size=p.audio["d_model"],
        num_hidden_layers=p.audio["encoder_layers"],
        num_attention_heads=p.audio["encoder_attention_heads"],
        intermediate_size=p.audio["encoder_ffn_dim"],
    )


def _qwen2_audio_config(p: _ConfigParts):
    from transformers import Qwen2AudioConfig

    ids = _ids(p.tokenizer, ["<|AUDIO|>"])
    return Qwen2AudioConfig(
        text_config=_qwen2_text(p),
        audio_config=dict(
            model_type="qwen2_audio_encoder",
            num_mel_bins=p.n_mels,
            max_source_positions=p.max_source_positions,
            **p.audio,
        ),
        audio_token_index=ids["<|AUDIO|>"],
    )


def _qwen2_5_omni_thinker_config(p: _ConfigParts):
    from transformers import Qwen2_5OmniThinkerConfig

    ids = _ids(
        p.tokenizer,
        ["<|AUDIO|>", "<|IMAGE|>", "<|VIDEO|>", "<|audio_bos|>", "<|audio_eos|>", "<|vision_bos|>", "user"],
    )
    hidden = p.text["hidden_size"]
    head_dim = hidden // p.text["num_attention_heads"]
    half = head_dim // 2
    # mrope splits the rotary half-dim in (temporal, height, width) sections: 16/24/24 of 64
    # in the 7B; keep the same proportions.
    t_sec = max(1, half // 4)
    h_sec = (half - t_sec) // 2
    mrope = [t_sec, h_sec, half - t_sec - h_sec]
    return Qwen2_5OmniThinkerConfig(
        text_config=dict(
            p.common_text,
            rope_parameters={"rope_type": "default", "rope_theta": p.rope_theta, "mrope_section": mrope},
        ),
        audio_config=dict(
            num_mel_bins=p.n_mels,
            max_source_positions=p.max_source_positions,
            n_window=p.max_source_positions,
            output_dim=hidden,
            **p.audio,
        ),
        # The vision tower is built by the class whatever the input; keep it minimal.
        vision_config=dict(
            depth=1,
            hidden_size=32,
            intermediate_size=32,
            num_heads=2,
            out_hidden_size=hidden,
            fullatt_block_indexes=[0],
            patch_size=14,
            window_size=56,
        ),
        audio_token_index=ids["<|AUDIO|>"],
        image_token_index=ids["<|IMAGE|>"],
        video_token_index=ids["<|VIDEO|>"],
        audio_start_token_id=ids["<|audio_bos|>"],
        audio_end_token_id=ids["<|audio_eos|>"],
        vision_start_token_id=ids["<|vision_bos|>"],
        user_token_id=ids["user"],
    )


def _audioflamingo3_config(p: _ConfigParts):
    from transformers import AudioFlamingo3Config

    ids = _ids(p.tokenizer, ["<sound>"])
    return AudioFlamingo3Config(
        text_config=_qwen2_text(p),
        audio_config=_af3_audio(p),
        audio_token_id=ids["<sound>"],
    )


def _musicflamingo_config(p: _ConfigParts):
    from transformers import MusicFlamingoConfig

    ids = _ids(p.tokenizer, ["<sound>", "<|sound_bos|>", "<|sound_eos|>"])
    return MusicFlamingoConfig(
        text_config=_qwen2_text(p),
        audio_config=_af3_audio(p),
        audio_token_id=ids["<sound>"],
        audio_bos_token_id=ids["<|sound_bos|>"],
        audio_eos_token_id=ids["<|sound_eos|>"],
    )


def _glmasr_config(p: _ConfigParts):
    from transformers import GlmAsrConfig

    ids = _ids(p.tokenizer, ["<|pad|>"])
    d = p.audio["d_model"]
    return GlmAsrConfig(
        text_config=_llama_text(p),
        audio_config=dict(
            model_type="glmasr_encoder",
            num_mel_bins=p.n_mels,
            max_position_embeddings=p.max_source_positions,
            hidden_size=d,
            num_hidden_layers=p.audio["encoder_layers"],
            num_attention_heads=p.audio["encoder_attention_heads"],
            # the projector reads 4 merged frames: intermediate_size must be 4 * hidden_size
            intermediate_size=4 * d,
        ),
        audio_token_id=ids["<|pad|>"],
        tie_word_embeddings=False,
    )


def _qwen3_asr_config(p: _ConfigParts):
    from transformers import Qwen3ASRConfig

    ids = _ids(p.tokenizer, ["<|audio_pad|>"])
    return Qwen3ASRConfig(
        text_config=dict(
            p.common_text,
            model_type="qwen3",
            head_dim=p.text["hidden_size"] // p.text["num_attention_heads"],
            rope_parameters={"rope_type": "default", "rope_theta": p.rope_theta},
        ),
        audio_config=dict(
            model_type="qwen3_asr_encoder",
            num_mel_bins=p.n_mels,
            n_window=QWEN3_ASR_WINDOW,
            output_dim=p.text["hidden_size"],
            downsample_hidden_size=16,
            **p.audio,
        ),
        audio_token_id=ids["<|audio_pad|>"],
        pad_token_id=p.tokenizer.pad_token_id,
        eos_token_id=p.tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )


def _voxtral_config(p: _ConfigParts):
    from transformers import VoxtralConfig

    d = p.audio["d_model"]
    return VoxtralConfig(
        text_config=_llama_text(p),
        audio_config=dict(
            model_type="voxtral_encoder",
            num_mel_bins=p.n_mels,
            max_source_positions=p.max_source_positions,
            hidden_size=d,
            num_hidden_layers=p.audio["encoder_layers"],
            num_attention_heads=p.audio["encoder_attention_heads"],
            # the projector reads 4 merged frames: intermediate_size must be 4 * hidden_size
            intermediate_size=4 * d,
        ),
        audio_token_id=int(p.tokenizer.convert_tokens_to_ids("[AUDIO]")),
        projector_hidden_act="gelu",
    )


def _granite_speech_config(p: _ConfigParts):
    from transformers import GraniteSpeechConfig

    ids = _ids(p.tokenizer, ["<|audio|>"])
    d = p.audio["d_model"]
    text = dict(p.common_text, model_type="granite",
                rope_parameters={"rope_type": "default", "rope_theta": p.rope_theta})
    text.pop("use_sliding_window")
    return GraniteSpeechConfig(
        text_config=text,
        encoder_config=dict(
            input_dim=2 * p.n_mels,  # two mel frames stacked per encoder frame
            num_layers=p.audio["encoder_layers"],
            hidden_dim=d,
            num_heads=p.audio["encoder_attention_heads"],
            feedforward_mult=max(1, p.audio["encoder_ffn_dim"] // d),
            output_dim=8,
            context_size=GRANITE_WINDOW * 2,
            max_pos_emb=64,
            conv_kernel_size=3,
        ),
        projector_config=dict(model_type="blip_2_qformer", hidden_size=d, num_hidden_layers=1,
                              num_attention_heads=p.audio["encoder_attention_heads"],
                              intermediate_size=p.audio["encoder_ffn_dim"], encoder_hidden_size=d,
                              cross_attention_frequency=1),
        window_size=GRANITE_WINDOW,
        downsample_rate=GRANITE_DOWNSAMPLE,
        audio_token_index=ids["<|audio|>"],
        # the released checkpoints carry a LoRA adapter (peft) that is on only with audio; none here
        has_lora_adapter=False,
        tie_word_embeddings=False,
    )


def _phi4_multimodal_config(p: _ConfigParts):
    from transformers import Phi4MultimodalConfig

    ids = _ids(p.tokenizer, ["<|image|>", "<|audio|>"])
    d = p.audio["d_model"]
    text = {k: v for k, v in p.common_text.items() if k not in ("use_sliding_window", "rope_theta")}
    return Phi4MultimodalConfig(
        **text,
        rope_parameters={"rope_type": "default", "rope_theta": p.rope_theta,
                         # Phi-4's decoder rotates 3/4 of each head (partial_rotary_factor 0.75)
                         "partial_rotary_factor": 0.75},
        original_max_position_embeddings=text["max_position_embeddings"],
        sliding_window=None,
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14, crop_size=28, image_token_id=ids["<|image|>"],
                           feature_layer=-1),
        audio_config=dict(
            hidden_size=d,
            intermediate_size=p.audio["encoder_ffn_dim"],
            num_blocks=p.audio["encoder_layers"],
            num_attention_heads=p.audio["encoder_attention_heads"],
            input_size=p.n_mels,
            ext_pw_out_channel=d,
            depthwise_separable_out_channel=d,
            nemo_conv_channels=d,
            bias_max_distance=64,
            audio_token_id=ids["<|audio|>"],
            feature_layer=-1,
        ),
    )


def _qwen3_omni_moe_thinker_config(p: _ConfigParts):
    from transformers import Qwen3OmniMoeThinkerConfig

    ids = _ids(p.tokenizer, ["<|AUDIO|>", "<|IMAGE|>", "<|VIDEO|>", "<|audio_bos|>", "<|audio_eos|>", "<|vision_bos|>",
                             "user"])
    hidden = p.text["hidden_size"]
    head_dim = hidden // p.text["num_attention_heads"]
    text = {k: v for k, v in p.common_text.items() if k != "use_sliding_window"}
    return Qwen3OmniMoeThinkerConfig(
        text_config=dict(
            text,
            head_dim=head_dim,
            # interleaved multimodal rotary sections of the half head (24/20/20 of 64 in the 30B)
            rope_parameters={"rope_type": "default", "rope_theta": p.rope_theta,
                             "mrope_section": [head_dim // 2 - 2 * (head_dim // 8), head_dim // 8, head_dim // 8],
                             "interleaved": True},
            # every layer a sparse MoE block: 4 experts, 2 per token (128 and 8 in the 30B)
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            sliding_window=None,
        ),
        audio_config=dict(
            num_mel_bins=p.n_mels,
            n_window=QWEN3_OMNI_WINDOW,
            output_dim=hidden,
            downsample_hidden_size=16,
            **p.audio,
        ),
        # the vision tower is built by the class whatever the input; keep it minimal
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=32, num_heads=2, out_hidden_size=hidden,
                           patch_size=16, num_position_embeddings=16, deepstack_visual_indexes=[0]),
        audio_token_id=ids["<|AUDIO|>"],
        image_token_id=ids["<|IMAGE|>"],
        video_token_id=ids["<|VIDEO|>"],
        audio_start_token_id=ids["<|audio_bos|>"],
        user_token_id=ids["user"],
        # not fields of the class, but read by its get_rope_index (the released thinker_config has them)
        vision_start_token_id=ids["<|vision_bos|>"],
        audio_end_token_id=ids["<|audio_eos|>"],
        tie_word_embeddings=False,
    )


# one config builder per name of TINY_ARCHS
_CONFIG_BUILDERS: dict[str, Callable[[_ConfigParts], Any]] = {
    "qwen2_audio": _qwen2_audio_config,
    "qwen2_5_omni_thinker": _qwen2_5_omni_thinker_config,
    "audioflamingo3": _audioflamingo3_config,
    "musicflamingo": _musicflamingo_config,
    "glmasr": _glmasr_config,
    "qwen3_asr": _qwen3_asr_config,
    "voxtral": _voxtral_config,
    "granite_speech": _granite_speech_config,
    "phi4_multimodal": _phi4_multimodal_config,
    "qwen3_omni_moe_thinker": _qwen3_omni_moe_thinker_config,
}


def build_config(
    arch_name: str,
    tokenizer: Any,
    *,
    text: dict[str, Any] | None = None,
    audio: dict[str, Any] | None = None,
    n_mels: int = TINY_MELS,
    chunk_seconds: int = TINY_CHUNK_SECONDS,
):
    """A config of the real class with the given decoder/encoder sizes and this tokenizer's ids.

    The architecture's builder in ``_CONFIG_BUILDERS`` makes it from the shared parts of
    :func:`_config_parts`."""
    arch = canonical_arch(arch_name)
    return _CONFIG_BUILDERS[arch](_config_parts(tokenizer, text, audio, n_mels, chunk_seconds))


def _model_class(arch: str):
    """The transformers class of the architecture's table."""
    import transformers


    return getattr(transformers, table_by_name(arch).model_class)


def _fix_generation_config(model: Any, tokenizer: Any) -> None:
    gc = model.generation_config
    gc.pad_token_id = tokenizer.pad_token_id
    gc.eos_token_id = tokenizer.eos_token_id
    gc.bos_token_id = None
    gc.do_sample = False
    # A random-init model may emit its own audio placeholder, which a teacher-forced forward over
    # prompt + generated tokens would then take for an audio position; trained models never do.

    audio_id = audio_token_id_of(model.config, table_for_class(type(model).__name__))
    if audio_id is not None:
        gc.suppress_tokens = [int(audio_id)]


# --- public builders -------------------------------------------------------------------------


def build_tiny(arch_name: str, seed: int = 0, *, attn_implementation: str = "sdpa"):
    """A seeded random-init tiny model of the real class and its locally built processor.

    Returns ``(model, processor)``; the model is in eval mode, float32, on CPU.
    """
    import torch

    arch = canonical_arch(arch_name)
    processor = build_tiny_processor(arch)
    config = build_config(arch, processor.tokenizer)
    cls = _model_class(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = compat.model_from_config(cls, config, attn_implementation=attn_implementation, dtype=torch.float32)
    _fix_generation_config(model, processor.tokenizer)
    model.eval()
    return model, processor


def save_tiny(arch_name: str, folder: str | Path, seed: int = 0) -> Path:
    """Build a tiny model and save model + processor to ``folder`` (reloadable with Auto classes)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model, processor = build_tiny(arch_name, seed=seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_shaped(
    arch_name: str = "qwen2_audio",
    preset: str = "qwen2-audio-7b",
    *,
    dtype: Any = None,
    device: Any = None,
    seed: int = 0,
    attn_implementation: str = "sdpa",
):
    """A random-init model of the real class with a released checkpoint's dimensions.

    ``preset="qwen2-audio-7b"``: 32 decoder layers, d_model 4096, 32 heads, 32 kv heads, ffn
    11008, vocab 156032; audio encoder 32 layers, d_model 1280, 128 mels, 30 s chunks (750 audio
    tokens per clip).  For GPU benchmarks only (about 8.4 B parameters: 17 GB in bf16); the
    weights are created directly on ``device`` in ``dtype`` (default bfloat16).
    Returns ``(model, processor)``; the processor's tokenizer is the tiny word-level one, the
    model's embedding table has the preset's vocabulary size.
    """
    import torch

    if preset not in PRESETS:
        raise ConfigError(f"preset {preset!r}: expected one of {', '.join(PRESETS)}")
    spec = PRESETS[preset]
    arch = canonical_arch(arch_name)
    dtype = torch.bfloat16 if dtype is None else dtype
    processor = build_tiny_processor(arch, n_mels=spec["n_mels"], chunk_seconds=spec["chunk_seconds"])
    config = build_config(
        arch,
        processor.tokenizer,
        text=spec["text"],
        audio=spec["audio"],
        n_mels=spec["n_mels"],
        chunk_seconds=spec["chunk_seconds"],
    )
    cls = _model_class(arch)
    with torch.random.fork_rng(devices=[]), torch.device(device or "cpu"):
        torch.manual_seed(seed)
        model = compat.model_from_config(cls, config, attn_implementation=attn_implementation, dtype=dtype)
    _fix_generation_config(model, processor.tokenizer)
    model.eval()
    return model, processor


# --- inputs ----------------------------------------------------------------------------------


def chat_prompt(processor: Any, question: str, n_audios: int = 1) -> str:
    """The chat-template text of one user turn with ``n_audios`` audio blocks and a question."""
    content = [{"type": "audio", "audio": "placeholder"} for _ in range(n_audios)]
    content.append({"type": "text", "text": question})
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def tiny_batch(
    processor: Any,
    *,
    durations: Sequence[float] = (1.3, 0.5),
    questions: Sequence[str] = (
        "what is the sound ?",
        "how many events are there in this clip ? answer with one word",
    ),
    seed: int = 0,
):
    """A left-padded batch of prompts of different lengths, each with one random audio clip.

    Goes through the chat template and the processor (audio placeholder expanded).  Returns the
    processor's ``BatchFeature`` (``input_ids``, ``attention_mask`` and the audio features under
    the names the model's forward expects).
    """

    if len(durations) != len(questions):
        raise ConfigError(
            f"tiny_batch: expected as many durations as questions, found {len(durations)} and "
            f"{len(questions)}"
        )
    rng = np.random.default_rng(seed)
    audios = [
        (0.1 * rng.standard_normal(int(d * SAMPLING_RATE))).astype(np.float32) for d in durations
    ]
    if type(processor).__name__ == "VoxtralProcessor":  # audio enters only via apply_chat_template

        return build_inputs(processor, None, "cot", audios=audios, questions=list(questions))
    texts = [chat_prompt(processor, q) for q in questions]
    processor.tokenizer.padding_side = "left"
    return processor(
        text=texts,
        audio=audios,
        sampling_rate=SAMPLING_RATE,
        return_tensors="pt",
        text_kwargs={"padding": True, "padding_side": "left"},
    )
