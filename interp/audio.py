"""Audio inputs: check headers, read, mix to mono, resample, clip; silence baselines of identical length.

Files are never decoded whole when the caller has a maximum length: :func:`load_audio` reads only
the frames the clip needs (plus a short resampling margin), so a 30-minute file costs what a
30-second one does.
"""

from __future__ import annotations

import math
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import soxr

from auralens.interp.arch import TABLES
from auralens.interp.cafe.scenes import Scene, make_scene, synthesize
from auralens.interp.errors import ArchitectureError, AudioInputError

# audio containers libsndfile does not read: named as "unsupported format" rather than "not audio"
_OTHER_AUDIO_SUFFIXES = {".m4a", ".mp4", ".aac", ".wma", ".opus", ".webm", ".amr", ".ac3", ".ape", ".alac", ".mka"}
# source frames read past the clip point, so the resampler's filter sees the same neighbourhood as
# on the whole file: the clipped output is then bit-identical to resampling everything and clipping
# (checked for 8/11.025/16/96 kHz -> 16/24 kHz; 0.05 s was not enough for upsampling)
_RESAMPLE_MARGIN_S = 0.25


@dataclass(frozen=True)
class AudioHeader:
    """What a file's header says, read without decoding any samples."""

    path: str
    samplerate: int
    frames: int
    channels: int
    format: str = ""
    subtype: str = ""

    @property
    def seconds(self) -> float:
        return self.frames / self.samplerate if self.samplerate else 0.0


def _open_error(path: Path, exc: Exception) -> AudioInputError:
    suffix = path.suffix.lower()
    if suffix in _OTHER_AUDIO_SUFFIXES:
        return AudioInputError(
            f"audio file {str(path)!r}: expected a format libsndfile reads (wav/flac/ogg/mp3/aiff...), "
            f"found an unsupported {suffix} file; convert it (e.g. ffmpeg -i in{suffix} out.flac) ({exc})"
        )
    return AudioInputError(
        f"audio file {str(path)!r}: expected a readable audio file (wav/flac/ogg/mp3), "
        f"found something libsndfile cannot decode ({exc})"
    )


def check_audio_header(path: str | Path) -> AudioHeader:
    """Validate an audio file from its header alone (no frames are decoded).

    Raises :class:`AudioInputError` naming the file, what was expected and what was found: a
    missing file, a directory, a FIFO/socket/device, a symlink loop or a NUL byte in the path,
    float samples that are NaN or infinite (float files only: their samples are read to check),
    a WAV/AIFF file shorter than its header declares (truncated),
    something that is not audio or is in a format libsndfile cannot
    read, zero frames, a non-positive sample rate or no channels.  Returns the header's sample
    rate, frame count and channel count."""

    path = Path(path)
    _check_regular_file(path)
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise _open_error(path, exc) from None
    header = AudioHeader(
        path=str(path),
        samplerate=int(info.samplerate),
        frames=int(info.frames),
        channels=int(info.channels),
        format=str(info.format),
        subtype=str(info.subtype),
    )
    _check_header(header)
    _check_complete(path, header)
    if header.subtype in _FLOAT_SUBTYPES:
        _check_finite(path)
    return header


# RIFF/AIFF sizes that mean "unknown" (a stream written without seeking back): not a truncation
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)


def _data_chunk(path: Path) -> tuple[int, int] | None:
    """(declared byte size, offset of the first sample byte) of a WAV file's ``data`` chunk or an
    AIFF file's ``SSND`` chunk, read from the chunk headers alone; None when the file is neither
    (or an RF64 / unusual layout this walk does not follow)."""
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12:
            return None
        order: Literal["little", "big"]
        if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
            order, want, extra = "little", b"data", 0
        elif head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
            order, want, extra = "big", b"SSND", 8  # SSND: offset and block size before the samples
        else:
            return None
        for _ in range(64):  # a few chunks (fmt, fact, LIST, COMM...) come before the samples
            chunk = fh.read(8)
            if len(chunk) < 8:
                return None
            size = int.from_bytes(chunk[4:8], order)
            if chunk[:4] == want:
                return size - extra, fh.tell() + extra
            fh.seek(size + (size & 1), os.SEEK_CUR)  # chunks are padded to an even length
    return None


