"""Dataset loaders: cafe (synthetic), MMAU, MMAR, and a folder of audio + ``questions.jsonl``.

All return :class:`auralens.interp.items.Item` lists.  Rows are validated as they are read: a row without
an answer, with fewer than two choices or with an answer outside its choices is an error that
names the file and the row; nothing is half-loaded.  A file dataset's audio must resolve inside
the dataset's own folder (symlinks resolved: ``../x.wav``, an absolute path, a symlinked file or
folder pointing elsewhere are refused) unless the caller allows it (``--allow-outside-audio``,
:func:`outside_audio_allowed`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np

from auralens.interp.audio import check_audio_header, file_kind
from auralens.interp.cafe.cues import cue_items
from auralens.interp.cafe.questions import TIERS, make_items
from auralens.interp.dataspec import CUE_DATASETS, FILE_SPLITS, DataSpec, file_split  # noqa: F401 (re-exported)
from auralens.interp.errors import AudioInputError, DatasetError
from auralens.interp.items import Item


def _category(value: Any, *, where: str = "", key: str = "category") -> str:
    """A row's category: a string, null, or (MMAU quirk) a one-element list of a string; anything
    else (a number, a longer list, an object) is a DatasetError naming the row and the field."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    if value is None or isinstance(value, str):
        return value or ""
    raise DatasetError(f"{where}: expected {key!r} to be a string (or a one-element list of one), found {_kind(value)}")


def _text_field(row: dict, keys: tuple[str, ...], where: str) -> str:
    """The first of ``keys`` the row has, as a string (null and a missing field: ""); any other
    JSON type is a DatasetError naming the field."""
    for key in keys:
        if key in row:
            value = row[key]
            if value is None or isinstance(value, str):
                return value or ""
            raise DatasetError(f"{where}: expected {key!r} to be a string, found {_kind(value)}")
    return ""


#: whether a dataset's audio may resolve outside its own folder (``--allow-outside-audio``; see
#: :func:`outside_audio_allowed`); the loaders' ``allow_outside_audio`` argument wins over it
_OUTSIDE_AUDIO: ContextVar[bool] = ContextVar("auralens_allow_outside_audio", default=False)
#: the flag that lets a dataset's audio live elsewhere, as the errors name it
OUTSIDE_AUDIO_FLAG = "--allow-outside-audio"


@contextlib.contextmanager
def outside_audio_allowed(allow: bool = True) -> Iterator[None]:
    """Inside this block, dataset loaders (and every stage, through them) accept audio paths that
    resolve outside the dataset's folder: what ``--allow-outside-audio`` does for one command."""
    token = _OUTSIDE_AUDIO.set(bool(allow))
    try:
        yield
    finally:
        _OUTSIDE_AUDIO.reset(token)


def _allowed(allow_outside_audio: bool | None) -> bool:
    return _OUTSIDE_AUDIO.get() if allow_outside_audio is None else bool(allow_outside_audio)


def _resolve_audio(audio: str, root: Path) -> Path:
    """``audio`` (relative to ``root``, or absolute) with every symlink resolved; a path that
    cannot be resolved (a symlink loop, a NUL byte) is returned as written, for the audio header
    check to name."""
    path = Path(audio)
    joined = path if path.is_absolute() else root / path
    try:
        return joined.resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte: named by the audio check
        return Path(os.path.abspath(joined))


def _check_inside(audio: str, path: Path, root: Path, where: str) -> None:
    """``path`` (resolved) lies inside ``root`` (resolved), or a DatasetError naming the row, the
    path, the folder and the flag that allows it."""
    try:
        real_root = root.resolve()
    except (OSError, RuntimeError, ValueError):
        real_root = Path(os.path.abspath(root))
    if "\x00" in audio:
        return  # refused by the audio header check, which names the NUL byte
    if not path.is_relative_to(real_root):
        raise DatasetError(
            f"{where}: expected audio inside the dataset folder {str(real_root)!r}, found {audio!r}, which resolves "
            f"to {str(path)!r} outside it; move the file into the folder or pass {OUTSIDE_AUDIO_FLAG} to read it")


