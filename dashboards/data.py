"""Reading run folders for the dashboard and the report: no experiment logic, no model.

A *run* is either one stage folder (a directory with ``manifest.json`` written by one stage:
eval, record, probe, steer or compare) or a parent folder whose sub-folders are stage folders
(what ``auralens demo`` writes).  :func:`open_run` accepts both and tells which stages it found:
each folder's stage is read from its manifest (``stage``, ``stages``, the ``auralens <stage>``
command), then its tables, then its name, so folder names do not matter.

A damaged file (truncated parquet, safetensors or manifest.json) raises
:class:`auralens.interp.errors.RunFolderError` naming the file, what was expected and what was found.

Everything here is a plain function of paths (pandas, safetensors, json); the Streamlit app
wraps them in ``st.cache_data``.  Per-item arrays are read lazily, one item at a time, and the
large optional ``time_bins`` tensor is sliced to one (layer, head) without loading the rest.
"""

from __future__ import annotations

import json
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from auralens.interp.audio import check_audio_header, file_kind
from auralens.interp.datasets import dataset_root
from auralens.interp.dataspec import DataSpec
from auralens.interp.errors import AudioInputError, AuralensError, RunFolderError
from auralens.interp.schemas import TABLES

__all__ = [
    "RunFolderError",
    "STAGES",
    "STAGE_LABELS",
    "ItemArrays",
    "Run",
    "audio_file",
    "audio_refusal",
    "display_pieces",
    "find_runs",
    "folder_problems",
    "is_run",
    "item_file",
    "list_items",
    "list_items_from_files",
    "mean_prompt_yield",
    "open_run",
    "read_item",
    "read_manifest",
    "read_table",
    "read_time_bins",
    "stage_kind",
    "yield_at",
]

STAGES = ("eval", "record", "probe", "steer", "compare")
STAGE_LABELS = {
    "eval": "accuracy (auralens eval)",
    "record": "attention yield and perception decay (auralens record)",
    "probe": "probes (auralens probe)",
    "steer": "steering (auralens steer)",
    "compare": "steering vs fine-tuning (auralens compare)",
}
# the file whose presence marks a stage folder, in the order they are tested
_MARKERS = (
    ("record", "decay.parquet"),
    ("record", "yields"),
    ("probe", "probes.parquet"),
    ("steer", "steering.parquet"),
    ("compare", "compare.parquet"),
    ("eval", "accuracy.parquet"),
)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The folder's ``manifest.json`` ({} when it has none); a :class:`RunFolderError` naming
    the file when it is not a JSON object (truncated, not JSON, unreadable)."""
    return _read_json_object(Path(folder) / "manifest.json", "manifest")


def read_summary(folder: str | Path) -> dict[str, Any]:
    """The stage folder's ``summary.json`` ({} when it has none), checked like the manifest."""
    return _read_json_object(Path(folder) / "summary.json", "summary")


def _special(p: Path, what: str, expected: str) -> None:
    """A FIFO, socket or device where a run file should be: refused by type, unread (opening a
    FIFO would block the page or the report until something writes to it)."""
    kind = file_kind(p)
    if kind not in ("a file", "nothing", "a directory") and not kind.startswith("an unreadable"):
        raise RunFolderError(f"{what} {str(p)!r}: expected {expected}, found {kind}")


def _read_json_object(p: Path, what: str) -> dict[str, Any]:
    if not p.exists():
        return {}
    _special(p, what, "a JSON object")
    try:
        raw = p.read_bytes()
        obj = json.loads(raw)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        size = _size(p)
        raise RunFolderError(
            f"{what} {str(p)!r}: expected a JSON object, found {_found(size)} that does not parse "
            f"({type(exc).__name__}: {exc}); the run was interrupted or the file was damaged"
        ) from exc
    if not isinstance(obj, dict):
        raise RunFolderError(f"{what} {str(p)!r}: expected a JSON object, found a JSON {type(obj).__name__}")
    if what == "manifest":
        _check_manifest_fields(p, obj)
    return obj