def _check_complete(path: Path, header: AudioHeader) -> None:
    """A WAV/AIFF file holds every sample its header declares: a file cut short (a partial copy
    or download) is refused instead of being read as a shorter clip."""
    if header.format not in ("WAV", "WAVEX", "AIFF"):
        return
    found = _data_chunk(path)
    if found is None:
        return
    declared, start = found
    if declared in _UNKNOWN_SIZES or declared < 0:
        return
    present = os.path.getsize(path) - start
    if present < declared:
        raise AudioInputError(
            f"audio file {str(path)!r}: expected the {declared:,} bytes of samples its header declares, found "
            f"{max(present, 0):,} (the file is truncated: copy or download it again)")


#: sample formats that can hold NaN or infinity (integer PCM cannot)
_FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")


def file_kind(path: str | Path) -> str:
    """What is at ``path``, in the words the errors use: ``"a file"`` (a regular file, symlinks
    followed), ``"a directory"``, ``"a FIFO (named pipe)"``, ``"a socket"``, ``"a device"``,
    ``"nothing"`` or ``"an unreadable path (<reason>)"``.  Nothing is opened: a FIFO is told by
    its type, so asking never blocks (opening one would wait for a writer)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "nothing"
    except (OSError, ValueError) as exc:  # ELOOP, EACCES, ENAMETOOLONG, a NUL byte
        return f"an unreadable path ({(getattr(exc, 'strerror', None) or str(exc)).lower()})"
    if stat.S_ISREG(st.st_mode):
        return "a file"
    if stat.S_ISDIR(st.st_mode):
        return "a directory"
    if stat.S_ISFIFO(st.st_mode):
        return "a FIFO (named pipe)"
    return "a socket" if stat.S_ISSOCK(st.st_mode) else "a device"


def _check_regular_file(path: Path) -> None:
    """A path that names a regular file: no NUL byte, no symlink loop, not a directory, not a
    FIFO, socket or device (opening a FIFO would block until something writes to it)."""
    text = str(path)
    if "\x00" in text:
        raise AudioInputError(f"audio file {text!r}: expected a path without NUL bytes, found one")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise AudioInputError(f"audio file {text!r}: expected an existing file, found nothing at that path") from None
    except OSError as exc:  # ELOOP (a symlink loop), EACCES on a folder above it, ENAMETOOLONG ...
        found = (exc.strerror or type(exc).__name__).lower()
        raise AudioInputError(f"audio file {text!r}: expected a readable file, found {found}") from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioInputError(f"audio file {text!r}: expected a file, found a directory")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device")
        raise AudioInputError(f"audio file {text!r}: expected a regular file, found {kind}")


def _check_finite(path: Path, block: int = 1 << 16) -> None:
    """A float-sample file's samples are all finite (read in blocks; integer PCM is skipped by
    the caller): a NaN or an infinity would reach the model as NaN activations."""
    for start, chunk in enumerate(sf.blocks(str(path), blocksize=block, dtype="float64", always_2d=True)):
        if not np.isfinite(chunk).all():
            bad = np.flatnonzero(~np.isfinite(chunk).all(axis=1))[0] + start * block
            raise AudioInputError(f"audio file {str(path)!r}: expected finite samples, found NaN or infinity "
                                  f"(first at frame {int(bad)})")


def _check_header(h: AudioHeader) -> None:
    if h.samplerate <= 0:
        raise AudioInputError(f"audio file {h.path!r}: expected a positive sample rate, found {h.samplerate}")
    if h.channels <= 0:
        raise AudioInputError(f"audio file {h.path!r}: expected at least one channel, found {h.channels}")
    if h.frames <= 0:
        raise AudioInputError(f"audio file {h.path!r}: expected audio samples, found an empty file (0 frames)")


def _read(path: str | Path, max_frames: int | None = None) -> tuple[np.ndarray, AudioHeader]:
    """Header-checked read of at most ``max_frames`` frames (all when None)."""

    header = check_audio_header(path)
    n = -1 if max_frames is None else max(1, min(int(max_frames), header.frames))
    try:
        with sf.SoundFile(header.path) as f:
            data = f.read(frames=n, dtype="float32", always_2d=True)
    except Exception as exc:
        raise _open_error(Path(header.path), exc) from None
    if data.size == 0:
        raise AudioInputError(f"audio file {header.path!r}: expected audio samples, found an empty file (0 frames)")
    if not np.isfinite(data).all():
        raise AudioInputError(f"audio file {header.path!r}: expected finite samples, found NaN or Inf")
    return data, header


def to_mono(data: np.ndarray) -> np.ndarray:
    return data.mean(axis=1) if data.ndim == 2 else data


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    if sr_in == sr_out:
        return x.astype(np.float32, copy=False)
    if sr_in <= 0:
        raise AudioInputError(f"sample rate: expected a positive rate, found {sr_in}")

    return soxr.resample(x.astype(np.float32), sr_in, sr_out, quality="HQ").astype(np.float32)


def _clip(
    x: np.ndarray, target_sr: int, max_seconds: float | None, name: str, seconds: float | None = None, model: str = ""
) -> np.ndarray:
    """Clip to ``max_seconds`` with a warning that gives the input's full length (``seconds``,
    when only part of it was read), the maximum and the model (``model``) whose maximum it is."""
    if max_seconds is None:
        return x
    keep = int(round(max_seconds * target_sr))
    full = seconds if seconds is not None else len(x) / target_sr
    if len(x) > keep or full > max_seconds:
        whose = f" of {model}" if model else ""
        warnings.warn(
            f"audio {name}: {full:.2f} s is longer than the model's maximum {max_seconds:.2f} s{whose}; "
            "clipped to the maximum",
            stacklevel=3,
        )
        x = x[:keep]
    return x


def prepare(
    x: np.ndarray, sr: int, *, target_sr: int, max_seconds: float | None = None, name: str = "<array>", model: str = ""
) -> np.ndarray:
    """Mono, resampled to ``target_sr`` and clipped to ``max_seconds`` (with a warning)."""
    x = np.asarray(x)
    if x.ndim == 2:
        # accept [frames, channels] or [channels, frames] (the shorter axis is channels)
        x = x.mean(axis=1) if x.shape[0] >= x.shape[1] else x.mean(axis=0)
    if x.ndim != 1 or x.size == 0:
        raise AudioInputError(f"audio {name}: expected a non-empty 1-D or 2-D waveform, found shape {x.shape}")
    if max_seconds is not None and sr > 0:
        # clip before resampling too (with a margin), so a long array is not resampled whole
        seconds = len(x) / sr
        x = x[: _frames_needed(max_seconds, sr)]
        return _clip(resample(x, sr, target_sr), target_sr, max_seconds, name, seconds, model)
    return resample(x, sr, target_sr)


def _frames_needed(max_seconds: float, sr: int) -> int:
    """Source frames to read for a clip of ``max_seconds``: the clip plus a resampling margin."""
    return int(math.ceil((max_seconds + _RESAMPLE_MARGIN_S) * sr))


def load_audio(path: str | Path, *, target_sr: int, max_seconds: float | None = None, model: str = "") -> np.ndarray:
    """Mono waveform at ``target_sr``, clipped to ``max_seconds`` (with a warning).

    Only the frames the clip needs are decoded (plus a short resampling margin); the header gives
    the file's full length for the warning."""
    header = check_audio_header(path)
    max_frames = _frames_needed(max_seconds, header.samplerate) if max_seconds is not None else None
    data, header = _read(path, max_frames)
    x = resample(to_mono(data), header.samplerate, target_sr)
    return _clip(x, target_sr, max_seconds, repr(str(path)), header.seconds, model)


