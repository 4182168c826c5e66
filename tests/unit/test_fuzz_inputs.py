"""A fuzz of bad inputs through the real CLI (issue 25 item 6): malformed dataset rows, audio files
that are broken or not files at all, absurd option values, damaged run folders and architecture
tables.  Every case must end in exactly one ``error: ...`` line on stderr that names the input,
exit status 2, no traceback, no hang (each case runs under an alarm) and nothing new on disk
(no run folder, no report).  No model is loaded: every case is refused before that.

Each case is ``(id, build, needles)``: ``build(tmp_path)`` writes what the case needs and
returns the argv; the needles are the specific words the error line must hold."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from auralens.cli import main
from auralens.dashboards.synthetic import write_synthetic_run

#: seconds any one case may take (the slowest here takes about one)
CASE_TIMEOUT_S = 30
# every eval case asks for the cheapest run, so a case the checks let through would still end quickly
EVAL = ["eval", "--formats", "direct", "--no-silence", "--max-new-tokens", "2", "--batch-size", "2"]


def _wav(path: Path, seconds: float = 0.5, subtype: str = "PCM_16") -> Path:
    t = np.arange(int(16000 * seconds)) / 16000
    sf.write(path, (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000, subtype=subtype)
    return path


def _dataset(tmp: Path, rows_edit=None, n: int = 2) -> Path:
    """A folder dataset of ``n`` rows (ids f0.., audio a0.wav..); ``rows_edit(rows, folder)`` edits
    the rows (and the folder) before questions.jsonl is written."""
    folder = tmp / "ds"
    folder.mkdir()
    rows = []
    for i in range(n):
        _wav(folder / f"a{i}.wav")
        rows.append({"id": f"f{i}", "audio": f"a{i}.wav", "question": "which sound is first ?",
                     "choices": ["tone", "chirp", "noise"], "answer": "tone"})
    if rows_edit is not None:
        rows_edit(rows, folder)
    (folder / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _eval_on(rows_edit=None, *extra):
    """A case builder: ``auralens eval`` on a folder dataset edited by ``rows_edit``."""
    def build(tmp: Path) -> list:
        return [*EVAL, "--data", _dataset(tmp, rows_edit), "--n", "2", "--out", tmp / "run", *extra]
    return build


def _set(key, value):
    def edit(rows, _folder):
        rows[0][key] = value
    return edit


def _audio_to(make):
    """Row 0's audio becomes the file ``make(folder)`` creates (returns its name or path)."""
    def edit(rows, folder):
        rows[0]["audio"] = str(make(folder))
    return edit


def _symlink_loop(folder: Path) -> str:
    os.symlink(folder / "loop.wav", folder / "loop.wav")
    return "loop.wav"


def _fifo(folder: Path) -> str:
    os.mkfifo(folder / "pipe.wav")
    return "pipe.wav"


def _socket(folder: Path) -> str:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(folder / "s.wav"))  # left bound: the file stays a socket for the test
    _SOCKETS.append(s)
    return "s.wav"


_SOCKETS: list[socket.socket] = []


def _truncated(folder: Path) -> str:
    p = folder / "a0.wav"
    p.write_bytes(p.read_bytes()[:1000])
    return "a0.wav"


