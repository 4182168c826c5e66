"""Build the untrained `micro` model, its tokenizer and its processor, from config only."""

from __future__ import annotations

from dataclasses import dataclass

from auralens.interp.cafe.formats import FORMATS, prompt_text, render_target
from auralens.interp.cafe.questions import CLASS_WORDS, COUNT_WORDS, ORDINALS, make_items
from auralens.interp.tokenizer import build_word_tokenizer

# The same message layout as Qwen2-Audio-Instruct's template, minus the system prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "<|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True, kw_only=True)
class MicroConfig:
    sample_rate: int = 16_000
    clip_seconds: int = 4
    n_mels: int = 40
    hop_length: int = 320
    n_fft: int = 512
    d_audio: int = 128
    audio_layers: int = 2
    audio_heads: int = 4
    d_model: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 384
    seed: int = 0

    def __post_init__(self) -> None:
        if self.d_model % self.heads or self.heads % self.kv_heads:
            raise ValueError(
                f"micro: heads must divide d_model and kv_heads must divide heads, found "
                f"d_model={self.d_model}, heads={self.heads}, kv_heads={self.kv_heads}"
            )


def vocabulary() -> list[str]:
    """Every word the micro model can read or write (prompts and targets of cafe)."""

    words: set[str] = {"user", "assistant", "system"}
    words.update(ORDINALS, COUNT_WORDS, *(w.split() for w in CLASS_WORDS.values()))
    words.update(str(i) for i in range(10))
    for item in make_items(600, seed=99):
        for fmt in FORMATS:
            words.update(prompt_text(item, fmt).split())
            words.update(render_target(item, fmt).split())
    return sorted(words)


def build_tokenizer():
    return build_word_tokenizer(vocabulary())


def build_processor(cfg: MicroConfig = MicroConfig()):
    from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(
        feature_size=cfg.n_mels,
        sampling_rate=cfg.sample_rate,
        hop_length=cfg.hop_length,
        chunk_length=cfg.clip_seconds,
        n_fft=cfg.n_fft,
    )
    return Qwen2AudioProcessor(feature_extractor=fe, tokenizer=build_tokenizer(), chat_template=CHAT_TEMPLATE)


def build_model(processor, cfg: MicroConfig = MicroConfig()):
    import torch
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    tok = processor.tokenizer
    n_frames = cfg.clip_seconds * cfg.sample_rate // cfg.hop_length
    config = Qwen2AudioConfig(
        audio_config={
            "model_type": "qwen2_audio_encoder",
            "num_mel_bins": cfg.n_mels,
            "encoder_layers": cfg.audio_layers,
            "encoder_attention_heads": cfg.audio_heads,
            "encoder_ffn_dim": 2 * cfg.d_audio,
            "d_model": cfg.d_audio,
            "max_source_positions": n_frames // 2,
        },
        text_config={
            "model_type": "qwen2",
            "vocab_size": len(tok),
            "hidden_size": cfg.d_model,
            "intermediate_size": cfg.ffn,
            "num_hidden_layers": cfg.layers,
            "num_attention_heads": cfg.heads,
            "num_key_value_heads": cfg.kv_heads,
            "max_position_embeddings": 512,
            "tie_word_embeddings": False,
            "pad_token_id": tok.pad_token_id,
            "eos_token_id": tok.eos_token_id,
            "bos_token_id": tok.convert_tokens_to_ids("<|im_start|>"),
        },
        audio_token_index=tok.convert_tokens_to_ids("<|AUDIO|>"),
    )
    config.pad_token_id = tok.pad_token_id
    config.eos_token_id = tok.eos_token_id
    torch.manual_seed(cfg.seed)
    model = Qwen2AudioForConditionalGeneration(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.do_sample = False
    return model
