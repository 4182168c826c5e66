"""Run folders: self-describing, atomically written, resumable.

A run folder holds ``manifest.json`` (model, data, seed, command line, package versions, git
revision), tables as parquet, per-item arrays as safetensors and figures as plotly HTML.  Every
file is written to a temporary name and moved into place, so a crash never leaves a half file;
``--resume`` reads the rows already written and skips those items.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from interp.errors import RunFolderError

_PACKAGES = ("auralens", "torch", "transformers", "nnsight", "transformer-lens", "scikit-learn", "numpy", "pandas")
# manifest keys that must agree between a run and its resumption
_IDENTITY_KEYS = ("command", "model", "data", "seed", "config")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _atomic_via(path: Path, writer) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def git_revision() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
        return rev.stdout.strip() or None
    except Exception:
        return None


class RunFolder:
    """One run's folder.  Create with :meth:`create` (fresh or ``resume=True``) or :meth:`open`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # --- lifecycle ----------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, *, manifest: dict[str, Any], resume: bool = False) -> RunFolder:
        run = cls(path)
        mpath = run.path / "manifest.json"
        if mpath.exists():
            if not resume:
                old = json.loads(mpath.read_text())
                if old.get("status") == "running" or any(run.path.glob("*.parquet")):
                    raise RunFolderError(
                        f"run folder {str(run.path)!r}: expected an empty folder, found an earlier run "
                        f"({old.get('command')}); pass --resume to continue it or choose another --out"
                    )
            else:
                old = json.loads(mpath.read_text())
                for k in _IDENTITY_KEYS:
                    if k in manifest and old.get(k) != manifest[k]:
                        raise RunFolderError(
                            f"run folder {str(run.path)!r}: cannot resume, {k} differs: the folder has "
                            f"{old.get(k)!r}, this command has {manifest[k]!r}"
                        )
                manifest = {**old, **manifest, "resumed_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        full = {
            "auralens_version": _version(),
            "argv": sys.argv,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "packages": package_versions(),
            "git_revision": git_revision(),
            "status": "running",
            "stages": {},
            **manifest,
        }
        run.write_json("manifest.json", full)
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        run = cls(path)
        if not (run.path / "manifest.json").exists():
            raise RunFolderError(f"run folder {str(run.path)!r}: expected a manifest.json, found none")
        return run

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / "manifest.json").read_text())

    def update_manifest(self, **changes: Any) -> None:
        m = self.manifest
        m.update(changes)
        self.write_json("manifest.json", m)

    def mark_stage(self, stage: str, **info: Any) -> None:
        m = self.manifest
        m.setdefault("stages", {})[stage] = {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
        self.write_json("manifest.json", m)

    def finish(self) -> None:
        self.update_manifest(status="complete", finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"))

    # --- files ---------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, obj: Any) -> Path:
        p = self.file(name)
        atomic_write_text(p, json.dumps(obj, indent=2, default=str))
        return p

    def write_table(self, name: str, df) -> Path:
        p = self.file(name)
        _atomic_via(p, lambda tmp: df.to_parquet(tmp, index=False))
        return p

    def read_table(self, name: str):
        import pandas as pd

        p = self.file(name)
        if not p.exists():
            raise RunFolderError(f"run folder {str(self.path)!r}: expected {name}, found none (stage not run?)")
        return pd.read_parquet(p)

    def has(self, name: str) -> bool:
        return self.file(name).exists()

    def write_tensors(self, name: str, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
        from safetensors.torch import save_file

        p = self.file(name)
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        _atomic_via(p, lambda tmp: save_file(tensors, tmp, metadata=metadata))
        return p

    def read_tensors(self, name: str) -> dict:
        from safetensors.torch import load_file

        p = self.file(name)
        if not p.exists():
            raise RunFolderError(f"run folder {str(self.path)!r}: expected {name}, found none")
        return load_file(p)

    def write_figure(self, name: str, fig) -> Path:
        p = self.file(name)
        html = fig.to_html(include_plotlyjs=True, full_html=True)
        atomic_write_text(p, html)
        return p


class RowLog:
    """Rows of one table, rewritten atomically after each batch; reloaded on resume."""

    def __init__(self, run: RunFolder, name: str, *, key: str = "item_id", resume: bool = False):
        import pandas as pd

        self.run, self.name, self.key = run, name, key
        self.rows: list[dict] = []
        if resume and run.has(name):
            self.rows = pd.read_parquet(run.file(name)).to_dict("records")

    def done(self) -> set:
        return {r[self.key] for r in self.rows}

    def extend(self, rows: Iterable[dict]) -> None:
        self.rows.extend(rows)
        self.flush()

    def flush(self) -> None:
        import pandas as pd

        self.run.write_table(self.name, pd.DataFrame(self.rows))

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows)


def _version() -> str:
    from interp import __version__

    return __version__
