"""Run folders: self-describing, atomically written, resumable — and never mixing two runs.

A run folder holds ``manifest.json`` (model, data, seed, command line, package versions, git
revision), tables as parquet, per-item arrays as safetensors and figures as plotly HTML.  Every
file is written to a temporary name and moved into place, so a crash never leaves a half file;
``--resume`` reads the rows already written and skips those items.

Rules (what "a run folder never lies" means here):

- **Identity.**  Every stage records what defines its run (:data:`IDENTITY_KEYS`): the command,
  model, data spec, seed, ``n``, the stage's whole config, the data's content fingerprint and the
  item-id set (count + sha256 of the sorted ids, :func:`run_identity`).  ``--resume`` refuses any
  difference, before anything is written: a refused resume leaves ``manifest.json`` byte-identical.
  A resumed run is ``status: "running"`` until it completes again.
- **Reuse.**  Without ``--resume`` a folder is accepted when it holds no rows: nothing but
  ``manifest.json`` files (and orphaned temporary files).  So a run that failed before writing
  its first row — whatever its manifest status — can simply be rerun; a folder with rows needs
  ``--resume`` or another ``--out``.
- **Validate first.**  Stages follow :func:`open_run`'s order: validate options, load the items
  and check every audio header (:func:`load_items`), check the folder would accept the run
  (:meth:`RunFolder.check`, read-only), check the model's config has an architecture table
  (:func:`check_model`) and load it, and only then create the folder.  A bad option, file or
  model leaves no folder.
- **Housekeeping.**  Orphaned ``.{name}.XXXXXXXX.tmp`` files of a killed atomic write are removed
  when the folder is next created/resumed (all of them) or opened (those of a finished run, or
  older than a minute while a run is in progress, so a live writer is left alone).
- **Unreadable files** (truncated parquet, safetensors or JSON) raise :class:`RunFolderError`
  naming the file, what was expected and what was found: when read, and — for every file of the
  folder — before a resumption writes anything (:func:`verify_files`).
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import safetensors.numpy
from tqdm.auto import tqdm

from auralens.interp import __version__, distributed as dist
from auralens.interp.arch import table_for_checkpoint
from auralens.interp.audio import file_kind
from auralens.interp.cafe.formats import FORMATS
from auralens.interp.datasets import check_audio_files, dataset_root, fingerprint, load_dataset
from auralens.interp.dataspec import MAX_ITEMS, DataSpec
from auralens.interp.errors import ArchitectureError, ConfigError, DatasetError, RunFolderError
from auralens.interp.loading import DTYPES, load_model, resolve_source
from auralens.interp.prompts import check_template_fits
from auralens.interp.smol import NAME as SMOL_AUDIO
from auralens.interp.smol.assemble import check_parts
from auralens.interp.stage_config import parse_device_map
from auralens.interp.templates import check_template

_PACKAGES = ("auralens", "torch", "transformers", "nnsight", "transformer-lens", "scikit-learn", "numpy", "pandas")
#: manifest keys that define a run: a resumption must agree on every one of them
IDENTITY_KEYS = ("command", "model", "data", "seed", "n", "config", "data_fingerprint", "items")
# tempfile.mkstemp(prefix=".{name}.", suffix=".tmp"): 8 random characters in between
_TMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{6,}\.tmp$")
# while a run is in progress, only temporary files older than this are orphans (a live writer's
# file is rewritten continuously and renamed within milliseconds of its last write)
_LIVE_TMP_AGE_S = 60.0


_UMASK_LOCK = threading.Lock()


def _file_mode() -> int:
    """The mode a plain ``open()`` would give a new file: 0o666 less the process umask.
    ``mkstemp`` creates its file 0o600 whatever the umask, so without this every file of a run
    folder would be unreadable to anyone else on a shared machine.  (The umask can only be read
    by setting it; the lock keeps two writers in this process from interleaving that.)"""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode())
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


def atomic_write_with(path: Path, writer) -> None:
    """``writer(tmp)`` writes a temporary file beside ``path``, which is then moved into place
    (with the mode a plain ``open()`` would give it); on any error the temporary file is removed
    and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, _file_mode())  # after the writer: some (safetensors) write a new file of their own
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def package_versions() -> dict[str, str]:

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


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _normalized(value: Any) -> Any:
    """``value`` as it reads back from manifest.json (tuples -> lists, paths -> str, ...)."""
    return json.loads(json.dumps(value, default=str))