def _row_id(rid: Any, where: str) -> str | None:
    """A row's ``id``: a string or an integer (JSON number without a fraction); None when the row
    has none.  A float, a boolean, a list or an object is a DatasetError naming the row."""
    if rid is None or rid == "":
        return None
    if isinstance(rid, str):
        return rid
    if isinstance(rid, int) and not isinstance(rid, bool):
        return str(rid)
    raise DatasetError(f"{where}: expected 'id' to be a string or an integer, found {_kind(rid)}")


def _row_item(row: dict, *, where: str, audio_key: str, root: Path, id_key: str = "id",
              allow_outside_audio: bool | None = None) -> Item:
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: expected a JSON object, found {_kind(row)}")
    for key in ("question", "choices", "answer", audio_key):
        if key not in row or row[key] in (None, "", []):
            raise DatasetError(f"{where}: expected a non-empty {key!r} field, found {row.get(key)!r}")
    choices = row["choices"]
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise DatasetError(f"{where}: expected 'choices' to be a list of strings, found {choices!r}")
    for key in ("question", "answer"):
        if not isinstance(row[key], str):
            raise DatasetError(f"{where}: expected {key!r} to be a string, found {_kind(row[key])}")
    if not isinstance(row[audio_key], str):
        raise DatasetError(f"{where}: expected {audio_key!r} to be a file path string, found {row[audio_key]!r}")
    audio = row[audio_key]
    path = _resolve_audio(audio, root)
    if not _allowed(allow_outside_audio):
        _check_inside(audio, path, root, where)
    rid = _row_id(row.get(id_key), where)
    category = _category(row.get("category"), where=where)
    try:
        return Item(
            # a row without an id is named by its position (``where``), which is unique in the file;
            # a clash with another row's explicit id is caught by _check_unique_ids
            item_id=where if rid is None else rid,
            audio=str(path),
            question=row["question"],
            choices=tuple(choices),
            answer=row["answer"],
            task=_text_field(row, ("task", "modality"), where),
            category=category,
            sub_category=_text_field(row, ("sub-category", "sub_category"), where),
            difficulty=_text_field(row, ("difficulty",), where),
            tier=category,
            meta={k: v for k, v in row.items() if k not in ("question", "choices", "answer")},
        )
    except DatasetError as exc:
        raise DatasetError(f"{where}: {exc}") from None


def _kind(value: Any) -> str:
    """A JSON value's type, in JSON's words."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if value is None:
        return "null"
    return type(value).__name__


def _read_text(path: Path, what: str) -> str:
    """A dataset file's text; UTF-8 (a BOM is accepted) or a DatasetError naming the file and the
    first undecodable byte's line.  A FIFO, socket or device is refused by its type, unread."""
    kind = file_kind(path)
    if kind not in ("a file", "nothing", "a directory"):
        raise DatasetError(f"dataset file {str(path)!r}: expected {what}, found {kind}")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"dataset file {str(path)!r}: expected {what}, found nothing there") from None
    except IsADirectoryError:
        raise DatasetError(f"dataset file {str(path)!r}: expected {what}, found a directory") from None
    except OSError as exc:
        raise DatasetError(f"dataset file {str(path)!r}: expected a readable {what}, found {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DatasetError(
            f"dataset file {str(path)!r}: expected UTF-8 text, found byte 0x{raw[exc.start]:02x} at line {line} "
            f"(byte offset {exc.start}) that is not UTF-8; re-save the file as UTF-8"
        ) from None


def _read_json_list(path: Path) -> list:
    text = _read_text(path, "a JSON file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"dataset file {str(path)!r}: expected JSON, found invalid JSON at line {exc.lineno} column {exc.colno} "
            f"({exc.msg})"
        ) from None
    except RecursionError:
        raise DatasetError(f"dataset file {str(path)!r}: expected JSON rows, found nesting too deep to parse") from None
    if not isinstance(data, list):
        raise DatasetError(f"dataset file {str(path)!r}: expected a JSON list of rows, found {_kind(data)}")
    if not data:
        raise DatasetError(f"dataset file {str(path)!r}: expected a JSON list of rows, found an empty list")
    return data


