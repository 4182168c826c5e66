"""Build `smol-audio` from its parts: in memory (for training) or as a checkpoint folder (for every stage).

:func:`assembled_folder` is what ``load_model("smol-audio")`` loads: an ordinary
``Qwen2AudioForConditionalGeneration`` folder (config, safetensors, processor) written once into
the cache (``$AURALENS_CACHE``, default ``~/.cache/auralens``) under a name that changes with the
parts' hashes and the trained weights, atomically (built beside, then renamed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from auralens.interp.errors import ConfigError
from auralens.interp.smol import NAME, TRAIN_COMMAND, TRAINED
from auralens.interp.smol.parts import (
    GGUF_FILE,
    GGUF_SHA256,
    PACKAGES,
    WHISPER_SHA256,
    ct2_variables,
    encoder_state_dict,
    gguf_folder,
    package_dir,
    whisper_model_bin,
)

__all__ = ["AUDIO_TOKENS", "ENCODER", "LAYOUT_VERSION", "SYSTEM_PROMPT", "WINDOW_SECONDS", "assemble", "assembled_folder",
           "cache_dir", "chat_template", "check_parts", "trained_state"]

#: Whisper base's encoder
ENCODER = {"encoder_layers": 6, "d_model": 512, "encoder_attention_heads": 8, "encoder_ffn_dim": 2048,
           "num_mel_bins": 80}
#: one padded window per clip, as Qwen2-Audio's processor does (it uses 30 s; cafe clips are 4 s and
#: spoken items shorter, so 4 s: 400 mel frames -> 200 encoder frames -> 100 audio tokens)
WINDOW_SECONDS = 4
AUDIO_TOKENS = ("<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>")
#: SmolLM2-Instruct's own default system prompt (its chat template's)
SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
LAYOUT_VERSION = 1  # bump when the assembled folder's layout changes


def chat_template() -> str:
    """SmolLM2-Instruct's ChatML template, with an audio content part rendered as Qwen2-Audio's
    processor expects it (``<|audio_bos|><|AUDIO|><|audio_eos|>``, expanded to one ``<|AUDIO|>``
    per audio token by the processor)."""
    return (
        "{% for message in messages %}"
        "{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\n" + SYSTEM_PROMPT + "<|im_end|>\\n' }}{% endif %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'audio' or 'audio' in part or 'audio_url' in part %}"
        "{{ '<|audio_bos|><|AUDIO|><|audio_eos|>\\n' }}"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "{{ '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )


def cache_dir() -> Path:
    return Path(os.environ.get("AURALENS_CACHE") or Path.home() / ".cache" / "auralens")


def trained_state(path: Path | None = None) -> dict[str, Any] | None:
    """The trained parts (projector, audio-token embedding rows, LoRA-merged deltas) or None."""
    path = Path(path or TRAINED)
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    return load_file(str(path))


def _processor(tokenizer):
    from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=ENCODER["num_mel_bins"], sampling_rate=16000, hop_length=160,
                                 n_fft=400, chunk_length=WINDOW_SECONDS, padding_value=0.0)
    return Qwen2AudioProcessor(feature_extractor=fe, tokenizer=tokenizer, chat_template=chat_template())


def assemble(trained: dict[str, Any] | None = None, *, seed: int = 0, cache: Path | None = None):
    """(model, processor): Whisper-base's encoder, SmolLM2-135M-Instruct's decoder and lm_head, and
    ``trained`` (projector + audio-token rows, see :mod:`auralens.interp.smol.train`); without it
    the projector is initialised from ``seed`` (the starting point of training)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    cache = Path(cache or cache_dir())
    folder = gguf_folder()
    spec, revision, variables = ct2_variables(whisper_model_bin(cache))
    if spec != "WhisperSpec":
        raise ConfigError(f"smol-audio: expected a CTranslate2 WhisperSpec model.bin, found spec {spec!r}")
    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=GGUF_FILE)
    lm = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=GGUF_FILE, dtype=torch.float32)
    n_base = len(tok)
    tok.add_tokens(list(AUDIO_TOKENS), special_tokens=True)
    ids = tok.convert_tokens_to_ids(list(AUDIO_TOKENS))
    text_config = lm.config.to_dict()
    text_config.pop("quantization_config", None)
    text_config.update(vocab_size=len(tok), tie_word_embeddings=False)
    positions = WINDOW_SECONDS * 100 // 2
    config = Qwen2AudioConfig(
        audio_config={"model_type": "qwen2_audio_encoder", **ENCODER, "max_source_positions": positions},
        text_config=text_config, audio_token_index=ids[1])
    config.tie_word_embeddings = False
    config.architectures = ["Qwen2AudioForConditionalGeneration"]
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config).eval()
    missing = model.model.audio_tower.load_state_dict(
        encoder_state_dict(variables, layers=ENCODER["encoder_layers"], d_model=ENCODER["d_model"],
                           positions=positions), strict=True)
    del missing
    lm_sd = lm.model.state_dict()
    emb = lm_sd.pop("embed_tokens.weight")
    new_rows = emb.mean(0, keepdim=True).repeat(len(tok) - n_base, 1)  # audio-token rows start at the mean
    model.model.language_model.load_state_dict({**lm_sd, "embed_tokens.weight": torch.cat([emb, new_rows])})
    head = lm.lm_head.weight.detach()
    # the three audio tokens are never a target: their output rows get a large negative bias
    # through zero weights... a Linear without bias cannot, so they copy the mean row (never argmax
    # in practice) — checked in the tests by greedy decoding never emitting them.
    model.lm_head.weight.data.copy_(torch.cat([head, head.mean(0, keepdim=True).repeat(len(tok) - n_base, 1)]))
    if trained is not None:
        _apply_trained(model, trained)
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids("<|im_end|>")]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = None
    return model, _processor(tok)


