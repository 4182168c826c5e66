"""Tiny random-init models of the real transformers classes (auralens.testing.tiny).

Each architecture: saves and reloads (model class, AutoConfig, AutoProcessor), runs forward and
generate() on a chat-template prompt whose audio placeholder the processor expanded, and its
auralens.interp.arch table resolves against the instance (every path exists, every dim matches the config).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from auralens.interp.arch import audio_token_id_of, describe, get_attr_path
from auralens.interp.errors import ConfigError
from auralens.interp.processors import LOCAL_PROCESSORS, build_processor
from auralens.interp.prompts import build_inputs
from auralens.testing.tiny import (
    PRESETS,
    SAMPLING_RATE,
    TINY_ARCHS,
    build_config,
    build_tiny,
    build_tiny_processor,
    canonical_arch,
    chat_prompt,
    save_tiny,
    tiny_batch,
)

CLASSES = {
    "qwen2_audio": "Qwen2AudioForConditionalGeneration",
    "qwen2_5_omni_thinker": "Qwen2_5OmniThinkerForConditionalGeneration",
    "audioflamingo3": "AudioFlamingo3ForConditionalGeneration",
    "musicflamingo": "MusicFlamingoForConditionalGeneration",
    "glmasr": "GlmAsrForConditionalGeneration",
    "qwen3_asr": "Qwen3ASRForConditionalGeneration",
    "voxtral": "VoxtralForConditionalGeneration",
    "granite_speech": "GraniteSpeechForConditionalGeneration",
    "phi4_multimodal": "Phi4MultimodalForCausalLM",
    "qwen3_omni_moe_thinker": "Qwen3OmniMoeThinkerForConditionalGeneration",
}
PROCESSORS = {
    "qwen2_audio": "Qwen2AudioProcessor",
    # Qwen2_5OmniProcessor needs a torchvision video processor; see build_tiny_processor.
    "qwen2_5_omni_thinker": "Qwen2AudioProcessor",
    "audioflamingo3": "AudioFlamingo3Processor",
    "musicflamingo": "MusicFlamingoProcessor",
    "glmasr": "GlmAsrProcessor",
    "qwen3_asr": "Qwen3ASRProcessor",
    "voxtral": "VoxtralProcessor",
    # built by auralens.interp.processors (the transformers ones need torchaudio / torchvision)
    "granite_speech": "GraniteSpeechAudioProcessor",
    "phi4_multimodal": "Phi4AudioProcessor",
    "qwen3_omni_moe_thinker": "Qwen3OmniMoeAudioProcessor",
}
# The feature-key names each model's forward takes for the mel-spectrogram mask.
FEATURE_MASK = {
    "qwen2_audio": "feature_attention_mask",
    "qwen2_5_omni_thinker": "feature_attention_mask",
    "audioflamingo3": "input_features_mask",
    "musicflamingo": "input_features_mask",
    "glmasr": "input_features_mask",
    "qwen3_asr": "input_features_mask",
    "voxtral": None,  # the encoder takes no mask: every window is whole (padded) mel frames
    "granite_speech": "input_features_mask",
    "phi4_multimodal": None,  # audio_attention_mask is given only for a batch of two or more clips
    "qwen3_omni_moe_thinker": "feature_attention_mask",
}
# The mel features' key, the axis holding the mel bins, and the config field they must equal
# (Granite Speech stacks two 10 ms frames: its encoder's input_dim is 2 x n_mels).
FEATURES = {
    "granite_speech": ("input_features", -1, lambda c: c.encoder_config.input_dim // 2, 2),
    "phi4_multimodal": ("audio_input_features", -1, lambda c: c.audio_config.input_size, 1),
}
DEFAULT_FEATURES = ("input_features", 1, lambda c: c.audio_config.num_mel_bins, 1)


def _n_audio_tokens(n_samples: int, chunk_seconds: int = 2, arch_name: str = "qwen2_audio") -> int:
    """Audio tokens of one clip: mel frames -> conv stride 2 -> avg-pool stride 2, per chunk
    (GLM-ASR: conv stride 2, then 4 frames merged into one token; Qwen3-ASR: 13 tokens per full
    100-frame window, three stride-2 convs over the last partial one; Voxtral: every window is
    padded whole and gives 12.5 tokens per second of it, the padding's included)."""
    if arch_name == "granite_speech":
        # centred STFT frames, pairs stacked, projector windows of 15 frames -> 3 queries each
        encoder = (n_samples // 160 + 1) // 2
        return -(-encoder // 15) * 3
    if arch_name == "phi4_multimodal":
        # 25 ms frames every 10 ms, one token per 8 frames (rounded up)
        return -(-((n_samples - 400) // 160 + 1) // 8)
    if arch_name == "voxtral":
        windows = -(-n_samples // (chunk_seconds * SAMPLING_RATE))
        return windows * int(chunk_seconds * 12.5)
    frames = n_samples // 160
    if arch_name in ("qwen3_asr", "qwen3_omni_moe_thinker"):
        rest = frames % 100
        for _ in range(3):
            rest = (rest - 1) // 2 + 1
        return rest + frames // 100 * 13
    per_chunk = chunk_seconds * 100
    total = 0
    while frames > 0:
        f = min(frames, per_chunk)
        conv = (f - 1) // 2 + 1
        total += (conv - 4) // 4 + 1 if arch_name == "glmasr" else (conv - 2) // 2 + 1
        frames -= f
    return total


@pytest.mark.parametrize("arch_name", TINY_ARCHS)
def test_save_reload_forward_generate(arch_name, tmp_path):
    import transformers

    save_tiny(arch_name, tmp_path)
    cls = getattr(transformers, CLASSES[arch_name])
    model = cls.from_pretrained(tmp_path).eval()
    if arch_name in LOCAL_PROCESSORS:  # what load_model builds for these classes
        processor = build_processor(arch_name, tmp_path)
    else:
        processor = transformers.AutoProcessor.from_pretrained(tmp_path)
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(model).__name__ == CLASSES[arch_name]
    assert type(processor).__name__ == PROCESSORS[arch_name]
    assert type(config).__name__ == type(model.config).__name__

    # Reloaded weights are the built ones (same seed -> same model).
    ref, _ = build_tiny(arch_name, seed=0)
    ref_state = ref.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, ref_state[name]), name

    # A prompt through the chat template and the processor, audio placeholder expanded.
    audio = (0.1 * np.random.default_rng(1).standard_normal(int(1.5 * SAMPLING_RATE))).astype(np.float32)
    if arch_name == "voxtral":  # audio enters only through apply_chat_template
        assert type(processor.tokenizer).__name__ == "MistralCommonBackend"  # the tekken reloads as itself
        batch = build_inputs(processor, None, "cot", audios=[audio], questions=["what is the sound ?"])
    else:
        text = chat_prompt(processor, "what is the sound ?")
        batch = processor(text=[text], audio=[audio], sampling_rate=SAMPLING_RATE, return_tensors="pt")
    audio_id = describe(model).audio_token_id
    n_audio = int((batch["input_ids"] == audio_id).sum())
    assert n_audio == _n_audio_tokens(audio.shape[0], arch_name=arch_name) > 1
    assert FEATURE_MASK[arch_name] is None or FEATURE_MASK[arch_name] in batch
    key, axis, n_mels, stack = FEATURES.get(arch_name, DEFAULT_FEATURES)
    assert batch[key].shape[axis] == stack * n_mels(model.config)

    with torch.no_grad():
        out = model(**batch)
        assert out.logits.shape == (1, batch["input_ids"].shape[1], describe(model).vocab_size)
        assert torch.isfinite(out.logits).all()
        gen = model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert gen.shape == (1, batch["input_ids"].shape[1] + 4)
    assert torch.equal(gen[:, : batch["input_ids"].shape[1]], batch["input_ids"])


@pytest.mark.parametrize("arch_name", TINY_ARCHS)
def test_arch_table_resolves(arch_name, tiny_model):
    model, _ = tiny_model(arch_name)
    arch = describe(model)
    table = arch.table
    tcfg = arch.text_config(model)
    assert tcfg is (model.config if arch_name == "phi4_multimodal" else model.config.text_config)
    assert table.model_class == CLASSES[arch_name] and arch.name == arch_name
    for path in (table.decoder_layers, table.final_norm, table.audio_tower, table.audio_layers, table.projector):
        assert isinstance(get_attr_path(model, path), torch.nn.Module), path
    assert arch.n_layers == tcfg.num_hidden_layers == len(arch.decoder_layers(model)) == 2
    assert arch.n_heads == tcfg.num_attention_heads == 4
    assert arch.n_kv_heads == tcfg.num_key_value_heads == 2  # grouped-query attention
    assert arch.head_dim == tcfg.hidden_size // tcfg.num_attention_heads == 16
    assert arch.d_model == tcfg.hidden_size == 64
    assert arch.vocab_size == tcfg.vocab_size
    assert arch.audio_token_id == audio_token_id_of(model.config, table) is not None
    assert arch.n_audio_layers == len(get_attr_path(model, table.audio_layers)) == 2
    for layer in range(arch.n_layers):
        attn = arch.attention(model, layer)
        if hasattr(attn, "qkv_proj"):  # Phi-4: one fused projection, rows [q | k | v]
            assert attn.qkv_proj.out_features == (arch.n_heads + 2 * arch.n_kv_heads) * arch.head_dim
        else:
            assert attn.q_proj.out_features == arch.n_heads * arch.head_dim
            assert attn.k_proj.out_features == arch.n_kv_heads * arch.head_dim
        assert arch.o_proj(model, layer).in_features == arch.n_heads * arch.head_dim
    # The projector maps audio-encoder features to the decoder width.
    proj = get_attr_path(model, table.projector)
    last_linear = [m for m in proj.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert last_linear.out_features == arch.d_model


@pytest.mark.parametrize("arch_name", TINY_ARCHS)
def test_batch_is_left_padded_with_different_lengths(arch_name, tiny_model):
    model, processor = tiny_model(arch_name)
    batch = tiny_batch(processor)
    mask = batch["attention_mask"]
    lengths = mask.sum(1)
    assert lengths[0] != lengths[1]
    assert (mask[:, -1] == 1).all()  # left padding: every row ends on a real token
    audio_id = describe(model).audio_token_id
    counts = (batch["input_ids"] == audio_id).sum(1)
    assert counts.tolist() == [_n_audio_tokens(int(d * SAMPLING_RATE), arch_name=arch_name) for d in (1.3, 0.5)]


def test_seeded():
    a, _ = build_tiny("qwen2_audio", seed=0)
    b, _ = build_tiny("qwen2_audio", seed=0)
    c, _ = build_tiny("qwen2_audio", seed=1)
    wa = a.model.language_model.layers[0].self_attn.q_proj.weight
    assert torch.equal(wa, b.model.language_model.layers[0].self_attn.q_proj.weight)
    assert not torch.equal(wa, c.model.language_model.layers[0].self_attn.q_proj.weight)


def test_names_and_errors():
    assert canonical_arch("Qwen2AudioForConditionalGeneration") == "qwen2_audio"
    assert canonical_arch("AudioFlamingo3ForConditionalGeneration") == "audioflamingo3"
    with pytest.raises(ConfigError, match="arch_name 'gpt2'"):
        build_tiny("gpt2")


def test_shaped_preset_config_has_qwen2_audio_7b_dims():
    # build_shaped instantiates 8.4 B parameters: check only the config it would build.
    spec = PRESETS["qwen2-audio-7b"]
    proc = build_tiny_processor("qwen2_audio", n_mels=spec["n_mels"], chunk_seconds=spec["chunk_seconds"])
    cfg = build_config(
        "qwen2_audio",
        proc.tokenizer,
        text=spec["text"],
        audio=spec["audio"],
        n_mels=spec["n_mels"],
        chunk_seconds=spec["chunk_seconds"],
    )
    t, a = cfg.text_config, cfg.audio_config
    assert (t.num_hidden_layers, t.hidden_size, t.num_attention_heads, t.num_key_value_heads) == (32, 4096, 32, 32)
    assert (t.intermediate_size, t.vocab_size) == (11008, 156032)
    assert (a.encoder_layers, a.d_model, a.num_mel_bins, a.max_source_positions) == (32, 1280, 128, 1500)
    assert proc.feature_extractor.chunk_length == 30 and proc.feature_extractor.feature_size == 128


def test_unsupported_classes_are_real_and_have_no_table():
    """Every class listed as unsupported exists in transformers and gets the no-table error."""
    import transformers

    from auralens.interp.arch import TABLES, UNSUPPORTED, table_for_class
    from auralens.interp.errors import ArchitectureError

    for cls, reason in UNSUPPORTED.items():
        assert hasattr(transformers, cls), cls
        assert cls not in TABLES and reason
        with pytest.raises(ArchitectureError, match="no architecture table"):
            table_for_class(cls)
