"""Run folders: atomic writes, manifests, resume, refusal to clobber."""

import json
import os
import time

import pandas as pd
import pytest

from auralens.interp.errors import RunFolderError
from auralens.interp.runs import RowLog, RunFolder, atomic_write_text


def test_manifest_is_self_describing(tmp_path):
    run = RunFolder.create(tmp_path / "r", manifest={"command": "auralens eval", "model": "micro", "data": "cafe", "seed": 1})
    m = run.manifest
    for key in ("auralens_version", "packages", "argv", "created_at", "model", "data", "seed", "status"):
        assert key in m
    assert m["packages"]["torch"]


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "x.json"
    atomic_write_text(p, "old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(p, "new")
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["x.json"]  # no temp file left behind


def test_resume_continues_and_refuses_mismatch(tmp_path):
    man = {"command": "auralens eval", "model": "micro", "data": "cafe", "seed": 1}
    run = RunFolder.create(tmp_path / "r", manifest=man)
    log = RowLog(run, "items.parquet", key="row_id")
    log.extend([{"row_id": "a", "correct": True}])
    # a second fresh run into the same folder is refused (nothing is clobbered)
    with pytest.raises(RunFolderError, match="--resume"):
        RunFolder.create(tmp_path / "r", manifest=man)
    with pytest.raises(RunFolderError, match="seed differs"):
        RunFolder.create(tmp_path / "r", manifest={**man, "seed": 2}, resume=True)
    run2 = RunFolder.create(tmp_path / "r", manifest=man, resume=True)
    log2 = RowLog(run2, "items.parquet", key="row_id", resume=True)
    assert log2.done() == {"a"}
    log2.extend([{"row_id": "b", "correct": False}])
    df = pd.read_parquet(tmp_path / "r" / "items.parquet")
    assert list(df["row_id"]) == ["a", "b"]
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["resumed_at"]


# --- a run folder never mixes two runs --------------------------------------------------------

MAN = {"command": "auralens eval", "model": "micro", "data": "cafe", "seed": 1, "n": 4,
       "config": {"formats": ["direct"]}, "data_fingerprint": "abc", "items": {"count": 4, "ids_sha256": "h"}}


def _with_rows(path, manifest=MAN):
    run = RunFolder.create(path, manifest=manifest)
    RowLog(run, "items.parquet", key="row_id").extend([{"row_id": "a", "correct": True}])
    run.finish()
    return run


@pytest.mark.parametrize("key, value", [("n", 5), ("data_fingerprint", "xyz"),
                                        ("items", {"count": 4, "ids_sha256": "other"}),
                                        ("config", {"formats": ["cot"]}), ("model", "other"), ("seed", 2)])
def test_resume_refuses_any_identity_change_and_leaves_the_manifest_alone(tmp_path, key, value):
    _with_rows(tmp_path / "r")
    before = (tmp_path / "r" / "manifest.json").read_bytes()
    with pytest.raises(RunFolderError, match=f"{key} differs"):
        RunFolder.create(tmp_path / "r", manifest={**MAN, key: value}, resume=True)
    assert (tmp_path / "r" / "manifest.json").read_bytes() == before
    # a key the new command lacks is a difference too (not silently accepted)
    with pytest.raises(RunFolderError, match="items differs"):
        RunFolder.create(tmp_path / "r", manifest={k: v for k, v in MAN.items() if k != "items"}, resume=True)
    assert (tmp_path / "r" / "manifest.json").read_bytes() == before


def test_resumed_run_is_running_until_finished(tmp_path):
    _with_rows(tmp_path / "r")
    assert RunFolder.open(tmp_path / "r").manifest["status"] == "complete"
    run = RunFolder.create(tmp_path / "r", manifest=dict(MAN), resume=True)
    m = run.manifest
    assert m["status"] == "running" and "finished_at" not in m and m["resumed_at"]
    run.finish()
    assert run.manifest["status"] == "complete"


def test_plain_rerun_reuses_a_folder_without_rows(tmp_path):
    RunFolder.create(tmp_path / "r", manifest=MAN)  # failed before its first row: status running
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["status"] == "running"
    run = RunFolder.create(tmp_path / "r", manifest={**MAN, "n": 9})  # another run may take the folder
    assert run.manifest["n"] == 9
    RowLog(run, "items.parquet", key="row_id").extend([{"row_id": "a"}])
    with pytest.raises(RunFolderError, match="--resume"):
        RunFolder.create(tmp_path / "r", manifest=MAN)


def test_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunFolderError, match="found an existing file"):
        RunFolder.create(tmp_path / "f", manifest=MAN)
    with pytest.raises(RunFolderError, match="is a file"):
        RunFolder.create(tmp_path / "f" / "sub", manifest=MAN)
    assert (tmp_path / "f").read_text() == "x"