def _not_audio(folder: Path) -> str:
    (folder / "junk.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 8)
    return "junk.wav"


def _nan_samples(folder: Path) -> str:
    x = np.zeros(8000, np.float32)
    x[10] = np.nan
    sf.write(folder / "nan.wav", x, 16000, subtype="FLOAT")
    return "nan.wav"


def _mmau(edit):
    """``auralens eval`` on an MMAU-format JSON (audio under test-mini-audios/) edited by ``edit``."""
    def build(tmp: Path) -> list:
        (tmp / "test-mini-audios").mkdir()
        rows = []
        for i in range(2):
            _wav(tmp / "test-mini-audios" / f"m{i}.wav")
            rows.append({"id": f"m{i}", "audio_id": f"./test-mini-audios/m{i}.wav", "question": "which sound is first ?",
                         "choices": ["tone", "chirp"], "answer": "tone", "task": "sound", "category": "Sound"})
        edit(rows, tmp)
        (tmp / "mmau.json").write_text(json.dumps(rows))
        return [*EVAL, "--data", tmp / "mmau.json", "--n", "2", "--out", tmp / "run"]
    return build


def _cafe(*extra):
    def build(tmp: Path) -> list:
        return [*EVAL, "--n", "2", "--out", tmp / "run", *extra]
    return build


def _resume_without_manifest(tmp: Path) -> list:
    out = tmp / "run"
    out.mkdir()
    (out / "notes.txt").write_text("someone else's folder")
    return [*EVAL, "--n", "2", "--out", out, "--resume"]


def _questions_fifo(tmp: Path) -> list:
    folder = tmp / "ds"
    folder.mkdir()
    os.mkfifo(folder / "questions.jsonl")
    return [*EVAL, "--data", folder, "--n", "2", "--out", tmp / "run"]


def _json_fifo(tmp: Path) -> list:
    os.mkfifo(tmp / "mmau.json")
    return [*EVAL, "--data", tmp / "mmau.json", "--n", "2", "--out", tmp / "run"]


def _arch_table_fifo(tmp: Path) -> list:
    os.mkfifo(tmp / "table.json")
    return ["--arch-table", tmp / "table.json", "models"]


def _resume_manifest_fifo(tmp: Path) -> list:
    (tmp / "run").mkdir()
    os.mkfifo(tmp / "run" / "manifest.json")
    return [*EVAL, "--n", "2", "--out", tmp / "run", "--resume"]


def _fifo_instead_of(name: str):
    def damage(run: Path) -> None:
        (run / name).unlink()
        os.mkfifo(run / name)
    return damage


def _heads_from(layout: str):
    """``auralens record --heads-from`` a garbage heads.parquet (as a file, or in a run folder)."""
    def build(tmp: Path) -> list:
        target = tmp / "heads.parquet" if layout == "file" else tmp / "other" / "heads.parquet"
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(b"not parquet " * 20)
        return ["record", "--data", _dataset(tmp), "--n", "2", "--out", tmp / "run",
                "--heads-from", target if layout == "file" else target.parent]
    return build


def _arch_table(text: str):
    def build(tmp: Path) -> list:
        (tmp / "table.json").write_text(text)
        return ["--arch-table", tmp / "table.json", "models"]
    return build


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory) -> Path:
    return write_synthetic_run(tmp_path_factory.mktemp("syn") / "run", n_items=3, long_item_tokens=40,
                               stages=("eval", "record"))


def _report(damage):
    """``auralens report`` on a copy of the synthetic run folder damaged by ``damage(folder)``."""
    def build(tmp: Path) -> list:
        run = tmp / "copy"
        shutil.copytree(_SYNTHETIC[0], run)
        damage(run)
        return ["report", run, "--out", tmp / "report.html"]
    return build


_SYNTHETIC: list[Path] = []


def _truncate(name: str, keep: float = 0.5):
    def damage(run: Path) -> None:
        p = run / name
        p.write_bytes(p.read_bytes()[: int(p.stat().st_size * keep)])
    return damage


def _garbage(name: str):
    def damage(run: Path) -> None:
        (run / name).write_bytes(b"this is not what it should be " * 40)
    return damage


def _manifest_field(stage: str, key: str, value):
    def damage(run: Path) -> None:
        p = run / stage / "manifest.json"
        m = json.loads(p.read_text())
        m[key] = value
        p.write_text(json.dumps(m))
    return damage


def _foreign_table(name: str):
    def damage(run: Path) -> None:
        pd.DataFrame({"x": [1, 2]}).to_parquet(run / name)
    return damage


def _first_wav(run: Path) -> str:
    return str(sorted((run / "record" / "audio").glob("*.wav"))[0].relative_to(run))


def _garbage_wav(run: Path) -> None:
    _garbage(_first_wav(run))(run)


def _truncated_wav(run: Path) -> None:
    _truncate(_first_wav(run), 0.3)(run)