#: manifest keys the dashboard and the report read, and the JSON type each must have
_MANIFEST_TYPES: dict[str, tuple[type, ...]] = {
    "status": (str,), "command": (str,), "stages": (dict,), "dataset_root": (str,),
}


_TYPE_WORDS: dict[type, str] = {str: "a string", list: "a list", dict: "an object"}


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    return {dict: "an object", list: "a list", type(None): "null"}.get(type(value), type(value).__name__)


def _check_manifest_fields(p: Path, manifest: dict[str, Any]) -> None:
    """The keys the pages read have their JSON types (``"status": 123`` is a damaged manifest,
    named, not a page that shows 123 or fails on it)."""
    for key, types in _MANIFEST_TYPES.items():
        if key in manifest and manifest[key] is not None and not isinstance(manifest[key], types):
            want = " or ".join(_TYPE_WORDS[t] for t in types)
            raise RunFolderError(f"manifest {str(p)!r}: expected {key!r} to be {want}, found "
                                 f"{_json_kind(manifest[key])}; the file was damaged or not written by auralens")


def _size(p: Path) -> int | None:
    try:
        return p.stat().st_size
    except OSError:
        return None


def _found(size: int | None) -> str:
    if size is None:
        return "an unreadable file"
    if size == 0:
        return "an empty file"
    return f"a file of {size} bytes"


def _stage_of(name: str) -> str | None:
    """"steer_eval" -> "steer", "record" -> "record", "demo" -> None."""
    name = name.lower()
    for stage in STAGES:
        if name == stage or name.startswith((stage + "_", stage + "-", stage + " ")):
            return stage
    return None


def _stage_of_command(command: Any) -> str | None:
    """"auralens steer eval --n 4" -> "steer"; "python -m auralens record" -> "record"; "auralens demo" -> None."""
    words = str(command or "").split()
    for i, w in enumerate(words[:-1]):
        if Path(w).name in ("auralens", "auralens.cli") or w.endswith("/auralens"):
            return _stage_of(words[i + 1])
    return None


def _kind_from_manifest(manifest: dict[str, Any]) -> str | None:
    """The stage a manifest names: its ``stage`` key, its one finished stage, or its command."""
    for key in ("stage", "kind"):
        if isinstance(manifest.get(key), str) and _stage_of(manifest[key]):
            return _stage_of(manifest[key])
    stages = {_stage_of(str(s)) for s in (manifest.get("stages") or {})} - {None}
    if len(stages) == 1:
        return stages.pop()
    return _stage_of_command(manifest.get("command"))


def _kind_from_files(folder: Path) -> str | None:
    """The stage whose tables are in ``folder``, else the one the folder is named after."""
    for stage, marker in _MARKERS:
        if (folder / marker).exists():
            return stage
    if _stage_of(folder.name):
        return _stage_of(folder.name)
    if (folder / "items.parquet").exists():
        return "eval"
    return None


def stage_kind(folder: str | Path) -> str | None:
    """Which stage wrote ``folder`` (eval/record/probe/steer/compare), or None when it has no
    ``manifest.json``.

    Decided by the manifest first (its ``stage``, its one finished ``stages`` entry, else the
    ``auralens <stage>`` command line), then by the tables present, then by the folder's name
    (a stage that started but wrote no table yet still shows as that stage).  A damaged
    manifest raises :class:`RunFolderError` naming it."""
    folder = Path(folder)
    if not (folder / "manifest.json").exists():
        return None
    return _kind_from_manifest(read_manifest(folder)) or _kind_from_files(folder)


def _safe_kind(folder: Path, problems: list[str]) -> str | None:
    """:func:`stage_kind`, but a damaged manifest is noted in ``problems`` and the stage is
    told from the folder's tables and name instead."""
    try:
        return stage_kind(folder)
    except RunFolderError as exc:
        problems.append(str(exc))
        return _kind_from_files(folder)