def test_orphan_tmp_files_are_removed(tmp_path):
    _with_rows(tmp_path / "r")
    orphans = [tmp_path / "r" / ".items.parquet.k2j4h5_x.tmp", tmp_path / "r" / "yields" / ".00001.safetensors.abcdefgh.tmp"]
    for p in orphans:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"half")
    keep = tmp_path / "r" / "notes.tmp"  # not an atomic-write name: left alone
    keep.write_text("mine")
    RunFolder.open(tmp_path / "r")  # a finished run: every orphan goes
    assert not any(p.exists() for p in orphans) and keep.exists()
    # a run in progress: only old temporary files are orphans; create/resume removes them all
    run = RunFolder.create(tmp_path / "r", manifest=dict(MAN), resume=True)
    fresh = tmp_path / "r" / ".decay.parquet.abcdefgh.tmp"
    fresh.write_bytes(b"live")
    RunFolder.open(run.path)
    assert fresh.exists()
    old = time.time() - 3600
    os.utime(fresh, (old, old))
    RunFolder.open(run.path)
    assert not fresh.exists()
    fresh.write_bytes(b"killed")
    RunFolder.create(run.path, manifest=dict(MAN), resume=True)
    assert not fresh.exists()


def test_corrupt_files_are_named_errors(tmp_path):
    run = _with_rows(tmp_path / "r")
    import torch

    run.write_tensors("yields/00000.safetensors", {"yield": torch.zeros(3, 2)})
    before = (tmp_path / "r" / "manifest.json").read_bytes()
    # a truncated safetensors file: refused before the resumption writes anything
    t = tmp_path / "r" / "yields" / "00000.safetensors"
    t.write_bytes(t.read_bytes()[:-5])
    with pytest.raises(RunFolderError, match=r"yields/00000\.safetensors.*safetensors file"):
        RunFolder.create(run.path, manifest=dict(MAN), resume=True)
    with pytest.raises(RunFolderError, match=r"00000\.safetensors"):
        run.read_tensors("yields/00000.safetensors")
    t.unlink()
    # a truncated parquet table
    p = tmp_path / "r" / "items.parquet"
    p.write_bytes(p.read_bytes()[:20])
    with pytest.raises(RunFolderError, match=r"items\.parquet to be a parquet table"):
        RunFolder.create(run.path, manifest=dict(MAN), resume=True)
    assert (tmp_path / "r" / "manifest.json").read_bytes() == before
    with pytest.raises(RunFolderError, match=r"items\.parquet"):
        run.read_table("items.parquet")
    with pytest.raises(RunFolderError, match=r"items\.parquet"):
        RowLog(run, "items.parquet", key="row_id", resume=True)
    # a truncated manifest
    (tmp_path / "r" / "manifest.json").write_text('{"command": "auralens ev')
    for call in (lambda: run.manifest, lambda: RunFolder.open(run.path),
                 lambda: RunFolder.create(run.path, manifest=dict(MAN), resume=True)):
        with pytest.raises(RunFolderError, match=r"manifest\.json.*JSON"):
            call()


def test_strict_json_has_null_for_non_finite():
    import numpy as np

    from auralens.interp.runs import dumps_strict

    text = dumps_strict({"a": float("nan"), "b": [np.float32("inf"), -float("inf"), 1.5], "c": np.int64(3),
                         "d": np.array([np.nan, 2.0]), "e": (True, None)})
    obj = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert obj == {"a": None, "b": [None, None, 1.5], "c": 3, "d": [None, 2.0], "e": [True, None]}


def test_json_files_in_a_run_folder_are_strict(tmp_path):
    import json as _json

    from auralens.interp.runs import RunFolder

    run = RunFolder(tmp_path)
    run.write_json("summary.json", {"gain": float("nan"), "ok": [1.0, float("inf")], "path": tmp_path})
    text = (tmp_path / "summary.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert _json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c))) == {
        "gain": None, "ok": [1.0, None], "path": str(tmp_path)}


def test_load_items_takes_a_spec_as_text_or_dataspec(folder_dataset):
    from auralens.interp.dataspec import DataSpec
    from auralens.interp.errors import DatasetError
    from auralens.interp.runs import load_items

    spec = DataSpec.parse("cafe-neutral:test", seed=7)
    by_text = load_items("cafe-neutral:test", n=3, seed=7)
    by_spec = load_items(spec, n=3, seed=7)
    assert [it.item_id for it in by_spec] == [it.item_id for it in by_text] and len(by_text) == 3
    folder = folder_dataset(1)
    # one item: one of the three splits holds it, the other two are empty and refused alike
    refused = []
    for text in (f"{folder}:{split}" for split in ("calibration", "dev", "test")):
        try:
            load_items(text, n=None, seed=7, allow_all=True)
        except DatasetError as text_err:
            with pytest.raises(DatasetError) as spec_err:
                load_items(DataSpec.parse(text, seed=7), n=None, seed=7, allow_all=True)
            assert str(spec_err.value) == str(text_err) and "found none" in str(text_err)
            refused.append(text)
    assert len(refused) == 2


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_run_files_follow_the_umask_like_a_plain_open(tmp_path, umask, mode):
    """The atomic writer's temporary file (mkstemp: always 0o600) gets the mode open() would give."""
    import torch

    old = os.umask(umask)
    try:
        run = RunFolder.create(tmp_path / "r", manifest={"command": "test"})
        run.write_json("a.json", {"x": 1})
        run.write_table("t.parquet", pd.DataFrame({"x": [1, 2]}))
        run.write_tensors("w.safetensors", {"w": torch.zeros(2)})
        atomic_write_text(tmp_path / "r" / "b.txt", "b")
        run.finish()
    finally:
        os.umask(old)
    files = sorted(p for p in (tmp_path / "r").rglob("*") if p.is_file())
    assert {p.name for p in files} >= {"manifest.json", "a.json", "t.parquet", "w.safetensors", "b.txt"}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(mode) for p in files}
