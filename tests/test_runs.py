"""Run folders: atomic writes, manifests, resume, refusal to clobber."""

import json
import os

import pandas as pd
import pytest

from interp.errors import RunFolderError
from interp.runs import RowLog, RunFolder, atomic_write_text


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