def _check_unique_ids(items: list[Item], wheres: list[str], name: str) -> None:
    """Refuse duplicate item ids, naming the id and the rows that share it (``wheres[i]`` names
    the row ``items[i]`` came from)."""
    first: dict[str, int] = {}
    dups: list[str] = []
    for i, it in enumerate(items):
        j = first.setdefault(it.item_id, i)
        if j != i:
            dups.append(f"id {it.item_id!r} at {wheres[j]} and {wheres[i]}")
    if dups:
        shown = "; ".join(dups[:10]) + (f"; and {len(dups) - 10} more" if len(dups) > 10 else "")
        raise DatasetError(
            f"dataset file {name!r}: expected unique item ids, found {len(dups)} duplicate"
            f"{'s' if len(dups) > 1 else ''}: {shown}"
        )


def _items_from_rows(rows: list, path: Path, audio_root: str | Path | None, audio_key: str,
                     allow_outside_audio: bool | None = None) -> list[Item]:
    root = dataset_root(path, audio_root)
    items, wheres = [], []
    for i, r in enumerate(rows):
        where = f"{path.name} row {i} (id {r.get('id') if isinstance(r, dict) else '?'})"
        items.append(_row_item(r, where=where, audio_key=audio_key, root=root, allow_outside_audio=allow_outside_audio))
        wheres.append(f"row {i}")
    _check_unique_ids(items, wheres, str(path))
    return items


def _load_json_rows(path: str | Path, audio_root: str | Path | None, audio_key: str,
                    allow_outside_audio: bool | None = None) -> list[Item]:
    path = Path(path)
    return _items_from_rows(_read_json_list(path), path, audio_root, audio_key, allow_outside_audio)


def dataset_root(path: str | Path, audio_root: str | Path | None = None) -> Path:
    """The folder a file dataset's audio must resolve inside (symlinks resolved): ``audio_root``
    when given, else the folder dataset itself, else the JSON file's folder."""
    p = Path(audio_root) if audio_root else Path(path) if Path(path).is_dir() else Path(path).parent
    try:
        return p.resolve()
    except (OSError, RuntimeError, ValueError):
        return Path(os.path.abspath(p))


def load_mmau(path: str | Path, *, audio_root: str | Path | None = None,
              allow_outside_audio: bool | None = None) -> list[Item]:
    """MMAU (test-mini / test) JSON: ``audio_id`` paths are relative to the JSON's folder
    (``./test-mini-audios/<id>.wav``) unless ``audio_root`` is given.  Every path must resolve
    inside that folder (:func:`dataset_root`) unless ``allow_outside_audio`` (default: whether
    :func:`outside_audio_allowed` is in force)."""
    return _load_json_rows(path, audio_root, "audio_id", allow_outside_audio)


def load_mmar(path: str | Path, *, audio_root: str | Path | None = None,
              allow_outside_audio: bool | None = None) -> list[Item]:
    """MMAR's ``MMAR-meta.json``: rows with ``audio_path``, ``question``, ``choices``, ``answer``,
    ``modality``, ``category``, ``sub-category`` (audio contained as in :func:`load_mmau`)."""
    return _load_json_rows(path, audio_root, "audio_path", allow_outside_audio)


