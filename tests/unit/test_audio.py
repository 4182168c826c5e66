"""Audio inputs: formats, mono mixing, resampling, clipping, silence, clear errors."""

import numpy as np
import pytest
import soundfile as sf

from auralens.interp.audio import load_audio, prepare, silence_like
from auralens.interp.errors import AudioInputError


def _tone(sr, seconds, f=440.0, channels=1):
    t = np.arange(int(sr * seconds)) / sr
    x = 0.5 * np.sin(2 * np.pi * f * t).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


@pytest.mark.parametrize("ext,subtype", [("wav", "PCM_16"), ("flac", "PCM_16"), ("ogg", "VORBIS")])
def test_reads_common_formats_resampled_to_target(tmp_path, ext, subtype):
    p = tmp_path / f"a.{ext}"
    sf.write(p, _tone(22050, 1.0), 22050, subtype=subtype)
    y = load_audio(p, target_sr=16000)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - 16000) <= 2
    # the tone survives resampling: spectral peak at 440 Hz
    spec = np.abs(np.fft.rfft(y))
    assert abs(np.fft.rfftfreq(len(y), 1 / 16000)[spec.argmax()] - 440) < 3


def test_stereo_is_mixed_to_mono(tmp_path):
    left = _tone(16000, 0.5)
    p = tmp_path / "st.wav"
    sf.write(p, np.stack([left, -left * 0 + left], axis=1), 16000, subtype="FLOAT")
    y = load_audio(p, target_sr=16000)
    assert np.allclose(y, left, atol=1e-6)


def test_long_clip_is_clipped_with_warning(tmp_path):
    p = tmp_path / "long.wav"
    sf.write(p, _tone(16000, 5.0), 16000)
    with pytest.warns(UserWarning, match="longer than the model's maximum"):
        y = load_audio(p, target_sr=16000, max_seconds=4.0)
    assert len(y) == 64000


def test_silence_has_identical_length():
    x = _tone(16000, 1.3)
    s = silence_like(x)
    assert s.shape == x.shape and not s.any()


@pytest.mark.parametrize(
    "content,reason",
    [(b"", "decode|empty"), (b"this is not audio at all" * 10, "decode"), (b"RIFF\x00\x00\x00\x00WAVEfmt ", "decode")],
)
def test_bad_files_get_a_clear_error_naming_the_file(tmp_path, content, reason):
    p = tmp_path / "bad.wav"
    p.write_bytes(content)
    with pytest.raises(AudioInputError, match="bad.wav") as ei:
        load_audio(p, target_sr=16000)
    assert "expected" in str(ei.value)


def test_empty_audio_file(tmp_path):
    p = tmp_path / "empty.wav"
    sf.write(p, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioInputError, match="empty.wav.*0 frames"):
        load_audio(p, target_sr=16000)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(AudioInputError, match="nothing at that path"):
        load_audio(tmp_path / "nope.wav", target_sr=16000)
    with pytest.raises(AudioInputError, match="directory"):
        load_audio(tmp_path, target_sr=16000)


def test_bad_arrays():
    with pytest.raises(AudioInputError, match="non-empty"):
        prepare(np.zeros(0), 16000, target_sr=16000)
    with pytest.raises(AudioInputError, match="shape"):
        prepare(np.zeros((2, 2, 2)), 16000, target_sr=16000)


def test_long_file_is_not_decoded_whole(tmp_path, monkeypatch):
    """A 10-minute file clipped to 30 s decodes only the 30 s (+ a resampling margin)."""
    import tracemalloc

    sr = 16000
    p = tmp_path / "ten_minutes.wav"
    block = (0.1 * np.sin(np.arange(sr * 10) * 0.05)).astype(np.float32)
    with sf.SoundFile(p, "w", samplerate=sr, channels=1, subtype="PCM_16") as f:
        for _ in range(60):  # written in 10 s blocks: the test never holds the whole file either
            f.write(block)
    assert sf.info(p).frames == sr * 600

    asked = []
    real_read = sf.SoundFile.read

    def spy(self, frames=-1, *a, **k):
        asked.append(frames)
        return real_read(self, frames, *a, **k)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    monkeypatch.setattr(sf, "read", lambda *a, **k: pytest.fail("sf.read decodes the whole file"))
    tracemalloc.start()
    try:
        with pytest.warns(UserWarning, match=r"600\.00 s is longer than the model's maximum 30\.00 s"):
            y = load_audio(p, target_sr=sr, max_seconds=30.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(y) == 30 * sr
    assert asked and all(0 < n <= 31 * sr for n in asked)
    # the whole file as float32 would be 38 MB; 30 s is ~2 MB
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    # identical to decoding everything and clipping
    with sf.SoundFile(p) as f:
        head = real_read(f, 30 * sr, dtype="float32")
    assert np.array_equal(y, head)


def test_clipped_read_matches_whole_read_after_resampling(tmp_path):
    p = tmp_path / "a.wav"
    x = np.random.default_rng(0).standard_normal(8000 * 6).astype(np.float32) * 0.1
    sf.write(p, x, 8000, subtype="FLOAT")
    with pytest.warns(UserWarning):
        y = load_audio(p, target_sr=16000, max_seconds=4.0)
    whole = prepare(x, 8000, target_sr=16000)[: 4 * 16000]
    assert np.array_equal(y, whole)
