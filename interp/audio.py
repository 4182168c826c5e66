"""Audio inputs: read, mix to mono, resample, clip; silence baselines of identical length."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from interp.errors import AudioInputError


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read any file libsndfile can (wav/flac/ogg, and mp3 with libsndfile >= 1.1).

    Returns float32 [frames, channels] and the sample rate."""
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise AudioInputError(f"audio file {str(path)!r}: expected an existing file, found nothing at that path")
    if path.is_dir():
        raise AudioInputError(f"audio file {str(path)!r}: expected a file, found a directory")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise AudioInputError(
            f"audio file {str(path)!r}: expected a readable audio file (wav/flac/ogg/mp3), "
            f"found something libsndfile cannot decode ({exc})"
        ) from exc
    if data.size == 0:
        raise AudioInputError(f"audio file {str(path)!r}: expected audio samples, found an empty file (0 frames)")
    if not np.isfinite(data).all():
        raise AudioInputError(f"audio file {str(path)!r}: expected finite samples, found NaN or Inf")
    return data, int(sr)


def to_mono(data: np.ndarray) -> np.ndarray:
    return data.mean(axis=1) if data.ndim == 2 else data


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    if sr_in == sr_out:
        return x.astype(np.float32, copy=False)
    if sr_in <= 0:
        raise AudioInputError(f"sample rate: expected a positive rate, found {sr_in}")
    import soxr

    return soxr.resample(x.astype(np.float32), sr_in, sr_out, quality="HQ").astype(np.float32)


def prepare(
    x: np.ndarray, sr: int, *, target_sr: int, max_seconds: float | None = None, name: str = "<array>"
) -> np.ndarray:
    """Mono, resampled to ``target_sr`` and clipped to ``max_seconds`` (with a warning)."""
    x = np.asarray(x)
    if x.ndim == 2:
        # accept [frames, channels] or [channels, frames] (the shorter axis is channels)
        x = x.mean(axis=1) if x.shape[0] >= x.shape[1] else x.mean(axis=0)
    if x.ndim != 1 or x.size == 0:
        raise AudioInputError(f"audio {name}: expected a non-empty 1-D or 2-D waveform, found shape {x.shape}")
    x = resample(x, sr, target_sr)
    if max_seconds is not None and len(x) > int(max_seconds * target_sr):
        warnings.warn(
            f"audio {name}: {len(x) / target_sr:.2f} s is longer than the model's maximum {max_seconds:.2f} s; "
            "clipped to the maximum",
            stacklevel=2,
        )
        x = x[: int(max_seconds * target_sr)]
    return x


def load_audio(path: str | Path, *, target_sr: int, max_seconds: float | None = None) -> np.ndarray:
    data, sr = read_audio(path)
    return prepare(to_mono(data), sr, target_sr=target_sr, max_seconds=max_seconds, name=repr(str(path)))


def silence_like(x: np.ndarray) -> np.ndarray:
    """Digital silence with exactly the clip's length: the baseline for audio-minus-silence."""
    return np.zeros_like(np.asarray(x, dtype=np.float32))


def processor_limits(processor) -> tuple[int, float | None]:
    fe = processor.feature_extractor
    sr = int(fe.sampling_rate)
    chunk = getattr(fe, "chunk_length", None)
    return sr, (float(chunk) if chunk else None)


def item_audio(item, processor, *, root: str | Path | None = None) -> np.ndarray:
    """The waveform an item refers to, at the processor's rate, clipped to its maximum."""
    sr, max_s = processor_limits(processor)
    if item.audio.startswith("cafe:"):
        from interp.cafe.scenes import Scene, make_scene, synthesize

        scene = Scene.from_dict(item.scene) if item.scene else make_scene(int(item.audio.split(":", 1)[1]))
        return prepare(synthesize(scene), scene.sample_rate, target_sr=sr, max_seconds=max_s, name=item.item_id)
    path = Path(item.audio)
    if root is not None and not path.is_absolute():
        path = Path(root) / path
    return load_audio(path, target_sr=sr, max_seconds=max_s)
