"""The processors auralens builds where transformers' own need torchaudio / torchvision
(auralens.interp.processors): Granite Speech's mel features against an independent NumPy
spectrogram, the saved-config round trip, and the refusals of images and videos."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

from auralens.interp import compat
from auralens.interp.errors import ArchitectureError, ConfigError
from auralens.interp.processors import (
    LOCAL_PROCESSORS,
    build_processor,
    granite_log_mel,
    granite_mel_extractor_class,
)
from auralens.testing.tiny import SAMPLING_RATE, build_tiny_processor, chat_prompt, save_tiny


def _numpy_granite_features(wave: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """Granite Speech's encoder input computed with transformers' NumPy ``spectrogram`` (not
    torch.stft): a periodic 400-sample Hann window centred in 512, reflect padding, power 2, HTK
    mel filters; then log10, floor at max - 8, /4 + 1, pairs of frames stacked."""
    window = window_function(400, "hann", periodic=True, frame_length=512, center=True)
    fb = mel_filter_bank(num_frequency_bins=257, num_mel_filters=n_mels, min_frequency=0.0, max_frequency=8000.0,
                         sampling_rate=16_000, norm=None, mel_scale="htk")
    mel = spectrogram(wave.astype(np.float64), window, frame_length=512, hop_length=160, fft_length=512, power=2.0,
                      center=True, pad_mode="reflect", mel_filters=fb, mel_floor=1e-10, log_mel="log10")
    mel = mel.T  # [frames, n_mels]
    mel = np.maximum(mel, mel.max() - 8.0) / 4 + 1
    if mel.shape[0] % 2:
        mel = mel[:-1]
    return mel.reshape(-1, 2 * n_mels)


@pytest.mark.parametrize("seconds", [0.73, 2.0])
def test_granite_log_mel_matches_an_independent_numpy_spectrogram(seconds):
    rng = np.random.default_rng(3)
    t = np.arange(int(seconds * 16_000)) / 16_000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)
    got = granite_log_mel(torch.from_numpy(wave))[0].numpy()
    ref = _numpy_granite_features(wave)
    assert got.shape == ref.shape == ((len(wave) // 160 + 1) // 2, 160)
    np.testing.assert_allclose(got, ref, atol=2e-5, rtol=0)
    # the check can fail: another hop gives other features
    other = granite_log_mel(torch.from_numpy(wave), hop_length=200)[0].numpy()
    assert other.shape != ref.shape or np.abs(other - ref).max() > 1e-2


def test_granite_extractor_reads_the_released_preprocessor_config():
    # ibm-granite/granite-speech-3.3's preprocessor_config.json keeps the mel settings in melspec_kwargs
    saved = {"melspec_kwargs": {"hop_length": 160, "n_fft": 512, "n_mels": 80, "sample_rate": 16000,
                                "win_length": 400},
             "projector_downsample_rate": 5, "projector_window_size": 15, "sampling_rate": 16000}
    fe = granite_mel_extractor_class()(**saved)
    assert fe.melspec_kwargs == saved["melspec_kwargs"] and fe.sampling_rate == 16_000
    wave = np.zeros(16_000, dtype=np.float32)
    wave[::97] = 0.5
    out = fe([wave, wave[:8000]])
    assert out["input_features"].shape == (2, 50, 160)
    assert out["audio_embed_sizes"] == [-(-50 // 15) * 3, -(-25 // 15) * 3]
    assert out["input_features_mask"].sum(1).tolist() == out["audio_embed_sizes"]
    np.testing.assert_allclose(out["input_features"][0].numpy(), _numpy_granite_features(wave), atol=2e-5, rtol=0)


def test_granite_compat_names_the_private_helper_it_needs(monkeypatch):
    from transformers import GraniteSpeechFeatureExtractor

    assert compat.granite_speech_extractor_base() is GraniteSpeechFeatureExtractor
    monkeypatch.delattr(GraniteSpeechFeatureExtractor, "_get_num_audio_features")
    with pytest.raises(ArchitectureError, match="_get_num_audio_features"):
        compat.granite_speech_extractor_base()


@pytest.mark.parametrize("arch_name", sorted(LOCAL_PROCESSORS))
def test_saved_folder_builds_the_same_processor(arch_name, tmp_path):
    save_tiny(arch_name, tmp_path)
    built = build_tiny_processor(arch_name)
    loaded = build_processor(arch_name, tmp_path)
    assert type(loaded).__name__ == LOCAL_PROCESSORS[arch_name] == type(built).__name__
    audio = (0.1 * np.random.default_rng(0).standard_normal(int(1.1 * SAMPLING_RATE))).astype(np.float32)
    text = chat_prompt(built, "what is the sound ?")
    a = built(text=[text], audio=[audio], sampling_rate=SAMPLING_RATE, return_tensors="pt")
    b = loaded(text=[text], audio=[audio], sampling_rate=SAMPLING_RATE, return_tensors="pt")
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])), k
    assert loaded.feature_extractor.sampling_rate == SAMPLING_RATE


def test_images_and_videos_are_refused_in_one_line():
    phi4 = build_tiny_processor("phi4_multimodal")
    with pytest.raises(ConfigError, match="images: expected none"):
        phi4(text=["x"], images=[np.zeros((4, 4, 3), dtype=np.uint8)])
    omni = build_tiny_processor("qwen3_omni_moe_thinker")
    with pytest.raises(ConfigError, match="images/videos: expected none"):
        omni(text=["x"], videos=[np.zeros((2, 4, 4, 3), dtype=np.uint8)])


def test_build_processor_refuses_other_tables(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({}))
    with pytest.raises(ConfigError, match="table_name 'qwen2_audio'"):
        build_processor("qwen2_audio", tmp_path)
