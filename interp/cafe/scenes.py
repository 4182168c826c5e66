"""Seeded synthetic audio scenes: a few non-overlapping events with full ground truth.

Every event has a class, onset, duration, loudness (dBFS) and pitch (Hz).  Loudness and pitch are
drawn from two well-separated levels ("soft"/"loud", "low"/"high") so that comparisons asked by
the questions are decidable from the audio by construction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

SAMPLE_RATE = 16_000
CLIP_SECONDS = 4.0

# sound classes: each a different spectro-temporal shape
CLASSES: tuple[str, ...] = ("tone", "chirp_up", "chirp_down", "noise", "clicks", "buzz")
PITCH_LEVELS = {"low": (220.0, 400.0), "high": (900.0, 1600.0)}
LOUDNESS_LEVELS = {"soft": (-34.0, -30.0), "loud": (-12.0, -8.0)}


@dataclass(frozen=True, kw_only=True)
class Event:
    cls: str
    onset: float  # seconds
    duration: float  # seconds
    loudness_db: float  # dBFS of the event's RMS
    pitch_hz: float  # fundamental / centre frequency
    pitch_level: str  # "low" | "high"
    loudness_level: str  # "soft" | "loud"

    @property
    def offset(self) -> float:
        return self.onset + self.duration


@dataclass(frozen=True, kw_only=True)
class Scene:
    scene_id: str
    seed: int
    events: tuple[Event, ...]
    duration: float = CLIP_SECONDS
    sample_rate: int = SAMPLE_RATE
    background_db: float = -60.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["events"] = [asdict(e) for e in self.events]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        d = dict(d)
        d["events"] = tuple(Event(**e) for e in d["events"])
        return cls(**d)


def make_scene(seed: int, *, n_events: int | None = None, duration: float = CLIP_SECONDS) -> Scene:
    """Draw one scene. Same seed, same scene."""
    rng = np.random.default_rng(seed)
    n = int(n_events if n_events is not None else rng.integers(1, 5))
    durs = rng.uniform(0.35, 0.65, size=n)
    free = duration - durs.sum() - 0.1
    # random gaps (>= 0.08 s) distributing the free time
    weights = rng.dirichlet(np.ones(n + 1))
    gaps = 0.08 + weights * max(free - 0.08 * (n + 1), 0.0)
    events = []
    t = 0.05 + gaps[0]
    for i in range(n):
        cls = CLASSES[int(rng.integers(len(CLASSES)))]
        pl = "low" if rng.random() < 0.5 else "high"
        ll = "soft" if rng.random() < 0.5 else "loud"
        events.append(
            Event(
                cls=cls,
                onset=round(float(t), 4),
                duration=round(float(durs[i]), 4),
                loudness_db=round(float(rng.uniform(*LOUDNESS_LEVELS[ll])), 2),
                pitch_hz=round(float(rng.uniform(*PITCH_LEVELS[pl])), 1),
                pitch_level=pl,
                loudness_level=ll,
            )
        )
        t += durs[i] + gaps[i + 1]
    return Scene(scene_id=f"cafe-{seed}", seed=seed, events=tuple(events), duration=duration)


def _event_wave(e: Event, sr: int, rng: np.random.Generator) -> np.ndarray:
    n = int(round(e.duration * sr))
    t = np.arange(n) / sr
    f0 = e.pitch_hz
    if e.cls == "tone":
        x = np.sin(2 * np.pi * f0 * t)
    elif e.cls in ("chirp_up", "chirp_down"):
        f_start, f_end = (f0 / 1.8, f0 * 1.8) if e.cls == "chirp_up" else (f0 * 1.8, f0 / 1.8)
        k = np.log(f_end / f_start) / e.duration
        phase = 2 * np.pi * f_start * (np.exp(k * t) - 1) / k
        x = np.sin(phase)
    elif e.cls == "noise":
        # band-limited noise centred on the pitch (one octave wide)
        white = rng.standard_normal(n)
        spec = np.fft.rfft(white)
        freqs = np.fft.rfftfreq(n, 1 / sr)
        spec[(freqs < f0 / 1.41) | (freqs > f0 * 1.41 * 2)] = 0
        x = np.fft.irfft(spec, n)
    elif e.cls == "clicks":
        x = np.zeros(n)
        period = int(sr / 10)  # 10 clicks (20 ms pitched pulses) per second
        click = np.sin(2 * np.pi * f0 * np.arange(int(0.02 * sr)) / sr) * np.hanning(int(0.02 * sr))
        for s in range(0, n - len(click), period):
            x[s : s + len(click)] += click
    elif e.cls == "buzz":
        x = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 8))
    else:  # pragma: no cover - classes are closed
        raise ValueError(e.cls)
    # 10 ms raised-cosine fades
    fade = min(int(0.01 * sr), n // 2)
    if fade:
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, fade))
        x[:fade] *= ramp
        x[-fade:] *= ramp[::-1]
    rms = np.sqrt(np.mean(x**2)) + 1e-12
    return (x / rms) * 10 ** (e.loudness_db / 20)


def synthesize(scene: Scene) -> np.ndarray:
    """Render the scene to a mono float32 waveform at ``scene.sample_rate``."""
    sr = scene.sample_rate
    rng = np.random.default_rng(scene.seed + 7919)
    n = int(round(scene.duration * sr))
    y = rng.standard_normal(n) * 10 ** (scene.background_db / 20)
    for e in scene.events:
        s = int(round(e.onset * sr))
        w = _event_wave(e, sr, rng)
        y[s : s + len(w)] += w[: n - s]
    return np.clip(y, -1.0, 1.0).astype(np.float32)