CASES = [
    # --- audio paths that are not regular files: refused by type, before any read
    ("symlink-loop", _eval_on(_audio_to(_symlink_loop)), ["loop.wav", "too many levels of symbolic links"]),
    ("nul-byte", _eval_on(_set("audio", "a\x00.wav")), ["a\\x00.wav", "without NUL bytes"]),
    ("fifo", _eval_on(_audio_to(_fifo)), ["pipe.wav", "FIFO"]),
    ("socket", _eval_on(_audio_to(_socket)), ["s.wav", "a socket"]),
    ("char-device", _eval_on(_set("audio", "/dev/null"), "--allow-outside-audio"), ["/dev/null", "a device"]),
    ("directory", _eval_on(_set("audio", ".")), ["a directory"]),
    ("questions-jsonl-fifo", _questions_fifo, ["questions.jsonl", "FIFO"]),
    ("dataset-json-fifo", _json_fifo, ["mmau.json", "FIFO"]),
    ("arch-table-fifo", _arch_table_fifo, ["table.json", "FIFO"]),
    ("resume-manifest-fifo", _resume_manifest_fifo, ["manifest.json", "FIFO"]),
    ("report-manifest-fifo", _report(_fifo_instead_of("record/manifest.json")), ["record/manifest.json", "FIFO"]),
    ("report-items-fifo", _report(_fifo_instead_of("record/items.parquet")), ["record/items.parquet", "FIFO"]),
    ("missing-file", _eval_on(_set("audio", "nowhere.wav")), ["nowhere.wav", "nothing at that path"]),
    # --- broken audio files
    ("truncated-wav", _eval_on(_audio_to(_truncated)), ["a0.wav", "truncated", "16,000 bytes"]),
    ("not-audio", _eval_on(_audio_to(_not_audio)), ["junk.wav", "libsndfile cannot decode"]),
    ("nan-samples", _eval_on(_audio_to(_nan_samples)), ["nan.wav", "finite samples"]),
    # --- malformed rows
    ("duplicate-choices", _eval_on(lambda r, _f: r[0].update(choices=["dog", "dog"], answer="dog")),
     ["line 1", "'f0'", "at least 2 distinct choices", "['dog', 'dog']"]),
    ("empty-choice", _eval_on(lambda r, _f: r[0].update(choices=["", "tone"])),
     ["line 1", "'f0'", "non-empty string", "''"]),
    ("id-float", _eval_on(_set("id", 1.5)), ["line 1", "'id' to be a string or an integer", "1.5"]),
    ("id-bool", _eval_on(_set("id", True)), ["line 1", "'id' to be a string or an integer", "true"]),
    ("id-list", _eval_on(_set("id", [1, 2])), ["line 1", "'id' to be a string or an integer", "a list"]),
    ("id-object", _eval_on(_set("id", {"a": 1})), ["line 1", "'id' to be a string or an integer", "an object"]),
    ("question-1MB", _eval_on(_set("question", "x" * 1_000_000)), ["line 1", "at most 10,000 characters", "1,000,000"]),
    ("question-number", _eval_on(_set("question", 7)), ["line 1", "'question' to be a string", "7"]),
    ("category-two-element-list", _eval_on(_set("category", ["a", "b"])), ["line 1", "'category' to be a string", "a list"]),
    ("category-int", _eval_on(_set("category", 3)), ["line 1", "'category' to be a string", "(3)"]),
    ("mmau-category-list", _mmau(lambda r, _t: r[0].update(category=["Sound", "Music"])),
     ["mmau.json row 0", "'category' to be a string"]),
    ("mmau-category-int", _mmau(lambda r, _t: r[1].update(category=12)), ["mmau.json row 1", "'category'", "(12)"]),
    ("answer-not-a-choice", _eval_on(_set("answer", "bark")), ["line 1", "one of the choices", "'bark'"]),
    # --- absurd option values
    ("n-absurd", _cafe("--n", "99999999999999999999999"), ["n:", "at most 1,000,000", "99999999999999999999999"]),
    ("n-absurd-file", _eval_on(None, "--n", "5000000"), ["n:", "at most 1,000,000", "5000000"]),
    ("seed-negative", _cafe("--seed", "-1"), ["seed:", "0 to 4294967295", "-1"]),
    ("seed-30-digits", _cafe("--seed", "1" * 30), ["seed:", "0 to 4294967295", "1" * 30]),
    ("seed-negative-file", _eval_on(None, "--seed", "-1"), ["seed:", "0 to 4294967295", "found -1"]),
    ("device-map-missing-gpu", _cafe("--device-map", '{"model.layers.0": 99}'),
     ["device_map:", "exist on this machine", "'model.layers.0': 99"]),
    ("device-map-missing-cuda", _cafe("--device-map", '{"lm_head": "cuda:99"}'), ["device_map:", "'cuda:99'"]),
    ("resume-without-manifest", _resume_without_manifest, ["--resume", "manifest.json", "found a folder without one"]),
    ("micro-train-seed-negative", lambda tmp: ["micro", "train", "--out", tmp / "mt", "--steps", "1", "--seed", "-1"],
     ["auralens micro train", "'--seed'", "greater than or equal to 0"]),
    ("spoken-seed-30-digits", lambda tmp: ["data", "spoken", "--out", tmp / "sp", "--n", "2", "--seed", "1" * 30],
     ["auralens data spoken", "'--seed'", "less than or equal to 4294967295"]),
    ("spoken-n-absurd", lambda tmp: ["data", "spoken", "--out", tmp / "sp", "--n", "99999999999999999999999"],
     ["spoken items", "n >= 1 (at most 1,000,000)", "99999999999999999999999"]),
    ("heads-from-garbage-file", _heads_from("file"), ["heads_from", "heads.parquet", "does not read"]),
    ("heads-from-garbage-folder", _heads_from("folder"), ["heads_from", "other/heads.parquet", "does not read"]),
    # --- usage errors: one line too
    ("n-not-a-number", _cafe("--n", "x"), ["auralens eval", "'--n'", "valid integer"]),
    ("seed-not-a-number", _cafe("--seed", "x"), ["auralens eval", "'--seed'"]),
    ("unknown-flag", _cafe("--no-such-flag"), ["auralens eval", "--no-such-flag"]),
    ("unknown-model", _cafe("--model", "no-such-model"), ["no-such-model"]),
    # --- architecture tables
    ("arch-table-empty-list", _arch_table("[]"), ["table.json", "empty list"]),
    ("arch-table-not-json", _arch_table("{"), ["table.json", "JSON"]),
    ("arch-table-deep", _arch_table("[" * 100_000 + "]" * 100_000), ["table.json", "nesting too deep"]),
    ("arch-table-number", _arch_table("3"), ["table.json"]),
    # --- damaged run folders read by `auralens report` (through auralens.dashboards.data)
    ("report-truncated-items", _report(_truncate("record/items.parquet")), ["items.parquet", "parquet table"]),
    ("report-garbage-items", _report(_garbage("record/items.parquet")), ["items.parquet", "parquet table"]),
    ("report-garbage-eval-items", _report(_garbage("eval/items.parquet")), ["eval/items.parquet", "parquet table"]),
    ("report-foreign-heads", _report(_foreign_table("record/heads.parquet")),
     ["record/heads.parquet", "expected the columns of record/heads.parquet", "['x']"]),
    ("report-foreign-accuracy", _report(_foreign_table("eval/accuracy.parquet")),
     ["eval/accuracy.parquet", "not a table the eval stage wrote"]),
    ("report-status-number", _report(_manifest_field("record", "status", 123)),
     ["record/manifest.json", "'status' to be a string", "123"]),
    ("report-stages-list", _report(_manifest_field("eval", "stages", ["eval"])), ["eval/manifest.json", "'stages'"]),
    ("report-garbage-wav", _report(_garbage_wav), ["record/audio/", ".wav", "libsndfile cannot decode"]),
    ("report-truncated-wav", _report(_truncated_wav), ["record/audio/", "truncated"]),
    ("report-manifest-not-json", _report(_garbage("record/manifest.json")), ["record/manifest.json", "does not parse"]),
]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