def silence_like(x: np.ndarray) -> np.ndarray:
    """Digital silence with exactly the clip's length: the baseline for audio-minus-silence."""
    return np.zeros_like(np.asarray(x, dtype=np.float32))


@dataclass(frozen=True)
class AudioLimits:
    """How long a clip one processor takes and how it windows it (:func:`audio_limits`).

    ``max_seconds``: clips are cut past this (None: never); ``window_seconds``: the clip is encoded
    in consecutive windows of this length, the audio tokens of all windows in order (None or
    ``>= max_seconds``: one window); ``windowing``: the table's ``audio_windowing``; ``model``: who
    sets these limits, for messages (the table and the processor class)."""

    sample_rate: int
    max_seconds: float | None
    window_seconds: float | None
    windowing: str
    model: str

    def windows(self, seconds: float) -> list[tuple[float, float]]:
        """``(start, end)`` seconds of each window of a clip of ``seconds`` (after clipping).

        ``padded_windows`` (Voxtral): whole windows, the last one ending at the padded length
        ``ceil(seconds / window) * window``, since the padding has audio tokens too."""
        seconds = min(seconds, self.max_seconds) if self.max_seconds is not None else seconds
        w = self.window_seconds
        if self.windowing == "padded_windows" and w:
            n = max(1, math.ceil(seconds / w - 1e-9))
            return [(i * w, (i + 1) * w) for i in range(n)]
        if not w or w >= seconds:
            return [(0.0, float(seconds))]
        n = max(1, math.ceil(seconds / w - 1e-9))
        return [(i * w, min((i + 1) * w, float(seconds))) for i in range(n)]

    def to_dict(self) -> dict:
        return {"sample_rate": self.sample_rate, "max_seconds": self.max_seconds,
                "window_seconds": self.window_seconds, "windowing": self.windowing, "model": self.model}