def load_folder(folder: str | Path, *, allow_outside_audio: bool | None = None) -> list[Item]:
    """A folder of audio files plus ``questions.jsonl``: one JSON object a line with ``audio``
    (file name relative to the folder), ``question``, ``choices``, ``answer`` and any metadata.
    A line without an ``id`` gets ``<folder name>-<0-based line index>``.  Every audio path must
    resolve inside the folder, symlinks resolved, unless ``allow_outside_audio`` (default: whether
    :func:`outside_audio_allowed` is in force); an id is a string or an integer."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(
            f"dataset folder {str(folder)!r}: expected a folder with questions.jsonl, "
            f"found {'a file' if folder.exists() else 'nothing at that path'}"
        )
    qfile = folder / "questions.jsonl"
    if not qfile.is_file():
        found = {"a directory": "a directory of that name", "nothing": "none"}.get(file_kind(qfile), file_kind(qfile))
        raise DatasetError(f"dataset folder {str(folder)!r}: expected a questions.jsonl file, found {found}")
    text = _read_text(qfile, "a JSONL file (one JSON object a line)")
    items, wheres = [], []
    # split on "\n" only: str.splitlines would also split on U+2028 etc., which JSON strings may hold
    for i, line in enumerate(text.split("\n")):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"{qfile} line {i + 1}: expected a JSON object, found invalid JSON at column {exc.colno} ({exc.msg})"
            ) from None
        except RecursionError:
            raise DatasetError(f"{qfile} line {i + 1}: expected a JSON object, found nesting too deep to parse") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{qfile} line {i + 1}: expected a JSON object, found {_kind(row)}")
        if row.get("id") is None or row.get("id") == "":
            row["id"] = f"{folder.name}-{i}"
        items.append(_row_item(row, where=f"{qfile.name} line {i + 1}", audio_key="audio", root=folder,
                               allow_outside_audio=allow_outside_audio))
        wheres.append(f"line {i + 1}")
    if not items:
        raise DatasetError(f"{qfile}: expected at least one question, found none")
    _check_unique_ids(items, wheres, str(qfile))
    return items


def load_cafe(n: int, *, seed: int = 7, tiers: tuple[str, ...] | None = None) -> list[Item]:
    bad = [t for t in (tiers or ()) if t not in TIERS]
    if bad or (tiers is not None and not tiers):
        raise DatasetError(f"dataset 'cafe:{','.join(tiers or ())}': expected tiers among {list(TIERS)} after 'cafe:', "
                           f"found {bad or 'none'}")
    return make_items(n, seed=seed, tiers=tiers or TIERS)


def load_cue_dataset(spec: str | DataSpec, *, n: int | None = None) -> list[Item]:
    """``cafe-<condition>[:<split>]``: cafe items with a text cue (see :mod:`auralens.interp.cafe.cues`).

    The split (calibration | dev | test, default test) is a fixed seed range: the same ids for
    every model and every stage; the three conditions share their underlying items."""
    ds = DataSpec.parse(spec)
    return cue_items(ds.name.removeprefix("cafe-"), ds.effective_split or "test", 300 if n is None else n,
                     where=f"dataset {str(spec)!r}")


def load_dataset(spec: str | DataSpec, *, n: int | None = None, seed: int = 7,
                 audio_root: str | None = None, allow_outside_audio: bool | None = None) -> list[Item]:
    """``cafe`` (or ``cafe:perception,temporal``), ``cafe-neutral|congruent|conflict[:split]``,
    an MMAU/MMAR JSON file, or a folder (:class:`~auralens.interp.dataspec.DataSpec`).

    A file dataset (JSON or folder) takes an optional split, ``path:calibration|dev|test``, and
    an optional split seed, ``path:dev@1`` (default 0): the items whose :func:`file_split` is
    that split, in file order.  ``n`` draws a seeded sample of ``n`` items stratified by task /
    category (:func:`sample_items`, kept in file order), not the first ``n``.  The calibration / dev
    / test shares are 20% / 20% / 60%; the same seed gives the same ids on every machine.  A
    DataSpec's own data seed wins over ``seed``.

    A file dataset's audio must resolve inside its folder (:func:`dataset_root`, symlinks
    resolved) unless ``allow_outside_audio`` (default: whether :func:`outside_audio_allowed`,
    the CLI's ``--allow-outside-audio``, is in force)."""
    ds = spec if isinstance(spec, DataSpec) else DataSpec.parse(spec, seed=seed)
    if ds.kind == "cue":
        return load_cue_dataset(ds, n=n)
    if ds.kind == "cafe":
        return load_cafe(n or 300, seed=ds.seed, tiers=ds.tiers)
    if ds.split_name is None and ds.split_seed:
        raise DatasetError(
            f"dataset {str(spec)!r}: expected a split after the path ({ds.name!r}:calibration|dev|test@{ds.split_seed}), "
            "found only a split seed")
    if ds.split_name is not None:
        whole = load_dataset(DataSpec(kind="file", name=ds.name), audio_root=audio_root,
                             allow_outside_audio=allow_outside_audio)
        items = [it for it in whole if file_split(it.item_id, ds.split_seed) == ds.split_name]
        if not items:
            raise DatasetError(f"dataset {str(spec)!r}: expected at least one item in split {ds.split_name!r}, "
                               "found none")
        return sample_items(items, n, seed=ds.seed)
    p = Path(ds.name)
    if p.is_dir():
        items = load_folder(p, allow_outside_audio=allow_outside_audio)
    elif p.suffix == ".json":
        rows = _read_json_list(p)
        audio_key = "audio_path" if isinstance(rows[0], dict) and "audio_path" in rows[0] else "audio_id"
        items = _items_from_rows(rows, p, audio_root, audio_key, allow_outside_audio)
    else:
        found = "nothing at that path" if not p.exists() else f"a {p.suffix or 'suffix-less'} file"
        raise DatasetError(
            f"dataset {str(spec)!r}: expected 'cafe', an MMAU/MMAR .json file or a folder with questions.jsonl, "
            f"found {found}"
        )
    return sample_items(items, n, seed=ds.seed)


def stratum(item: Item) -> str:
    """The key ``--n`` sampling stratifies by: the item's task and category (MMAU: sound /
    music / speech and their categories; spoken items: word / number / sentence), else its tier."""
    return f"{item.task}/{item.category}" if item.task or item.category else item.tier


def sample_items(items: list[Item], n: int | None, *, seed: int = 7) -> list[Item]:
    """``n`` of ``items`` drawn at random (seeded), stratified by :func:`stratum`, in file order.

    Each stratum gets its proportional share (largest remainders first, ties to the larger
    stratum, then the earlier one in the file), so the first rows of a file sorted by task do not
    decide what a small run measures.  ``n`` None or >= ``len(items)``: all items, unchanged.
    Written by hand: scikit-learn's stratified splitters refuse strata of one item."""
    if not n or n >= len(items):
        return list(items)
    keys = [stratum(it) for it in items]
    order = list(dict.fromkeys(keys))
    sizes = np.array([keys.count(k) for k in order])
    quota = sizes * n / len(items)
    take = np.floor(quota).astype(int)
    rest = n - int(take.sum())
    by_rest = sorted(range(len(order)), key=lambda i: (-(quota[i] - take[i]), -sizes[i], i))
    for i in by_rest[:rest]:
        take[i] += 1
    rng = np.random.default_rng(seed)
    keep: set[int] = set()
    for k, t in zip(order, take):
        idx = [i for i, key in enumerate(keys) if key == k]
        keep.update(int(i) for i in rng.permutation(idx)[:t])
    return [it for i, it in enumerate(items) if i in keep]


def fingerprint(items: list[Item]) -> str:
    """A stable sha256 of what the items ask (ids, questions, choices, answers)."""

    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps([it.item_id, it.question, list(it.choices), it.answer]).encode())
    return h.hexdigest()


def _is_synthetic(item: Item) -> bool:
    """Audio generated in memory (cafe scenes), not read from a file."""
    return item.audio.startswith("cafe:")


def check_audio_files(items: list[Item]) -> None:
    """Check every item's audio file from its header alone (nothing is decoded).

    Synthetic audio (``cafe:<seed>`` items) is skipped.  Raises one :class:`AudioInputError`
    listing every bad item: its id, the file, what was expected and what was found.  Meant to run
    before a stage creates anything, so a bad file never leaves a half-written run behind."""

    bad: list[str] = []
    checked: dict[str, str | None] = {}  # a file shared by several items is opened once
    for it in items:
        if _is_synthetic(it):
            continue
        if it.audio not in checked:
            try:
                check_audio_header(it.audio)
                checked[it.audio] = None
            except AudioInputError as exc:
                checked[it.audio] = str(exc)
        if checked[it.audio] is not None:
            bad.append(f"item {it.item_id!r}: {checked[it.audio]}")
    if bad:
        shown = bad[:20]
        more = f"\n  ... and {len(bad) - len(shown)} more" if len(bad) > len(shown) else ""
        raise AudioInputError(
            f"{len(bad)} of {len(items)} items have unusable audio:\n  " + "\n  ".join(shown) + more
        )