def _apply_trained(model, trained: dict[str, Any]) -> None:
    """Load the trained tensors: ``multi_modal_projector.*`` and ``audio_rows`` (the new embedding rows)."""
    proj = {k.removeprefix("multi_modal_projector."): v for k, v in trained.items() if k.startswith("multi_modal_projector.")}
    if not proj or "audio_rows" not in trained:
        raise ConfigError(f"smol-audio trained weights: expected multi_modal_projector.* and audio_rows, found "
                          f"{sorted(trained)}")
    model.model.multi_modal_projector.load_state_dict(proj, strict=True)
    emb = model.model.language_model.embed_tokens.weight
    rows = trained["audio_rows"]
    emb.data[-rows.shape[0]:] = rows.to(emb.dtype)


def _digest(trained_path: Path) -> str:
    h = hashlib.sha256()
    h.update(f"{LAYOUT_VERSION}|{WHISPER_SHA256}|{GGUF_SHA256}|".encode())
    h.update(trained_path.read_bytes())
    return h.hexdigest()[:16]


def check_parts(*, trained_path: Path | None = None, need_trained: bool = True) -> None:
    """Every pretrained part of `smol-audio` is installed and (``need_trained``) its trained parts
    are present (cheap: nothing is read or built), so a stage can refuse before any folder exists."""
    for module in PACKAGES:
        package_dir(module)
    trained_path = Path(trained_path or TRAINED)
    if need_trained and not trained_path.is_file():
        raise ConfigError(f"model {NAME!r}: expected its trained parts in {trained_path}, found none; train them with "
                          f"`{TRAIN_COMMAND}`")


def assembled_folder(*, trained_path: Path | None = None, cache: Path | None = None) -> Path:
    """The checkpoint folder of `smol-audio` with the committed trained parts, built once into the cache."""
    check_parts(trained_path=trained_path)
    trained_path = Path(trained_path or TRAINED)
    cache = Path(cache or cache_dir())
    out = cache / f"{NAME}-{_digest(trained_path)}"
    if (out / "config.json").is_file():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    model, processor = assemble(trained_state(trained_path), cache=cache)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".{NAME}-"))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        info = {"name": NAME, "prompt_template": "cafe", "system_prompt": SYSTEM_PROMPT,
                "parts": {"whisper_base_ct2_sha256": WHISPER_SHA256, "smollm2_gguf_sha256": GGUF_SHA256,
                          "trained": str(trained_path)},
                "window_seconds": WINDOW_SECONDS}
        (tmp / "auralens_model.json").write_text(json.dumps(info, indent=2) + "\n")
        try:
            tmp.replace(out)
        except OSError:  # another process built it first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