def table_for_processor(processor) -> object | None:
    """The :class:`auralens.interp.arch.ArchTable` whose ``processor_classes`` name this processor's class
    (None: no table does)."""

    name = type(processor).__name__
    return next((t for t in TABLES.values() if name in t.processor_classes), None)


def audio_limits(processor, table=None) -> AudioLimits:
    """The maximum clip and the windows of ``processor``, as its table's ``audio_windowing`` says
    to read them (``table`` default: the table naming the processor's class).

    The processor's own values win over the table's (a checkpoint may configure a shorter
    window): ``one_chunk`` -> one window of ``feature_extractor.chunk_length``; ``windows`` ->
    windows of ``chunk_length``, at most ``max_audio_len // chunk_length`` whole ones (what the
    processor keeps); ``padded_windows`` -> windows of ``chunk_length`` (the last padded, with
    audio tokens for the padding), the table's maximum; ``unbounded`` -> the table's values.  A
    processor no table names keeps the old rule: one window of ``chunk_length``."""

    fe = processor.feature_extractor
    sr = int(fe.sampling_rate)
    chunk = getattr(fe, "chunk_length", None)
    chunk = float(chunk) if chunk else None
    table = table if table is not None else table_for_processor(processor)
    cls = type(processor).__name__
    if table is None:
        return AudioLimits(sr, chunk, chunk, "one_chunk", f"{cls} (no table names it: one chunk_length window)")
    model = f"{table.name} ({cls})"
    if table.audio_windowing == "one_chunk":
        window = chunk or table.window_seconds
        return AudioLimits(sr, window, window, "one_chunk", model)
    if table.audio_windowing == "windows":
        window = chunk or table.window_seconds
        max_len = getattr(processor, "max_audio_len", None) or table.max_audio_seconds
        if not window or not max_len:
            raise ArchitectureError(
                f"{model}: audio_windowing 'windows' expected the processor's feature_extractor.chunk_length "
                f"and max_audio_len (or the table's window_seconds and max_audio_seconds), found {window!r} and {max_len!r}"
            )
        n = max(1, int(float(max_len) // window))
        return AudioLimits(sr, n * window, window, "windows", model)
    if table.audio_windowing == "padded_windows":
        return AudioLimits(sr, table.max_audio_seconds, chunk or table.window_seconds, "padded_windows", model)
    return AudioLimits(sr, table.max_audio_seconds, table.window_seconds, table.audio_windowing, model)


def token_seconds(
    seconds: float, n_tokens: int, limits: AudioLimits, tokens_per_window: list[int] | None = None
) -> np.ndarray:
    """``[n_tokens, 2]`` start/end seconds of each audio placeholder token of one clip.

    Tokens come window by window (:meth:`AudioLimits.windows`), each window's tokens evenly over
    that window (``padded_windows``: the last window is the padded one, so the tokens past the
    clip's end are the padding's).  ``tokens_per_window`` gives the count of each window when
    known (the encoder's output lengths); otherwise the ``n_tokens`` are shared in proportion to the windows' lengths
    (the encoders here emit a fixed number of tokens per second, so this is exact up to one
    token at each window edge)."""
    spans = limits.windows(seconds)
    if tokens_per_window is None:
        total = spans[-1][1]
        edges = [round(n_tokens * end / total) for _, end in spans]
        tokens_per_window = [b - a for a, b in zip([0, *edges[:-1]], edges)]
    if len(tokens_per_window) != len(spans) or sum(tokens_per_window) != n_tokens:
        raise AudioInputError(
            f"token_seconds: expected {len(spans)} window counts summing to {n_tokens} tokens, "
            f"found {list(tokens_per_window)}"
        )
    out = np.zeros((n_tokens, 2), dtype=np.float64)
    i = 0
    for (a, b), n in zip(spans, tokens_per_window):
        if n:
            bounds = np.linspace(a, b, n + 1)
            out[i:i + n, 0], out[i:i + n, 1] = bounds[:-1], bounds[1:]
        i += n
    return out


def time_bin_seconds(token_secs: np.ndarray, time_bins: int) -> np.ndarray:
    """``[time_bins, 2]`` start/end seconds of each recorder time bin: bin ``k`` holds the tokens
    of rank ``r`` with ``floor(r * time_bins / n) == k`` (:func:`auralens.interp.attention_yield.time_bin_weights`)."""
    n = len(token_secs)
    if n < time_bins:
        raise AudioInputError(f"time_bin_seconds: expected at least time_bins={time_bins} tokens, found {n}")
    bins = (np.arange(n) * time_bins) // n
    return np.array([[token_secs[bins == k, 0].min(), token_secs[bins == k, 1].max()] for k in range(time_bins)])


def item_audio(item, processor, *, root: str | Path | None = None) -> np.ndarray:
    """The waveform an item refers to, at the processor's rate, clipped only past the maximum its
    table and processor allow (:func:`audio_limits`; a warning names that maximum and the model)."""
    lim = audio_limits(processor)
    sr, max_s = lim.sample_rate, lim.max_seconds
    if item.audio.startswith("cafe:"):

        scene = Scene.from_dict(item.scene) if item.scene else make_scene(int(item.audio.split(":", 1)[1]))
        return prepare(synthesize(scene), scene.sample_rate, target_sr=sr, max_seconds=max_s, name=item.item_id,
                       model=lim.model)
    path = Path(item.audio)
    if root is not None and not path.is_absolute():
        path = Path(root) / path
    return load_audio(path, target_sr=sr, max_seconds=max_s, model=lim.model)
