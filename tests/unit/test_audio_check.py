"""Header-only audio checks: check_audio_header and datasets.check_audio_files."""

import numpy as np
import pytest
import soundfile as sf

from auralens.interp.audio import check_audio_header
from auralens.interp.datasets import check_audio_files, load_dataset
from auralens.interp.errors import AudioInputError
from auralens.interp.items import Item


def _wav(p, seconds=0.5, sr=16000, channels=1):
    x = np.zeros((int(sr * seconds), channels), dtype=np.float32)
    sf.write(p, x, sr)
    return p


def _item(item_id, audio):
    return Item(item_id=item_id, audio=str(audio), question="q?", choices=("a", "b"), answer="a")


def test_header_info_without_decoding(tmp_path, monkeypatch):
    p = _wav(tmp_path / "a.wav", seconds=0.5, sr=22050, channels=2)

    def no_read(*a, **k):
        raise AssertionError("check_audio_header must not decode frames")

    monkeypatch.setattr(sf, "read", no_read)
    monkeypatch.setattr(sf.SoundFile, "read", no_read)
    h = check_audio_header(p)
    assert (h.samplerate, h.frames, h.channels) == (22050, 11025, 2)
    assert h.seconds == pytest.approx(0.5)


@pytest.mark.parametrize(
    "name,content,found",
    [
        ("bad.wav", b"this is not audio at all" * 10, "cannot decode"),
        ("trunc.wav", b"RIFF\x00\x00\x00\x00WAVEfmt ", "cannot decode"),
        ("clip.m4a", b"\x00\x00\x00\x20ftypM4A " + b"\x00" * 64, "unsupported .m4a"),
    ],
)
def test_header_errors_name_file_expected_found(tmp_path, name, content, found):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(AudioInputError, match=name) as ei:
        check_audio_header(p)
    msg = str(ei.value)
    assert "expected" in msg and found in msg and "Traceback" not in msg


def test_header_missing_directory_and_zero_frames(tmp_path):
    with pytest.raises(AudioInputError, match="nope.wav.*nothing at that path"):
        check_audio_header(tmp_path / "nope.wav")
    with pytest.raises(AudioInputError, match="directory"):
        check_audio_header(tmp_path)
    p = tmp_path / "empty.wav"
    sf.write(p, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioInputError, match="empty.wav.*0 frames"):
        check_audio_header(p)


def test_check_audio_files_names_every_bad_item_and_skips_synthetic(tmp_path):
    good = _wav(tmp_path / "good.wav")
    (tmp_path / "junk.wav").write_bytes(b"not audio" * 20)
    items = [_item("ok", good), _item("gone", tmp_path / "missing.wav"), _item("junk", tmp_path / "junk.wav")]
    items += load_dataset("cafe", n=3, seed=1)  # in-memory audio: nothing to check
    with pytest.raises(AudioInputError) as ei:
        check_audio_files(items)
    msg = str(ei.value)
    assert "2 of 6 items" in msg
    assert "'gone'" in msg and "missing.wav" in msg and "'junk'" in msg and "junk.wav" in msg
    assert "'ok'" not in msg
    assert check_audio_files([_item("ok", good)] + load_dataset("cafe", n=3, seed=1)) is None
    assert check_audio_files([]) is None


def test_paths_that_are_not_regular_files_are_named_errors(tmp_path):
    import os

    loop = tmp_path / "loop.wav"
    os.symlink(loop, loop)  # a symlink to itself
    with pytest.raises(AudioInputError, match="loop.wav.*expected a readable file, found too many levels"):
        check_audio_header(loop)
    with pytest.raises(AudioInputError, match="expected a path without NUL bytes"):
        check_audio_header(str(tmp_path / "a\x00b.wav"))
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)  # opening it would block until a writer comes: it must never be opened
    with pytest.raises(AudioInputError, match="pipe.wav.*expected a regular file, found a FIFO"):
        check_audio_header(fifo)
    # the same through a dataset: the loader keeps the unresolvable paths, the check names them
    (tmp_path / "questions.jsonl").write_text("\n".join(
        '{"id": "%s", "audio": "%s", "question": "q?", "choices": ["a", "b"], "answer": "a"}' % (i, a)
        for i, a in (("l", "loop.wav"), ("f", "pipe.wav"), ("n", "a\\u0000b.wav"))) + "\n")
    with pytest.raises(AudioInputError, match=r"3 of 3 items") as err:
        check_audio_files(load_dataset(str(tmp_path)))
    assert all(f"item {i!r}" in str(err.value) for i in ("l", "f", "n"))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_samples_must_be_finite(tmp_path, bad):
    x = np.zeros(20000, dtype=np.float32)
    p = tmp_path / "ok.wav"
    sf.write(p, x, 16000, subtype="FLOAT")
    assert check_audio_header(p).subtype == "FLOAT"
    x[12345] = bad
    q = tmp_path / "bad.wav"
    sf.write(q, x, 16000, subtype="FLOAT")
    with pytest.raises(AudioInputError, match="bad.wav.*expected finite samples, found NaN or infinity.*frame 12345"):
        check_audio_header(q)
