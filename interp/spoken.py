"""Spoken-word items: speech from espeak-ng (spoken words, numbers, short sentences; several
voices and speeds), written as a file dataset (a folder with ``questions.jsonl`` and WAV files)
so every stage reads it like any MMAU-format folder (splits by hashed id, audio headers checked).

``auralens data spoken --out DIR --n N --seed S`` writes one.  espeak-ng is a Debian package
(``apt-get install espeak-ng``); its absence is a one-line error before anything is written.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from auralens.interp.dataspec import MAX_ITEMS, MAX_SEED
from auralens.interp.errors import ConfigError

__all__ = ["NUMBERS", "QTYPES", "SENTENCES", "VOICES", "WORDS", "espeak", "make_spoken_rows", "write_spoken_dataset"]

SAMPLE_RATE = 16_000
MAX_SECONDS = 4.0
WORDS = ("apple", "river", "garden", "window", "yellow", "doctor", "basket", "candle", "pencil", "monkey",
         "orange", "rocket", "silver", "tiger", "violin", "winter", "butter", "castle", "dragon", "forest",
         "guitar", "hammer", "island", "jacket", "kitten", "lemon", "marble", "needle", "parrot", "rabbit",
         "saddle", "tunnel", "wallet", "zebra", "bridge", "cloud", "horse", "train", "chair", "phone")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
           "twelve", "twenty", "fifty", "hundred")
SENTENCES = ("the cat is on the mat", "please open the door", "it is raining today", "the train is late",
             "i like green tea", "turn off the light", "the bird can sing", "we walk to school",
             "the soup is too hot", "close the window now", "my phone is broken", "the sky is very blue",
             "bring me the red book", "the dog ran away", "let us eat lunch", "the music is loud")
QTYPES = {"word": ("which word is spoken ?", WORDS), "number": ("which number is spoken ?", NUMBERS),
          "sentence": ("what does the speaker say ?", SENTENCES)}
#: espeak-ng voice + variant; speeds in words per minute
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us+f3", "en-gb+f4", "en-us+m3",
          "en-gb-x-gbclan+f2", "en-us+m7")
SPEEDS = (120, 200)
PITCH = (30, 70)


def _espeak_binary() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise ConfigError("spoken items: expected the espeak-ng program, found it not installed; install it with "
                          "`apt-get install espeak-ng`")
    return exe


def espeak(text: str, *, voice: str, speed: int, pitch: int) -> np.ndarray:
    """``text`` spoken by espeak-ng, mono float32 at 16 kHz."""
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run([_espeak_binary(), "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", f.name, text],
                       check=True, capture_output=True)
        wav, sr = sf.read(f.name, dtype="float32")
    if wav.ndim > 1:
        wav = wav.mean(1)
    return soxr.resample(wav, int(sr), SAMPLE_RATE).astype(np.float32)


def make_spoken_rows(n: int, *, seed: int = 0, qtypes: tuple[str, ...] = tuple(QTYPES)) -> list[dict]:
    """``n`` item rows (MMAU's row shape plus the voice, speed and pitch), drawn from ``seed``."""
    bad = [q for q in qtypes if q not in QTYPES]
    if bad or not qtypes:
        raise ConfigError(f"spoken items: expected question types among {list(QTYPES)}, found {bad or 'none'}")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_ITEMS:
        raise ConfigError(f"spoken items: expected n >= 1 (at most {MAX_ITEMS:,}), found {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"spoken items: expected a seed from 0 to {MAX_SEED} (2**32 - 1), found {seed!r}")
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        qtype = qtypes[int(rng.integers(len(qtypes)))]
        question, pool = QTYPES[qtype]
        picks = rng.choice(len(pool), size=4, replace=False)
        choices = [pool[int(j)] for j in picks]
        answer = choices[int(rng.integers(4))]
        rows.append({"id": f"spoken-{seed}-{i}", "audio": f"audio/spoken-{seed}-{i}.wav", "question": question,
                     "choices": choices, "answer": answer, "task": "speech", "category": qtype,
                     "sub-category": qtype, "difficulty": "easy" if qtype != "sentence" else "medium",
                     "voice": VOICES[int(rng.integers(len(VOICES)))],
                     "speed": int(rng.integers(SPEEDS[0], SPEEDS[1] + 1)),
                     "pitch": int(rng.integers(PITCH[0], PITCH[1] + 1))})
    return rows


def write_spoken_dataset(out: str | Path, n: int, *, seed: int = 0, qtypes: tuple[str, ...] = tuple(QTYPES),
                         replace: bool = False) -> Path:
    """Write ``n`` spoken items as a folder dataset (``questions.jsonl`` + ``audio/*.wav``), atomically."""
    out = Path(out)
    rows = make_spoken_rows(n, seed=seed, qtypes=qtypes)  # checks the options first
    _espeak_binary()
    if out.exists() and not replace:
        raise ConfigError(f"--out {out}: expected a new folder, found one there; pass --replace to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        (tmp / "audio").mkdir()
        for r in rows:
            wav = espeak(r["answer"], voice=r["voice"], speed=r["speed"], pitch=r["pitch"])
            wav = wav[: int(MAX_SECONDS * SAMPLE_RATE)]
            peak = float(np.abs(wav).max()) or 1.0
            sf.write(tmp / r["audio"], (0.5 * wav / peak).astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
        (tmp / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