def _unreadable(folder: Path, name: str, expected: str, exc: BaseException) -> RunFolderError:
    return RunFolderError(
        f"run folder {str(folder)!r}: expected {name} to be {expected}, found an unreadable file "
        f"({type(exc).__name__}: {exc}); it may be truncated by a killed run: delete it (and rerun that "
        f"stage) or start over in another --out"
    )


def _refuse_special(folder: Path, p: Path, expected: str) -> None:
    """A FIFO, socket or device where a run file should be is refused by type, unread (opening a
    FIFO would block until something writes to it)."""
    kind = file_kind(p)
    if kind in ("a FIFO (named pipe)", "a socket", "a device"):
        raise RunFolderError(f"run folder {str(folder)!r}: expected {p.name} to be {expected}, found {kind}")


def _read_manifest(folder: Path) -> dict[str, Any]:
    p = folder / "manifest.json"
    _refuse_special(folder, p, "a JSON manifest")
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise RunFolderError(f"run folder {str(folder)!r}: expected a manifest.json, found none") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _unreadable(folder, "manifest.json", "a JSON manifest", exc) from None
    if not isinstance(data, dict):
        raise RunFolderError(
            f"run folder {str(folder)!r}: expected manifest.json to hold a JSON object, found {type(data).__name__}"
        )
    return data


def _is_orphan_name(name: str) -> bool:
    return bool(_TMP_NAME.match(name))