def _discover(path: Path, problems: list[str], *, depth: int = 2) -> dict[str, Path]:
    """Stage folders at ``path`` or below it: a stage folder stands for itself (its own
    sub-folders, e.g. the per-system runs inside compare/, are not separate stages); a folder
    without a manifest is looked into, down to ``depth`` levels (``runs/demo/steer/run``)."""
    stages: dict[str, Path] = {}
    own = _safe_kind(path, problems)
    if own is not None:
        stages[own] = path

    def walk(start: Path) -> None:
        # breadth first: a stage folder right inside ``path`` wins over one deeper down (the
        # demo's organisms/<model>@decay record runs must not stand in for its record/)
        frontier = [start]
        for _level in range(1, depth + 1):
            nxt: list[Path] = []
            for p in frontier:
                for sub in _subdirs(p):
                    kind = _safe_kind(sub, problems)
                    if kind is not None:
                        stages.setdefault(kind, sub)
                    elif not (sub / "manifest.json").exists():
                        nxt.append(sub)
            frontier = nxt

    if own is None:
        walk(path)
    else:  # a stage folder: only stage folders right inside it (never its internals)
        for sub in _subdirs(path):
            if (sub / "manifest.json").exists():
                kind = _safe_kind(sub, problems)
                if kind is not None:
                    stages.setdefault(kind, sub)
    return stages


@dataclass(frozen=True)
class Run:
    """A run folder as the dashboard sees it."""

    path: Path
    stages: dict[str, Path] = field(default_factory=dict)  # stage -> its folder
    manifest: dict[str, Any] = field(default_factory=dict)  # the parent's, else the first stage's
    problems: tuple[str, ...] = ()  # damaged files met while opening (each message names its file)

    @property
    def name(self) -> str:
        return self.path.name

    def has(self, stage: str) -> bool:
        return stage in self.stages

    def folder(self, stage: str) -> Path:
        if stage not in self.stages:
            raise RunFolderError(
                f"run {str(self.path)!r}: expected a {stage} stage folder, found only "
                f"{sorted(self.stages) or 'none'} (run `auralens {stage}` first)"
            )
        return self.stages[stage]

    def stage_manifest(self, stage: str) -> dict[str, Any]:
        return read_manifest(self.folder(stage))

    def check(self) -> None:
        """Raise :class:`RunFolderError` for the first damaged file: one met while opening (a
        manifest), else one :func:`folder_problems` finds in a stage folder (a table that does not
        read, an ``audio/*.wav`` clip that is not audio).  The report calls it before writing."""
        problems = [*self.problems, *(p for s, f in self.stages.items() for p in folder_problems(f, stage=s))]
        if problems:
            more = f" (and {len(problems) - 1} more damaged file(s))" if len(problems) > 1 else ""
            raise RunFolderError(problems[0] + more)


