"""Dataset loaders: MMAU's real quirks, MMAR, folders; bad rows get clear errors."""

import json
from pathlib import Path

import pytest

from interp.datasets import fingerprint, load_dataset, load_folder, load_mmar, load_mmau
from interp.errors import DatasetError

MMAU = Path(__file__).resolve().parents[2] / "shared" / "data" / "mmau-test-mini.json"


@pytest.mark.skipif(not MMAU.exists(), reason="shared MMAU test-mini JSON not present")
def test_mmau_test_mini_loads_with_its_quirks():
    items = load_mmau(MMAU)
    assert len(items) == 1000
    assert {len(i.choices) for i in items} == {2, 4, 5, 8}
    listed = [i for i in items if i.meta.get("category") and isinstance(i.meta["category"], list)]
    assert listed and all(isinstance(i.category, str) and i.category for i in listed)
    assert all(i.answer in i.choices for i in items)
    assert items[0].audio.endswith(".wav") and "test-mini-audios" in items[0].audio
    # dispatch by file shape gives the same
    assert [i.item_id for i in load_dataset(str(MMAU), n=5)] == [i.item_id for i in items[:5]]


def _write(p, rows):
    p.write_text(json.dumps(rows))
    return p


def test_row_without_answer_names_file_and_row(tmp_path):
    p = _write(tmp_path / "m.json", [{"id": "a", "audio_id": "x.wav", "question": "q?", "choices": ["a", "b"]}])
    with pytest.raises(DatasetError, match=r"m.json row 0 \(id a\).*'answer'"):
        load_mmau(p)


def test_answer_outside_choices_and_too_few_choices(tmp_path):
    p = _write(tmp_path / "m.json", [{"id": "a", "audio_id": "x.wav", "question": "q?", "choices": ["a", "b"], "answer": "c"}])
    with pytest.raises(DatasetError, match="answer to be one of the choices"):
        load_mmau(p)
    p = _write(tmp_path / "m.json", [{"id": "a", "audio_id": "x.wav", "question": "q?", "choices": ["a"], "answer": "a"}])
    with pytest.raises(DatasetError, match="at least 2 choices"):
        load_mmau(p)


def test_invalid_json_and_wrong_shape(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(DatasetError, match="bad.json.*invalid JSON"):
        load_mmau(p)
    p.write_text('{"a": 1}')
    with pytest.raises(DatasetError, match="JSON list"):
        load_mmau(p)


def test_mmar_and_folder(tmp_path):
    p = _write(
        tmp_path / "MMAR-meta.json",
        [{"id": "1", "audio_path": "./audio/1.wav", "question": "q?", "choices": ["x", "y"], "answer": "y",
          "modality": "sound", "category": "Signal", "sub-category": "s"}],
    )
    (it,) = load_mmar(p)
    assert it.audio == str((tmp_path / "audio" / "1.wav").resolve()) and it.task == "sound"
    assert load_dataset(str(p))[0].item_id == "1"
    d = tmp_path / "f"
    d.mkdir()
    (d / "questions.jsonl").write_text(
        json.dumps({"audio": "c.wav", "question": "q?", "choices": ["a", "b"], "answer": "a", "speaker": "s1"}) + "\n"
    )
    (it,) = load_folder(d)
    assert it.meta["speaker"] == "s1" and it.audio.endswith("c.wav")
    (d / "questions.jsonl").write_text('{"audio": "c.wav"}\n')
    with pytest.raises(DatasetError, match="questions.jsonl line 1"):
        load_folder(d)


def test_cafe_spec_and_fingerprint():
    a = load_dataset("cafe", n=12, seed=3)
    b = load_dataset("cafe:perception", n=12, seed=3)
    assert {i.tier for i in b} == {"perception"} and len(a) == 12
    assert fingerprint(a) == fingerprint(load_dataset("cafe", n=12, seed=3)) != fingerprint(b)
    with pytest.raises(DatasetError, match="expected 'cafe'"):
        load_dataset("nonsense.txt")