class _Timeout(Exception):
    pass


def _alarm(_signum, _frame):
    raise _Timeout(f"a fuzz case ran past {CASE_TIMEOUT_S} s")


@pytest.mark.parametrize("case_id, build, needles", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_named_line(case_id, build, needles, tmp_path, monkeypatch, capsys, synthetic_run):
    _SYNTHETIC[:] = [synthetic_run]
    monkeypatch.chdir(tmp_path)  # anything written by default (runs/...) would land here
    argv = [str(a) for a in build(tmp_path)]
    before = _tree(tmp_path)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_TIMEOUT_S)
    try:
        with pytest.raises(SystemExit) as exc:
            main(argv)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        for s in _SOCKETS:
            s.close()
        _SOCKETS.clear()
    out, err = capsys.readouterr()
    assert exc.value.code == 2, (case_id, exc.value.code, err)
    assert "Traceback" not in out + err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), (case_id, err)
    for needle in needles:
        assert needle in lines[0], (case_id, needle, lines[0])
    assert _tree(tmp_path) == before, (case_id, sorted(_tree(tmp_path) - before))


def test_fifo_audio_does_not_hang_the_cli(tmp_path):
    """End to end, in a process of its own: a FIFO as an item's audio is refused by type (nothing
    opens it, so nothing blocks waiting for a writer), one line, exit 2, well inside the timeout."""
    data = _dataset(tmp_path, _audio_to(_fifo))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "auralens.cli", *EVAL, "--data", str(data), "--n", "2", "--out", str(out)],
                         capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "pipe.wav" in lines[0] and "a FIFO" in lines[0], res.stderr
    assert "Traceback" not in res.stderr and not out.exists()


def test_the_synthetic_run_itself_reports(synthetic_run, tmp_path):
    """The report cases above fail because of their damage: the undamaged copy reports."""
    run = tmp_path / "copy"
    shutil.copytree(synthetic_run, run)
    main(["report", str(run), "--out", str(tmp_path / "report.html")])
    assert (tmp_path / "report.html").stat().st_size > 1000
    assert pd.read_parquet(run / "record" / "items.parquet")["audio_path"].str.startswith("audio/").all()