def _data_files(folder: Path) -> list[Path]:
    """Files that hold rows: anything but manifests and orphaned temporary files."""
    if not folder.is_dir():
        return []
    return [p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json" and not _is_orphan_name(p.name)]


def remove_orphans(folder: str | Path, *, min_age_s: float = 0.0) -> list[Path]:
    """Delete the ``.{name}.XXXXXXXX.tmp`` files a killed atomic write left in ``folder`` (and its
    subfolders) that are at least ``min_age_s`` old; returns the removed paths."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for p in folder.rglob(".*.tmp"):
        if not _is_orphan_name(p.name) or not p.is_file():
            continue
        try:
            if now - p.stat().st_mtime >= min_age_s:
                p.unlink()
                removed.append(p)
        except FileNotFoundError:  # renamed into place meanwhile
            pass
    return removed


def _check_safetensors(p: Path) -> None:
    """Header parses and the file is as long as the header says (catches truncation)."""
    size = p.stat().st_size
    with open(p, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError(f"{size} bytes, shorter than the 8-byte header length")
        n = int.from_bytes(head, "little")
        if n <= 0 or 8 + n > size:
            raise ValueError(f"header length {n} does not fit in {size} bytes")
        header = json.loads(fh.read(n))
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise ValueError(f"the header describes {8 + n + end} bytes, the file has {size}")


def verify_files(folder: str | Path) -> None:
    """Cheap integrity check of the tables, tensors and JSON files in ``folder`` (parquet footers,
    safetensors headers against the file size, JSON parse): a truncated or corrupt file is a
    :class:`RunFolderError` naming it.  Run before a resumption writes anything."""
    folder = Path(folder)
    kinds = {".parquet": "a parquet table", ".safetensors": "a safetensors file", ".json": "a JSON file"}
    for p in sorted(folder.rglob("*")):
        kind = kinds.get(p.suffix)
        if kind is None or not p.is_file() or _is_orphan_name(p.name):
            continue
        try:
            if p.suffix == ".parquet":
                import pyarrow.parquet as pq

                pq.ParquetFile(p)
            elif p.suffix == ".safetensors":
                _check_safetensors(p)
            else:
                json.loads(p.read_text())
        except Exception as exc:  # noqa: BLE001 - any failure means the file cannot be used
            raise _unreadable(folder, str(p.relative_to(folder)), kind, exc) from None


def _skip_write() -> bool:
    """Under a multi-process launch, ranks other than 0 write only their own files (inside
    :func:`auralens.interp.distributed.rank_local`: per-item files, their row shard); the run's shared
    files (manifest, tables, figures) are rank 0's."""
    return not dist.writes_allowed()


class RunFolder:
    """One run's folder.  Create with :meth:`create` (fresh or ``resume=True``) or :meth:`open`.

    Under ``accelerate launch`` / ``torchrun`` (:mod:`auralens.interp.distributed`) the write methods
    and the manifest updates are no-ops on ranks other than 0, except inside the row loop."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # --- lifecycle ----------------------------------------------------------------------
    @classmethod
    def check(cls, path: str | Path, *, manifest: dict[str, Any], resume: bool = False) -> dict[str, Any] | None:
        """Raise :class:`RunFolderError` if :meth:`create` would refuse this run; write nothing.

        Returns the folder's current manifest (``None`` when it has none)."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RunFolderError(f"--out {str(path)!r}: expected a run folder (a directory), found an existing file")
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise RunFolderError(
                        f"--out {str(path)!r}: expected a folder path, found that {str(parent)!r} is a file"
                    )
                break
        if not (path / "manifest.json").exists():
            if resume and path.is_dir():
                found = sum(1 for _ in path.iterdir())
                raise RunFolderError(
                    f"run folder {str(path)!r}: --resume expected a run folder with a manifest.json, found a folder "
                    f"without one ({found} entr{'y' if found == 1 else 'ies'}); drop --resume to start a new run "
                    "or choose another --out")
            return None
        old = _read_manifest(path)
        if not resume:
            data = _data_files(path)
            if data:
                raise RunFolderError(
                    f"run folder {str(path)!r}: expected an empty folder, found an earlier run "
                    f"({old.get('command')}, status {old.get('status')!r}, {len(data)} file(s) such as "
                    f"{str(data[0].relative_to(path))!r}); pass --resume to continue it or choose another --out"
                )
            return old
        for k in IDENTITY_KEYS:
            mine, theirs = _normalized(manifest.get(k)), old.get(k)
            if mine != theirs:
                raise RunFolderError(
                    f"run folder {str(path)!r}: cannot resume, {k} differs: the folder has {theirs!r}, "
                    f"this command has {mine!r}; rerun with the folder's settings or choose another --out"
                )
        verify_files(path)
        return old

    @classmethod
    def create(cls, path: str | Path, *, manifest: dict[str, Any], resume: bool = False) -> RunFolder:
        """Start a run in ``path`` (see the module rules): refused, with nothing written, when the
        folder holds another run's rows (without ``resume``) or a run that differs in any
        :data:`IDENTITY_KEYS` (with ``resume``)."""
        old = cls.check(path, manifest=manifest, resume=resume)
        run = cls(path)
        run.path.mkdir(parents=True, exist_ok=True)
        remove_orphans(run.path)
        if resume and old is not None:
            full = {**old, **manifest, "status": "running", "resumed_at": _now()}
            full.pop("finished_at", None)
        else:
            full = {
                "auralens_version": _version(),
                "argv": sys.argv,
                "created_at": _now(),
                "packages": package_versions(),
                "git_revision": git_revision(),
                "stages": {},
                **manifest,
                "status": "running",
            }
        run.write_json("manifest.json", full)
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            raise RunFolderError(f"run folder {str(run.path)!r}: expected a directory, found a file")
        if not (run.path / "manifest.json").exists():
            raise RunFolderError(f"run folder {str(run.path)!r}: expected a manifest.json, found none")
        m = run.manifest  # readable, or a named error
        remove_orphans(run.path, min_age_s=_LIVE_TMP_AGE_S if m.get("status") == "running" else 0.0)
        return run

    @property
    def manifest(self) -> dict[str, Any]:
        return _read_manifest(self.path)

    def update_manifest(self, **changes: Any) -> None:
        if _skip_write():
            return
        m = self.manifest
        m.update(changes)
        self.write_json("manifest.json", m)

    def mark_stage(self, stage: str, **info: Any) -> None:
        if _skip_write():
            return
        m = self.manifest
        m.setdefault("stages", {})[stage] = {"finished_at": _now(), **info}
        self.write_json("manifest.json", m)

    def finish(self) -> None:
        self.update_manifest(status="complete", finished_at=_now())

    # --- files ---------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, obj: Any) -> Path:
        """Strict JSON (non-finite floats as null, see :func:`dumps_strict`), written atomically."""
        p = self.file(name)
        if not _skip_write():
            atomic_write_text(p, dumps_strict(obj))
        return p

    def write_table(self, name: str, df) -> Path:
        p = self.file(name)
        if not _skip_write():
            atomic_write_with(p, lambda tmp: df.to_parquet(tmp, index=False))
        return p

    def read_table(self, name: str):
        import pandas as pd

        p = self.file(name)
        if not p.exists():
            raise RunFolderError(f"run folder {str(self.path)!r}: expected {name}, found none (stage not run?)")
        _refuse_special(self.path, p, "a parquet table")
        try:
            return pd.read_parquet(p)
        except Exception as exc:  # pyarrow.ArrowInvalid, OSError...: a truncated or foreign file
            raise _unreadable(self.path, name, "a parquet table", exc) from None

    def has(self, name: str) -> bool:
        return self.file(name).exists()

    def write_tensors(self, name: str, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
        from safetensors.torch import save_file

        p = self.file(name)
        if _skip_write():
            return p
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        atomic_write_with(p, lambda tmp: save_file(tensors, tmp, metadata=metadata))
        return p

    def read_tensors(self, name: str, *, framework: str = "pt") -> dict:
        """The tensors of a safetensors file (``framework="np"``: numpy arrays)."""
        if framework == "np":
            load_file = safetensors.numpy.load_file
        else:
            from safetensors.torch import load_file

        p = self.file(name)
        if not p.exists():
            raise RunFolderError(f"run folder {str(self.path)!r}: expected {name}, found none")
        try:
            return load_file(p)
        except Exception as exc:  # SafetensorError, OSError...
            raise _unreadable(self.path, name, "a safetensors file", exc) from None

    def write_figure(self, name: str, fig) -> Path:
        p = self.file(name)
        if _skip_write():
            return p
        html = fig.to_html(include_plotlyjs=True, full_html=True)
        atomic_write_text(p, html)
        return p


#: where the ranks of a multi-process launch keep their rows (``<table stem>.rank<r>.parquet``)
SHARDS_DIR = "shards"


class RowLog:
    """Rows of one table, rewritten atomically after each batch; reloaded on resume."""

    def __init__(self, run: RunFolder, name: str, *, key: str = "item_id", resume: bool = False):
        self.run, self.name, self.key = run, name, key
        self.rows: list[dict] = []
        if resume and run.has(name):
            df = run.read_table(name)
            if len(df) and key not in df.columns:
                raise RunFolderError(
                    f"run folder {str(run.path)!r}: expected {name} to have a {key!r} column, found {list(df.columns)}"
                )
            self.rows = df.to_dict("records")

    def done(self) -> set:
        return {r[self.key] for r in self.rows}

    def reload(self) -> None:
        """Read the rows back from the folder (another rank may have merged rows into it)."""
        self.rows = self.run.read_table(self.name).to_dict("records") if self.run.has(self.name) else []

    def shard_files(self) -> list[Path]:
        """Row shards of this table left by the ranks of a multi-process launch."""
        return sorted((self.run.path / SHARDS_DIR).glob(f"{Path(self.name).stem}.rank*.parquet"))

    def merge_shards(self, order: dict | None = None) -> bool:
        """Move the rows of :meth:`shard_files` into this table (rows already in it first, a
        key seen twice kept once), sorted stably by ``order[key]`` (a key not in ``order``
        last), and delete the shards.  Returns whether there were any."""
        shards = self.shard_files()
        if not shards:
            return False
        self.reload()
        rows, seen = [], set()
        for part in [self.rows] + [self.run.read_table(str(p.relative_to(self.run.path))).to_dict("records")
                                    for p in shards]:
            for r in part:
                if r[self.key] not in seen:
                    seen.add(r[self.key])
                    rows.append(r)
        if order is not None:
            rows.sort(key=lambda r: order.get(r[self.key], len(order)))
        self.rows = rows
        self.flush()
        for p in shards:
            p.unlink()
        try:
            (self.run.path / SHARDS_DIR).rmdir()
        except OSError:  # other tables' shards still there
            pass
        return True

    def extend(self, rows: Iterable[dict]) -> None:
        self.rows.extend(rows)
        self.flush()

    def flush(self) -> None:
        import pandas as pd

        self.run.write_table(self.name, pd.DataFrame(self.rows))

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows)


def fill_rows(settings: Sequence, items: Sequence, *, key: Callable[[Any, Any], Hashable],
              rows_for: Callable[[Any, Sequence], list[dict]], batch_size: int, log: RowLog | None = None,
              progress: bool = True, desc: str = "rows", unit: str = "item"):
    """The resumable row loop of the generating stages (evaluation, steering sweep, record).

    For each of ``settings`` in turn, the ``items`` whose ``key(item, setting)`` ``log`` does not
    hold yet, ``batch_size`` at a time: ``rows_for(setting, chunk)`` returns their rows, which go
    to ``log`` (a :class:`RowLog`, rewritten after each chunk, so a crash loses one chunk at most)
    or are kept in memory when there is none.  One progress bar over ``len(settings) *
    len(items)`` rows starts at the rows already done.  Returns a DataFrame of every row, those
    resumed from ``log`` included.  A row's ``log.key`` value is its ``key(item, setting)``.

    Under a multi-process launch (:mod:`auralens.interp.distributed`) the same batches are formed and
    dealt round-robin to the ranks; each rank writes its rows to its own shard
    (``shards/<table>.rank<r>.parquet``) and, after a barrier, rank 0 merges them into the
    table in the single-process order; every rank returns the whole table.  Shards a crashed
    launch left are merged first (by any world size, one process included), so their rows
    count as done."""
    import pandas as pd

    order: dict = {}
    for setting in settings:
        for it in items:
            order.setdefault(key(it, setting), len(order))
    merged = False
    if log is not None:
        merged = dist.on_main(lambda: log.merge_shards(order))
        if merged:
            log.reload()
    done = log.done() if log is not None else set()
    batches: list[tuple[Any, Sequence]] = []
    for setting in settings:
        todo = [it for it in items if key(it, setting) not in done]
        batches += [(setting, todo[start : start + batch_size]) for start in range(0, len(todo), batch_size)]
    ranked = dist.collective()
    mine = dist.shard(list(enumerate(batches)))
    out = log
    if ranked and log is not None:
        out = RowLog(log.run, f"{SHARDS_DIR}/{Path(log.name).stem}.rank{dist.rank()}.parquet", key=log.key)
    rows: list[tuple[int, list[dict]]] = []
    bar = None
    if progress:

        total = sum(len(c) for _, (_, c) in mine) if ranked else len(settings) * len(items)
        bar = tqdm(total=total, desc=desc if not ranked else f"{desc} [rank {dist.rank()}]", unit=unit,
                   initial=0 if ranked else len(done))
    with dist.rank_local():
        for j, (setting, chunk) in mine:
            new = rows_for(setting, chunk)
            if out is not None:
                out.extend(new)
            else:
                rows.append((j, new))
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    if not ranked:
        if merged:  # a crashed launch's rows and these: in the single-process order, as a launch writes them
            log.rows.sort(key=lambda r: order.get(r[log.key], len(order)))
            log.flush()
        return log.frame() if log is not None else pd.DataFrame([r for _, part in rows for r in part])
    if log is None:  # in-memory rows: gathered to every rank, in the single-process order
        parts = sorted((p for got in dist.gather_objects(rows) for p in got), key=lambda p: p[0])
        return pd.DataFrame([r for _, part in parts for r in part])
    dist.barrier()
    dist.on_main(lambda: log.merge_shards(order))
    log.reload()
    return log.frame()


# --------------------------------------------------------------------------------------------
# The stage skeleton: validate -> (check folder, check + load model) -> create folder -> rows
# --------------------------------------------------------------------------------------------


def check_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, or a :class:`ConfigError` naming ``name``."""

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{name}: expected an integer >= {minimum}, found {value!r}")
    return int(value)


def check_n(n: Any, *, allow_none: bool = False) -> int | None:
    """A positive number of items, at most :data:`MAX_ITEMS` (``None`` = all items, where ``allow_none``)."""
    if n is None and allow_none:
        return None

    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ConfigError(f"n: expected a positive number of items, found {n!r}")
    if n > MAX_ITEMS:
        raise ConfigError(f"n: expected at most {MAX_ITEMS:,} items, found {n!r}")
    return int(n)


def check_device_map(device_map: Any) -> None:
    """Every GPU a ``--device-map`` names exists on this machine (an int index or ``cuda[:N]``):
    ``{"model.layers.0": 99}`` is a :class:`ConfigError` before any folder or model, not a map
    transformers quietly ignores.  Syntax is :func:`auralens.interp.stage_config.parse_device_map`'s."""
    parsed = parse_device_map(device_map)
    if not isinstance(parsed, dict):
        return
    wanted = {}
    for module, dev in parsed.items():
        if isinstance(dev, int):
            wanted[module] = dev
        elif isinstance(dev, str) and re.fullmatch(r"cuda(:[0-9]+)?", dev.strip()):
            wanted[module] = int(dev.strip().partition(":")[2] or 0)
    if not wanted:
        return
    import torch  # only for a map that names GPUs

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for module, index in wanted.items():
        if index >= count:
            have = f"GPUs 0..{count - 1}" if count else "no GPU"
            raise ConfigError(f"device_map: expected devices that exist on this machine ({have}), found "
                              f"{module!r}: {parsed[module]!r}")


def check_formats(formats: Any, name: str = "formats") -> tuple[str, ...]:
    """Distinct answer formats among :data:`auralens.interp.cafe.formats.FORMATS`."""
    formats = (formats,) if isinstance(formats, str) else tuple(formats or ())
    bad = [f for f in formats if f not in FORMATS]
    if not formats or bad or len(set(formats)) != len(formats):
        raise ConfigError(f"{name}: expected distinct formats among {list(FORMATS)}, found {list(formats)}")
    return formats


def check_dtype(dtype: Any) -> str:
    if dtype not in DTYPES:
        raise ConfigError(f"dtype: expected one of {list(DTYPES)}, found {dtype!r}")
    return dtype


def check_model(model: str) -> None:
    """The model's config (read without loading weights) names a class with an architecture
    table (:mod:`auralens.interp.arch`): an unsupported or missing model fails before any folder exists."""
    if not isinstance(model, str) or not model:
        raise ConfigError(f"model: expected 'micro', a Hugging Face id or a checkpoint folder, found {model!r}")
    if model == SMOL_AUDIO:  # assembled at load time from installed parts: check they are there
        check_parts()
        return
    source = resolve_source(model)
    p = Path(source)
    if p.exists() and not (p.is_dir() and (p / "config.json").exists()):
        raise ConfigError(f"model {model!r}: expected a checkpoint folder with a config.json, found {source!r} without one")
    if not p.exists() and (p.is_absolute() or source.startswith((".", "~")) or source.count("/") > 1):
        raise ConfigError(f"model {model!r}: expected a local checkpoint folder or a Hugging Face id, found no folder {source}")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source)
    except Exception as exc:  # OSError (not found / offline), ValueError (unknown model_type)...
        raise ConfigError(
            f"model {model!r}: expected a readable model config (config.json), found none usable at {source!r} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    archs = list(getattr(config, "architectures", None) or [])
    if not archs:
        raise ArchitectureError(f"model {model!r}: its config.json names no architectures; expected one with a table")
    table_for_checkpoint(archs[0])


def load_items(data: str | DataSpec, *, n: int | None, seed: int, allow_all: bool = False,
               allow_outside_audio: bool | None = None) -> list:
    """The run's items: ``n`` checked, rows validated by the loader, at least one item, and
    every audio file's header checked (:func:`auralens.interp.datasets.check_audio_files`).
    ``data``: a dataset spec, as text or as a :class:`~auralens.interp.dataspec.DataSpec`.
    Audio outside the dataset's folder is refused unless ``allow_outside_audio`` (default:
    :func:`auralens.interp.datasets.outside_audio_allowed`, the CLI's ``--allow-outside-audio``)."""
    n = check_n(n, allow_none=allow_all)
    items = load_dataset(data, n=n, seed=seed, allow_outside_audio=allow_outside_audio)
    if isinstance(data, DataSpec):
        data = str(data)  # the errors name the spec as it is written
    if not items:
        raise DatasetError(f"dataset {data!r}: expected at least one item, found none")
    ids = [it.item_id for it in items]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise DatasetError(f"dataset {data!r}: expected distinct item ids, found duplicates {dup[:5]}")
    check_audio_files(items)
    return items


def data_root(data: Any) -> str | None:
    """The folder a file dataset's audio lives in (:func:`auralens.interp.datasets.dataset_root`,
    resolved), as the manifest records it under ``dataset_root``; None for cafe kinds."""
    if not data or not isinstance(data, str):
        return None
    try:
        ds = DataSpec.parse(data)
    except (ConfigError, DatasetError):
        return None
    if ds.kind != "file":
        return None
    return str(dataset_root(ds.name))


def relative_audio(audio: str, root: str | None) -> str:
    """An item's audio path as a run folder stores it: relative to the dataset root recorded in
    the manifest when the file lies inside it, else as given (``--allow-outside-audio``)."""
    if not root or audio.startswith("cafe:"):
        return audio
    p = Path(audio)
    if p.is_absolute() and p.is_relative_to(root):
        return p.relative_to(root).as_posix()
    return audio


def run_identity(items: Sequence) -> dict[str, Any]:
    """What the data contribute to a run's identity: the content fingerprint and the item-id set."""
    ids = sorted(str(it.item_id) for it in items)
    return {
        "data_fingerprint": fingerprint(list(items)),
        "items": {"count": len(ids), "ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()},
    }


def open_run(
    out: str | Path,
    *,
    manifest: dict[str, Any],
    items: Sequence,
    resume: bool = False,
    lm=None,
    model: str | None = None,
    dtype: str = "auto",
    device_map: Any = None,
    before_create=None,
):
    """Steps 2-4 of a stage, after its own validation: check the folder would accept the run
    (read-only), check the model's config and load it (unless ``lm`` is given; ``device_map``:
    the ``--device-map`` text or value, :func:`auralens.interp.stage_config.parse_device_map`), call
    ``before_create(lm)`` (model-dependent checks), and only then create the folder.
    Returns ``(run, lm)``; the manifest gets :func:`run_identity` of ``items``.

    Under a multi-process launch every rank does the checks and loads its model (on its own
    device), the ranks agree (an error on any rank is raised on all), rank 0 creates the
    folder and the others wait for it (:mod:`auralens.interp.distributed`)."""
    manifest = {**manifest, **run_identity(items)}
    root = data_root(manifest.get("data"))
    if root is not None:  # where the items' audio lives: the dashboard serves audio from there only
        manifest["dataset_root"] = root
    where = dist.placement(device_map)  # a bad --device-map fails here, before anything is read
    check_device_map(device_map)

    template = (manifest.get("config") or {}).get("prompt_template") or None
    if template is not None:
        check_template(template)  # before the folder or the model is touched

    def prepare():
        RunFolder.check(out, manifest=manifest, resume=resume)
        loaded = lm
        if loaded is None:
            check_dtype(dtype)
            check_model(model)
            loaded = load_model(model, dtype=dtype, **where)
        if template is not None:
            loaded.use_template(template)
        if hasattr(loaded, "processor") and hasattr(loaded, "prompt_template"):
            check_template_fits(loaded.processor, loaded.prompt_template)
        if before_create is not None:
            before_create(loaded)
        return loaded

    lm = dist.agree(prepare)
    world = dist.world()

    def create():
        run = RunFolder.create(out, manifest=manifest, resume=resume)
        run.update_manifest(processes=world)  # not identity: a resumption may use another number
        return run

    return dist.on_main(create), lm


# --------------------------------------------------------------------------------------------
# Strict JSON
# --------------------------------------------------------------------------------------------


def jsonable(obj: Any) -> Any:
    """``obj`` with non-finite floats as ``None`` and numpy/paths/other objects as plain JSON."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    if np is not None:
        if isinstance(obj, np.bool_):
            return bool(obj)
        if isinstance(obj, np.integer):
            return int(obj)
        if isinstance(obj, np.floating):
            return jsonable(float(obj))
        if isinstance(obj, np.ndarray):
            return jsonable(obj.tolist())
    return str(obj)


def dumps_strict(obj: Any, *, indent: int | None = 2) -> str:
    """Strict JSON (no bare NaN/Infinity: ``null`` instead) of ``obj``."""
    return json.dumps(jsonable(obj), indent=indent, allow_nan=False)


def _version() -> str:
    return __version__
