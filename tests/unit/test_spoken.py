"""espeak-ng spoken-item folders: deterministic, readable by the folder loader, refused cleanly."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf

from auralens.interp import spoken
from auralens.interp.datasets import check_audio_files, load_dataset
from auralens.interp.errors import ConfigError

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed (apt-get install espeak-ng)")


def test_rows_are_seeded_and_valid():
    a, b = spoken.make_spoken_rows(30, seed=3), spoken.make_spoken_rows(30, seed=3)
    assert a == b and a != spoken.make_spoken_rows(30, seed=4)
    for r in a:
        assert r["answer"] in r["choices"] and len(set(r["choices"])) == 4
        assert r["category"] in spoken.QTYPES and r["voice"] in spoken.VOICES
    assert {r["category"] for r in spoken.make_spoken_rows(200, seed=0)} == set(spoken.QTYPES)


@needs_espeak
def test_folder_loads_and_audio_is_speech(tmp_path):
    out = spoken.write_spoken_dataset(tmp_path / "sp", 6, seed=1)
    items = load_dataset(str(out))
    assert len(items) == 6 and all(it.task == "speech" for it in items)
    check_audio_files(items)
    wav, sr = sf.read(items[0].audio, dtype="float32")
    assert sr == 16000 and 0.1 < len(wav) / sr <= spoken.MAX_SECONDS
    assert np.abs(wav).max() > 0.3  # normalised speech, not silence
    again = spoken.write_spoken_dataset(tmp_path / "sp2", 6, seed=1)
    assert (again / "audio" / "spoken-1-0.wav").read_bytes() == (out / "audio" / "spoken-1-0.wav").read_bytes()


def test_bad_options_fail_before_any_folder(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="question types"):
        spoken.write_spoken_dataset(tmp_path / "x", 3, qtypes=("word", "bogus"))
    with pytest.raises(ConfigError, match="n >= 1"):
        spoken.write_spoken_dataset(tmp_path / "x", 0)
    monkeypatch.setattr(spoken.shutil, "which", lambda _: None)
    with pytest.raises(ConfigError, match="apt-get install espeak-ng"):
        spoken.write_spoken_dataset(tmp_path / "x", 3)
    assert not (tmp_path / "x").exists()


@needs_espeak
def test_existing_folder_is_refused_without_replace(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(ConfigError, match="--replace"):
        spoken.write_spoken_dataset(tmp_path / "x", 2)
