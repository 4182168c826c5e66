"""Containment (issue 25 item 7): a dataset's audio resolves inside its own folder (symlinks
resolved) unless ``--allow-outside-audio``; run folders store audio paths relative to the dataset
root their manifest records; the dashboard's :func:`audio_file` serves audio only from inside the
run folder or that root, and :func:`audio_refusal` says why it does not."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import typer

from auralens.cli import app, main
from auralens.dashboards.data import audio_file, audio_refusal
from auralens.interp.datasets import load_dataset, outside_audio_allowed
from auralens.interp.errors import DatasetError

QUESTION = {"question": "which sound is first ?", "choices": ["tone", "chirp"], "answer": "tone"}
FAST = ["--formats", "direct", "--no-silence", "--max-new-tokens", "2", "--batch-size", "2"]


def _wav(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(8000) / 16000
    sf.write(path, (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000, subtype="PCM_16")
    return path


def _folder(tmp: Path, audio_of_row0: str | None = None, n: int = 2) -> Path:
    ds = tmp / "data" / "ds"
    rows = [{"id": f"f{i}", "audio": f"a{i}.wav", **QUESTION} for i in range(n)]
    for i in range(n):
        _wav(ds / f"a{i}.wav")
    if audio_of_row0 is not None:
        rows[0]["audio"] = audio_of_row0
    (ds / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ds


@pytest.fixture
def outside(tmp_path) -> Path:
    return _wav(tmp_path / "outside" / "x.wav")


def _dotdot(tmp, outside):
    return _folder(tmp, "../../outside/x.wav")


def _absolute(tmp, outside):
    return _folder(tmp, str(outside))


def _symlinked_file(tmp, outside):
    ds = _folder(tmp, "link.wav")
    os.symlink(outside, ds / "link.wav")
    return ds


def _symlinked_folder(tmp, outside):
    ds = _folder(tmp, "sub/x.wav")
    os.symlink(outside.parent, ds / "sub")
    return ds


def _mmau_absolute(tmp, outside):
    _wav(tmp / "data" / "test-mini-audios" / "m1.wav")
    rows = [{"id": "m0", "audio_id": str(outside), **QUESTION},
            {"id": "m1", "audio_id": "./test-mini-audios/m1.wav", **QUESTION}]
    p = tmp / "data" / "mmau.json"
    p.write_text(json.dumps(rows))
    return p


LAYOUTS = {"dotdot": (_dotdot, "line 1", "../../outside/x.wav"), "absolute": (_absolute, "line 1", "x.wav"),
           "symlinked-file": (_symlinked_file, "line 1", "link.wav"),
           "symlinked-folder": (_symlinked_folder, "line 1", "sub/x.wav"),
           "mmau-absolute-audio-id": (_mmau_absolute, "mmau.json row 0", "x.wav")}


def _run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    return exc.value.code, capsys.readouterr()


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_outside_audio_is_refused_without_the_flag(layout, tmp_path, outside, capsys, monkeypatch):
    make, where, shown = LAYOUTS[layout]
    data = make(tmp_path, outside)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    code, (_, err) = _run_cli(["eval", "--data", data, "--n", "2", "--out", out, *FAST], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    line = lines[0]
    for needle in (where, shown, "expected audio inside the dataset folder", str(outside), "--allow-outside-audio"):
        assert needle in line, (needle, line)
    assert not out.exists() and not (tmp_path / "runs").exists()
    with pytest.raises(DatasetError, match="outside it"):  # the Python API refuses it too
        load_dataset(str(data))
    # ... and accepts it when asked, by argument or for a block
    assert str(outside) in {it.audio for it in load_dataset(str(data), allow_outside_audio=True)}
    with outside_audio_allowed():
        assert str(outside) in {it.audio for it in load_dataset(str(data))}
    with pytest.raises(DatasetError):
        load_dataset(str(data))  # the block is over


def test_the_flag_lets_the_run_read_it_and_audio_inside_loads_as_before(tmp_path, outside, capsys):
    data = _dotdot(tmp_path, outside)
    out = tmp_path / "run"
    main([str(a) for a in ["eval", "--data", data, "--n", "2", "--out", out, *FAST, "--allow-outside-audio",
                           "--json"]])
    assert json.loads(capsys.readouterr().out)["n"] == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset_root"] == str(data.resolve()) and manifest["status"] == "complete"
    # a symlink that stays inside the folder is inside
    inner = _folder(tmp_path / "inner", "alias.wav")
    os.symlink(inner / "a1.wav", inner / "alias.wav")
    assert {Path(it.audio).name for it in load_dataset(str(inner))} == {"a1.wav"}


def test_every_stage_command_has_the_flag():
    root = typer.main.get_command(app)
    stages = {"eval": root.commands["eval"], "record": root.commands["record"], "ablate": root.commands["ablate"],
              "patch": root.commands["patch"], "probe": root.commands["probe"], "compare": root.commands["compare"],
              "steer fit": root.commands["steer"].commands["fit"], "steer eval": root.commands["steer"].commands["eval"]}
    missing = [name for name, cmd in stages.items()
               if not any("--allow-outside-audio" in p.opts for p in cmd.params)]
    assert not missing, missing


@pytest.fixture(scope="module")
def lm():
    from auralens.interp.loading import load_model

    return load_model("micro", device="cpu")


def test_record_stores_paths_relative_to_the_recorded_dataset_root(tmp_path, outside, lm):
    from auralens.interp.record import stage_record

    data = _folder(tmp_path, n=2)
    out = tmp_path / "rec"
    stage_record(model="micro", data=str(data), n=2, fmt="direct", out=out, lm=lm, batch_size=2, max_new_tokens=4,
                 top_k=2, n_boot=20, time_bins=2, calibration="none", quiet=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset_root"] == str(data.resolve())
    items = pd.read_parquet(out / "items.parquet")
    assert sorted(items["audio_path"]) == ["a0.wav", "a1.wav"]  # relative to the dataset root, not absolute
    assert audio_file(out, "a0.wav") == (data / "a0.wav").resolve() and audio_refusal(out, "a0.wav") is None
    # with the flag, a file outside the root keeps its absolute path; the dashboard will not serve it
    data2 = _absolute(tmp_path / "second", outside)
    out2 = tmp_path / "rec2"
    with outside_audio_allowed():
        stage_record(model="micro", data=str(data2), n=2, fmt="direct", out=out2, lm=lm, batch_size=2,
                     max_new_tokens=4, top_k=2, n_boot=20, time_bins=2, calibration="none", quiet=True)
    paths = dict(pd.read_parquet(out2 / "items.parquet")[["item_id", "audio_path"]].values)
    assert paths == {"f0": str(outside), "f1": "a1.wav"}
    assert audio_file(out2, paths["f0"]) is None and "outside" in audio_refusal(out2, paths["f0"])
    assert audio_file(out2, "a1.wav") == (data2 / "a1.wav").resolve()


def _run_folder(tmp: Path, dataset_root: Path | None) -> Path:
    run = tmp / "run"
    (run / "audio").mkdir(parents=True)
    m = {"command": "auralens record", "status": "complete"}
    if dataset_root is not None:
        m["dataset_root"] = str(dataset_root)
    (run / "manifest.json").write_text(json.dumps(m))
    return run


def test_audio_file_serves_only_the_run_folder_and_the_dataset_root(tmp_path, outside):
    root = _folder(tmp_path, n=1)
    run = _run_folder(tmp_path, root.resolve())
    own = _wav(run / "audio" / "00000.wav")
    assert audio_file(run, "audio/00000.wav") == own.resolve()  # the run's own clip
    assert audio_file(run, "a0.wav") == (root / "a0.wav").resolve()  # relative to the dataset root
    assert audio_file(run, str(root / "a0.wav")) == (root / "a0.wav").resolve()  # an old run's absolute path, inside
    refused = {
        "absolute outside": str(outside),
        "system file": "/etc/passwd",
        "escaping the run folder": "../outside/x.wav",
        "escaping the dataset root": "../../outside/x.wav",
    }
    os.symlink(outside, run / "audio" / "link.wav")
    refused["symlink in the run folder"] = "audio/link.wav"
    for what, path in refused.items():
        assert audio_file(run, path) is None, what
        reason = audio_refusal(run, path)
        assert reason and reason.endswith(".") and "\n" not in reason, (what, reason)
        if Path(path).is_absolute() or what.startswith("symlink"):
            assert "outside" in reason and str(run) in reason and str(root.resolve()) in reason, (what, reason)
    assert "not found" in audio_refusal(run, "audio/missing.wav")
    assert audio_refusal(run, None) == "No audio file is recorded for this item." and audio_file(run, "") is None


def test_a_run_without_a_dataset_root_serves_its_own_folder_only(tmp_path, outside):
    run = _run_folder(tmp_path, None)
    own = _wav(run / "audio" / "00000.wav")
    assert audio_file(run, "audio/00000.wav") == own.resolve()
    assert audio_file(run, str(outside)) is None
    reason = audio_refusal(run, str(outside))
    assert "outside the run folder" in reason and "dataset folder" not in reason


def test_an_old_run_with_absolute_paths_still_loads(tmp_path, outside):
    """A run folder written before manifests recorded ``dataset_root``: absolute paths in
    items.parquet, the dataset named by ``data`` only.  Its audio inside that dataset plays;
    anything else is refused."""
    root = _folder(tmp_path, n=1)
    run = tmp_path / "old"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"command": "auralens record", "status": "complete",
                                                   "data": str(root)}))
    inside = str((root / "a0.wav").resolve())
    assert audio_file(run, inside) == Path(inside) and audio_refusal(run, inside) is None
    assert audio_file(run, str(outside)) is None and str(root.resolve()) in audio_refusal(run, str(outside))
    (run / "manifest.json").write_text(json.dumps({"command": "auralens record", "data": "cafe"}))
    assert audio_file(run, inside) is None  # a cafe run has no dataset root: its own folder only