def open_run(path: str | Path) -> Run:
    """A stage folder, or a parent folder holding stage folders (both may be given).

    Stage folders are told by their ``manifest.json`` (see :func:`stage_kind`), not by their
    names, and may sit one folder deeper (``demo/steer/run``).  A damaged manifest does not
    stop the others from opening: it is listed in :attr:`Run.problems`."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise RunFolderError(f"run folder {str(path)!r}: expected a directory, found {'a file' if path.exists() else 'nothing'}")
    problems: list[str] = []
    stages = _discover(path, problems)
    if not stages:
        if problems:
            raise RunFolderError(problems[0])
        if not (path / "manifest.json").exists():
            raise RunFolderError(
                f"run folder {str(path)!r}: expected a manifest.json or stage sub-folders "
                f"({', '.join(STAGES)}) with one, found neither"
            )
    ordered = {s: stages[s] for s in STAGES if s in stages}
    manifest: dict[str, Any] = {}
    for folder in [path, *ordered.values()]:
        try:
            manifest = read_manifest(folder)
        except RunFolderError:
            continue  # already in problems
        if manifest:
            break
    return Run(path=path, stages=ordered, manifest=manifest, problems=tuple(dict.fromkeys(problems)))


def folder_problems(folder: str | Path, *, stage: str | None = None) -> list[str]:
    """Damaged files of one stage folder, one message each naming the file: a ``*.parquet``
    table whose footer does not read (truncated, empty, not parquet) and an ``audio/*.wav`` clip whose header
    does not check (:func:`auralens.interp.audio.check_audio_header`: not audio, truncated, a
    special file); with ``stage``, also a table of that stage (:data:`auralens.interp.schemas.TABLES`)
    that has none of its declared columns (a parquet file from elsewhere under the stage's file
    name; a table missing only some columns is left alone: older runs lack newer columns).
    Cheap (no table or clip is decoded): :meth:`Run.check` raises the first, so the report
    refuses a damaged run instead of leaving a section out or failing half-way."""
    import pyarrow.parquet as pq

    folder = Path(folder)
    out: list[str] = []
    for p in sorted(folder.glob("*.parquet")):
        try:
            _special(p, "table", "a parquet table")
        except RunFolderError as exc:
            out.append(str(exc))
            continue
        try:
            names = pq.ParquetFile(p).schema_arrow.names
        except Exception as exc:  # noqa: BLE001 - ArrowInvalid, OSError...: the table cannot be used
            out.append(f"table {str(p)!r}: expected a parquet table, found {_found(_size(p))} that does not read "
                       f"({type(exc).__name__}: {exc}); the run was interrupted or the file was damaged")
            continue
        declared = TABLES.get(f"{stage}/{p.name}") if stage else None
        if declared is not None and not set(names) & set(declared.names):
            out.append(f"table {str(p)!r}: expected the columns of {declared.path} ({', '.join(declared.names[:4])}, "
                       f"...), found {names[:8]}: not a table the {stage} stage wrote")
    audio = folder / "audio"
    if audio.is_dir():
        for p in sorted(audio.glob("*.wav")):
            try:
                check_audio_header(p)
            except AudioInputError as exc:
                out.append(f"{exc}; the run was interrupted or the file was damaged")
    return out


def _subdirs(p: Path) -> list[Path]:
    try:
        return sorted(q for q in p.iterdir() if q.is_dir() and not q.name.startswith("."))
    except OSError:
        return []


def is_run(path: str | Path) -> bool:
    """A stage folder, or a folder with a stage folder right inside (a folder of runs is not one)."""
    p = Path(path)
    return p.is_dir() and bool(_discover(p, [], depth=1))


def find_runs(root: str | Path, *, max_depth: int = 2) -> list[Path]:
    """Run folders at or under ``root`` (a parent folder stands for its stage sub-folders)."""
    root = Path(root)
    if not root.is_dir():
        return []
    if is_run(root):
        return [root]
    found: list[Path] = []

    def walk(p: Path, depth: int) -> None:
        for q in _subdirs(p):
            if is_run(q):
                found.append(q)
            elif depth < max_depth:
                walk(q, depth + 1)

    walk(root, 1)
    return found


def read_table(folder: str | Path, name: str):
    """A parquet table of a stage folder, or None when the stage has not written it; a
    :class:`RunFolderError` naming the file when it is not a readable parquet table."""
    import pandas as pd

    p = Path(folder) / name
    if not p.exists():
        return None
    _special(p, "table", "a parquet table")
    try:
        return pd.read_parquet(p)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ValueError...
        raise RunFolderError(
            f"table {str(p)!r}: expected a parquet table, found {_found(_size(p))} that does not read "
            f"({type(exc).__name__}: {exc}); the run was interrupted or the file was damaged"
        ) from exc


# ----------------------------------------------------------------------------- record items
def item_file(record_dir: str | Path, item_index: int) -> Path:
    return Path(record_dir) / "yields" / f"{int(item_index):05d}.safetensors"


def list_items(record_dir: str | Path):
    """The record stage's items table; when ``items.parquet`` is missing, one row per yields file."""
    df = read_table(record_dir, "items.parquet")
    if df is None:
        return list_items_from_files(record_dir)
    if "item_index" not in df.columns:
        df = df.assign(item_index=np.arange(len(df)))
    return df.reset_index(drop=True)


def list_items_from_files(record_dir: str | Path):
    """One row (item_index, item_id) per ``yields/*.safetensors`` file of a record folder."""
    import pandas as pd

    files = sorted((Path(record_dir) / "yields").glob("*.safetensors"))
    df = pd.DataFrame({"item_index": [int(f.stem) for f in files if f.stem.isdigit()]}, dtype="int64")
    df["item_id"] = df["item_index"].map(lambda i: f"item-{i}")
    return df


@dataclass(frozen=True)
class ItemArrays:
    """One recorded item: its yields, steps and tokens (time bins are read separately)."""

    item_index: int
    item_id: str
    yields: np.ndarray  # [n_tokens, layers, heads]
    steps: np.ndarray  # [n_tokens]
    token_ids: np.ndarray  # [n_tokens]
    tokens: list[str]  # one string per token (padded/truncated to n_tokens)
    text: str
    pieces: list[str]  # the tokens as they read in ``text`` (with the whitespace before each)
    has_time_bins: bool
    n_time_bins: int
    prompt_yield: np.ndarray | None  # [prompt_len, layers, heads] or None

    @property
    def n_tokens(self) -> int:
        return int(self.yields.shape[0])

    @property
    def n_layers(self) -> int:
        return int(self.yields.shape[1])

    @property
    def n_heads(self) -> int:
        return int(self.yields.shape[2])

    @property
    def step_ids(self) -> list[int]:
        return sorted(int(s) for s in np.unique(self.steps) if s >= 0)


def display_pieces(tokens: list[str], text: str) -> list[str]:
    """Each token as it reads in the generated ``text``, with the whitespace before it.

    Word-level tokenizers decode one token without its surrounding spaces ("sound", "1"); the
    text has them ("sound 1").  Each token is looked up in the text after the previous one, and
    the whitespace in between is given to it; a token not found there (a special token the text
    dropped) keeps its own string, after a space."""
    out: list[str] = []
    pos = 0
    for tok in tokens:
        core = tok.strip() or tok
        j = text.find(core, pos) if core else -1
        if j != -1 and not text[pos:j].strip():
            out.append(text[pos : j + len(core)])
            pos = j + len(core)
        else:
            out.append(tok if (not out or tok[:1].isspace()) else " " + tok)
    return out


def _open(path: Path):

    if not path.exists():
        raise RunFolderError(f"item file {str(path)!r}: expected a safetensors file written by the record stage, found none")
    _special(path, "item file", "a safetensors file")
    try:
        return safe_open(str(path), framework="numpy")
    except Exception as exc:  # noqa: BLE001 - safetensors raises SafetensorError for a bad header or size
        raise _bad_safetensors(path, exc) from exc


def _bad_safetensors(path: Path, exc: BaseException) -> RunFolderError:
    return RunFolderError(
        f"item file {str(path)!r}: expected a safetensors file, found {_found(_size(path))} that does not read "
        f"({type(exc).__name__}: {exc}); the run was interrupted or the file was damaged"
    )


def read_item(record_dir: str | Path, item_index: int) -> ItemArrays:
    """Read one item's ``yields/{item_index:05d}.safetensors`` (all but ``time_bins``)."""
    path = item_file(record_dir, item_index)
    try:
        return _read_item(path, item_index)
    except RunFolderError:
        raise
    except Exception as exc:  # noqa: BLE001 - a tensor whose bytes are cut short
        raise _bad_safetensors(path, exc) from exc


def _read_item(path: Path, item_index: int) -> ItemArrays:
    with _open(path) as f:
        keys = set(f.keys())
        meta = f.metadata() or {}
        if "yield" not in keys:
            raise RunFolderError(f"item file {str(path)!r}: expected a 'yield' tensor, found {sorted(keys)}")
        y = np.asarray(f.get_tensor("yield"), dtype=np.float32)
        if y.ndim != 3:
            raise RunFolderError(f"item file {str(path)!r}: expected 'yield' of shape [n_tokens, layers, heads], found {y.shape}")
        n = y.shape[0]
        steps = np.asarray(f.get_tensor("steps"), dtype=np.int64) if "steps" in keys else np.zeros(n, np.int64)
        ids = np.asarray(f.get_tensor("token_ids"), dtype=np.int64) if "token_ids" in keys else np.full(n, -1, np.int64)
        prompt = np.asarray(f.get_tensor("prompt_yield"), dtype=np.float32) if "prompt_yield" in keys else None
        n_bins = 0
        if "time_bins" in keys:
            n_bins = int(f.get_slice("time_bins").get_shape()[-1])
    try:
        tokens = [str(t) for t in json.loads(meta.get("tokens", "[]"))]
    except json.JSONDecodeError:
        tokens = []
    if len(tokens) < n:
        tokens = tokens + [f"<{int(i)}>" for i in ids[len(tokens):]]
    steps = steps[:n] if len(steps) >= n else np.concatenate([steps, np.full(n - len(steps), -1)])
    text = str(meta.get("text", "".join(tokens[:n])))
    return ItemArrays(
        item_index=int(item_index), item_id=str(meta.get("item_id", f"item-{item_index}")), yields=y, steps=steps,
        token_ids=ids, tokens=tokens[:n], text=text, pieces=display_pieces(tokens[:n], text),
        has_time_bins="time_bins" in keys, n_time_bins=n_bins, prompt_yield=prompt,
    )


def read_time_bins(record_dir: str | Path, item_index: int, layer: int, head: int) -> np.ndarray | None:
    """[n_tokens, K] yield of one head over the clip's K time bins (None if not recorded).

    Only the (layer, head) slice is read from disk: a 1,000-token item of a 32x32-head model
    with 50 bins holds 200 MB of time bins, of which this reads 200 kB."""
    with _open(item_file(record_dir, item_index)) as f:
        if "time_bins" not in set(f.keys()):
            return None
        sl = f.get_slice("time_bins")
        shape = sl.get_shape()
        if len(shape) != 4:
            raise RunFolderError(f"item {item_index}: expected time_bins [n_tokens, layers, heads, K], found shape {shape}")
        if not (0 <= layer < shape[1] and 0 <= head < shape[2]):
            raise RunFolderError(f"item {item_index}: expected layer < {shape[1]} and head < {shape[2]}, found ({layer}, {head})")
        return np.asarray(sl[:, layer : layer + 1, head : head + 1, :], dtype=np.float32)[:, 0, 0, :]


def yield_at(item: ItemArrays, where: str | int) -> np.ndarray:
    """[layers, heads] yield at ``"prompt"`` (the last prompt token: row 0), ``"all"`` (mean over
    generated tokens) or reasoning step ``s`` (mean over the tokens of that step)."""
    if where == "prompt":
        return item.yields[0]
    if where == "all":
        return item.yields.mean(axis=0)
    mask = item.steps == int(where)
    if not mask.any():
        raise RunFolderError(f"item {item.item_id}: expected tokens in step {where}, found steps {item.step_ids}")
    return item.yields[mask].mean(axis=0)


def token_mask(item: ItemArrays, where: str | int) -> np.ndarray:
    """Boolean [n_tokens] mask of the rows :func:`yield_at` averages."""
    if where == "prompt":
        m = np.zeros(item.n_tokens, bool)
        m[0] = True
        return m
    if where == "all":
        return np.ones(item.n_tokens, bool)
    return item.steps == int(where)


def mean_prompt_yield(record_dir: str | Path, item_indices: list[int] | None = None) -> tuple[np.ndarray, int] | None:
    """[layers, heads] mean yield at the last prompt token over items (row 0 of each file, read
    alone), and the number of items; None if the run has no yields."""
    files = sorted((Path(record_dir) / "yields").glob("*.safetensors"))
    if item_indices is not None:
        wanted = {int(i) for i in item_indices}
        files = [f for f in files if f.stem.isdigit() and int(f.stem) in wanted]
    acc, n = None, 0
    for fp in files:
        try:
            with _open(fp) as f:
                if "yield" not in set(f.keys()):
                    continue
                row = np.asarray(f.get_slice("yield")[0:1], dtype=np.float64)[0]
        except RunFolderError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _bad_safetensors(fp, exc) from exc
        acc = row if acc is None else acc + row
        n += 1
    if acc is None:
        return None
    return (acc / n).astype(np.float32), n


def _resolved(p: Path) -> Path | None:
    try:
        return p.resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        return None


def _audio_roots(run_folder: str | Path) -> tuple[Path | None, Path | None]:
    """(the run folder, the dataset root its manifest records), resolved; None where unknown.

    A run written before manifests recorded ``dataset_root`` has its root read from its ``data``
    spec instead, when that names a dataset file or folder that exists (as
    :func:`auralens.interp.datasets.dataset_root` would have recorded it)."""
    run = _resolved(Path(run_folder))
    try:
        manifest = read_manifest(run_folder)
    except RunFolderError:  # a damaged manifest: named elsewhere; no dataset root then
        manifest = {}
    root = manifest.get("dataset_root")
    if isinstance(root, str) and root:
        return run, _resolved(Path(root))
    data = manifest.get("data")
    if isinstance(data, str) and data and "\x00" not in data:
        try:
            spec = DataSpec.parse(data)
        except AuralensError:
            return run, None
        if spec.kind == "file" and Path(spec.name).exists():
            return run, dataset_root(spec.name)
    return run, None


def _locate_audio(run_folder: str | Path, audio_path: Any) -> tuple[Path | None, str | None]:
    """(the file to serve, None) or (None, why not): see :func:`audio_file`."""
    if audio_path is None or (isinstance(audio_path, float) and np.isnan(audio_path)) or str(audio_path) == "":
        return None, "No audio file is recorded for this item."
    text = str(audio_path)
    if "\x00" in text:
        return None, f"The audio path {text!r} is not played: it holds a NUL byte."
    run, root = _audio_roots(run_folder)
    where = f"the run folder {str(run_folder)!r}" + (f" or the dataset folder {str(root)!r}" if root else "")
    p = Path(text)
    candidates = [p] if p.is_absolute() else [Path(run_folder) / p] + ([root / p] if root else [])
    outside = None
    for cand in candidates:
        real = _resolved(cand)
        if real is None or not real.is_file():
            continue
        if any(r is not None and real.is_relative_to(r) for r in (run, root)):
            return real, None
        outside = real
    if outside is not None:
        return None, (f"The audio {text!r} is not played: it resolves to {str(outside)!r}, outside {where} "
                      "recorded in the run's manifest (a run folder may only point at its own files and its dataset's).")
    return None, f"The audio {text!r} was not found in {where}."


def audio_file(run_folder: str | Path, audio_path: Any) -> Path | None:
    """The item's audio file, resolved, or None.

    ``audio_path`` is the ``items.parquet`` value: relative to the run folder (cafe clips the
    record stage wrote), relative to the dataset root the manifest records (``dataset_root``),
    or absolute (run folders written before paths were stored relative; their dataset root is
    read from their ``data`` spec).  The file is served only
    when it resolves, symlinks included, inside the run folder or that dataset root, so a run
    folder from someone else cannot make the dashboard play any file on the machine.  Why a path
    is refused, in one sentence for the page: :func:`audio_refusal`."""
    return _locate_audio(run_folder, audio_path)[0]


def audio_refusal(run_folder: str | Path, audio_path: Any) -> str | None:
    """One sentence saying why :func:`audio_file` serves no file for ``audio_path`` (none
    recorded, not found, or outside the run folder and the manifest's dataset root); None
    exactly when it serves one."""
    return _locate_audio(run_folder, audio_path)[1]


def audio_duration(path: str | Path) -> float | None:
    """Seconds of a wav file (stdlib ``wave``; None when it cannot tell)."""

    try:
        with wave.open(str(path), "rb") as w:
            return w.getnframes() / float(w.getframerate())
    except Exception:  # noqa: BLE001 - a non-PCM file simply has no duration axis
        return None
