"""The record stage (``auralens record``), the perception-decay experiment: generate with the
yield recorder, write each item's yields, then rank listening heads, segment reasoning steps and
write the decay tables (:func:`auralens.interp.record_analysis.analyse_record`).

Run folder layout (read by the dashboard and the notebooks):
- ``items.parquet``: one row per item (prediction, correctness, n_tokens, n_steps, error_type,
  audio_path: relative to the run folder for cafe clips written there, else relative to the
  manifest's ``dataset_root``, ...)
- ``yields/{item_index:05d}.safetensors``: ``yield`` [n_tokens, layers, heads] (row t: yield while
  producing generated token t; row 0 at the last prompt token), ``steps`` and ``token_ids``
  [n_tokens], ``time_bins`` [n_tokens, layers, heads, K], ``silence_last`` [layers, heads]
  (last-prompt-token yield with the audio replaced by silence), optional ``prompt_yield``
  [prompt_len, layers, heads]; metadata ``item_id``, ``text``, ``tokens`` (JSON)
- ``decay.parquet``, ``decay_summary.parquet``, ``heads.parquet``, ``claims.parquet``,
  ``claim_accuracy.parquet`` (columns: :mod:`auralens.interp.schemas`, checked on write), ``decay.html``
  (:func:`auralens.interp.figures.decay_curves`)
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from auralens.interp.audio import check_audio_header, item_audio
from auralens.interp.capture import stop_ids, trim_at_stop
from auralens.interp.dataspec import DataSpec
from auralens.interp.distributed import on_main
from auralens.interp.errors import ConfigError
from auralens.interp.generation import cast_features, model_inputs, score
from auralens.interp.record_analysis import analyse_record
from auralens.interp.runs import (
    RowLog,
    RunFolder,
    atomic_write_bytes,
    check_dtype,
    check_formats,
    check_int,
    check_n,
    fill_rows,
    load_items,
    open_run,
    relative_audio,
)
from auralens.interp.schemas import HEADS
from auralens.interp.stage_config import DTYPE_HELP, RESUME_HELP, ModelDataConfig, option, takes_config
from auralens.interp.steps import token_steps
from auralens.interp.tokenizer import clean_decoded


def write_wav(run, name: str, wave: np.ndarray, sr: int) -> str:
    """Write ``wave`` (16-bit PCM at ``sr`` Hz) to ``run``'s file ``name``; returns ``name``."""

    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="WAV", subtype="PCM_16")
    atomic_write_bytes(run.file(name), buf.getvalue())
    return name


def record_batch(lm, chunk, fmt: str, *, max_new_tokens: int, time_bins: int, all_prompt: bool = False):
    """Generate for a batch of items with the recorder on; also the silence prefill yields.

    Returns (new token ids [B, N], AttentionYield, silence last-row yields [B, L, H], prompt_len)."""
    import torch

    from auralens.interp.attention_yield import YieldRecorder, audio_mask_from_ids

    batch = cast_features(lm, model_inputs(lm, chunk, fmt, "real"))
    rec = YieldRecorder(
        lm.model, lm.arch, audio_mask_from_ids(batch["input_ids"], lm.arch),
        rows="all_prompt" if all_prompt else "last_and_generated", time_bins=time_bins,
    )
    with torch.inference_mode(), rec:
        out = lm.model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id,
            **lm.generate_kwargs,
        )
    sbatch = cast_features(lm, model_inputs(lm, chunk, fmt, "silence"))
    srec = YieldRecorder(lm.model, lm.arch, audio_mask_from_ids(sbatch["input_ids"], lm.arch))
    with torch.inference_mode(), srec:
        lm.model(**sbatch)
    prompt_len = batch["input_ids"].shape[1]
    return out[:, prompt_len:], rec.result, srec.result.total[:, 0], prompt_len


@dataclass(frozen=True, kw_only=True)
class RecordConfig(ModelDataConfig):
    """``auralens record``: per-head audio yield across reasoning steps (perception decay)."""

    COMMAND = "auralens record"

    n: int = option(60, help="Number of items (>= 1).")
    fmt: str = option("cot", identity="format", flag="--format", help="direct | cot | structured")
    out: Path = option(Path("runs/record"), identity=False, help="Run folder.")
    max_new_tokens: int = option(128, help="Generated tokens per answer (>= 1).")
    time_bins: int = option(8, help="Split each head's audio yield over K bins of the clip.")
    top_k: int = option(8, help="Number of listening heads in the top-k aggregate.")
    all_prompt: bool = option(False, help="Also record every prompt position (heatmaps).")
    batch_size: int = option(16, identity=False, help="Items per generation batch (>= 1).")
    resume: bool = option(False, identity=False,
                          help=RESUME_HELP)
    seed: int = option(7, help="Data seed (cafe items, bootstrap and controls).")
    n_boot: int = option(1000, identity=False, help="Bootstrap resamples of the confidence intervals (>= 1).")
    dtype: str = option("auto", help=DTYPE_HELP)
    heads_from: str = option("", identity=False,
                             help="Rank the listening heads on another run: a record run folder (its heads.parquet) "
                                  "or a heads.parquet file, e.g. of a calibration split.")
    calibration: str = option("auto", identity=False,
                              help="Dataset to rank the heads on, recorded first into <out>/calibration: 'auto' "
                                   "(<D>:calibration when measuring a cafe cue dataset's or a file dataset's dev/test split, "
                                   "same split seed; else none: a whole file or plain cafe ranks on its own items), "
                                   "'none' (rank on the measured items: biased) or a dataset spec.")
    n_cal: int = option(0, identity=False, help="Calibration items (0: as many as --n).")
    command: str = option("auralens record", identity=False, cli=False, help="The command line that started the run.")

    def __post_init__(self) -> None:
        if not isinstance(self.fmt, str):
            raise ConfigError(f"format: expected one answer format, found {self.fmt!r}")
        check_formats(self.fmt, "format")
        check_n(self.n)
        for name in ("top_k", "time_bins", "max_new_tokens", "batch_size", "n_boot"):
            check_int(name, getattr(self, name))
        check_dtype(self.dtype)
        if not isinstance(self.n_cal, int) or isinstance(self.n_cal, bool) or self.n_cal < 0:
            raise ConfigError(f"n_cal: expected an integer >= 0 (0: as many as n), found {self.n_cal!r}")
        if self.heads_from and self.calibration not in ("auto", "none"):
            raise ConfigError(f"heads_from / calibration: expected one source of heads, found both "
                              f"{self.heads_from!r} and {self.calibration!r}")
        self._set("out", Path(self.out))

    def calibration_data(self) -> str | None:
        """The dataset the heads are ranked on when recorded here (None: no calibration run)."""
        if self.heads_from or self.calibration == "none":
            return None
        if self.calibration != "auto":
            return self.calibration
        ds = DataSpec.parse(self.data, seed=self.seed)
        # a cue dataset's dev/test split, or a file dataset's: rank on its calibration split (same
        # split seed); plain cafe and a whole file rank on the measured items ("same items (biased)")
        if ds.effective_split in ("dev", "test"):
            return str(ds.split("calibration"))
        return None

    def heads_source(self) -> str:
        """What ranks the heads, for the manifest: ``run:<path>``, ``calibration:<data>:<n>``
        or ``same items``."""
        if self.heads_from:
            return f"run:{self.heads_from}"
        cal = self.calibration_data()
        return f"calibration:{cal}:{self.n_cal or self.n}" if cal else "same items"


def check_time_bins(lm, items, cfg: RecordConfig) -> None:
    """The shortest clip has at least ``time_bins`` audio tokens (the recorder splits each head's
    yield over that many bins of the clip): checked on that one item, with the model loaded but
    before the run folder exists, so a dataset of short clips fails with nothing written."""
    from auralens.interp.attention_yield import audio_mask_from_ids

    def seconds(it) -> float:
        return 0.0 if it.audio.startswith("cafe:") else check_audio_header(it.audio).seconds

    files = [it for it in items if not it.audio.startswith("cafe:")]
    shortest = min(files, key=seconds) if files else items[0]
    batch = model_inputs(lm, [shortest], cfg.fmt, "real")
    n = int(audio_mask_from_ids(batch["input_ids"], lm.arch).sum())
    if n < cfg.time_bins:
        length = f"{seconds(shortest):.2f} s, " if files else ""
        raise ConfigError(f"time_bins: expected at most as many bins as the shortest clip has audio tokens, found "
                          f"time_bins={cfg.time_bins} and {n} audio tokens in item {shortest.item_id!r} ({length}"
                          f"{lm.model_id}); pass --time-bins {max(n, 1)} or fewer")


def record_item(run, lm, idx: int, it, b: int, batch: tuple, *, fmt: str, all_prompt: bool, eos, sr: int,
                dataset_root: str | None = None) -> dict[str, Any]:
    """Write item ``it``'s yields file (and, for cafe audio, its wav) from row ``b`` of a
    :func:`record_batch` result ``batch``; returns its ``items.parquet`` row.  A file dataset's
    ``audio_path`` is stored relative to ``dataset_root`` (the manifest's ``dataset_root``), never
    as an absolute path, unless the file lies outside it (``--allow-outside-audio``)."""
    import torch

    new, res, silence_last, _prompt_len = batch
    n_tok = len(trim_at_stop(new[b], eos, inclusive=True, pad_id=lm.tokenizer.pad_token_id))
    ids = new[b, :n_tok].cpu()
    steps, _ = token_steps(ids.tolist(), lm.tokenizer)
    text = clean_decoded(lm.tokenizer.decode(ids, skip_special_tokens=True))
    tensors = {
        "yield": res.total[b, :n_tok].float().cpu(),
        "time_bins": res.binned[b, :n_tok].float().cpu(),
        "steps": torch.as_tensor(steps, dtype=torch.int64),
        "token_ids": ids.to(torch.int64),
        "silence_last": silence_last[b].float().cpu(),
    }
    if all_prompt:
        tensors["prompt_yield"] = res.prompt_total[b].float().cpu()
    tokens = [lm.tokenizer.decode([t]) for t in ids.tolist()]
    run.write_tensors(f"yields/{idx:05d}.safetensors", tensors,
                      metadata={"item_id": it.item_id, "text": text, "tokens": json.dumps(tokens)})
    if it.audio.startswith("cafe:"):
        audio_path = write_wav(run, f"audio/{idx:05d}.wav", item_audio(it, lm.processor), sr)
    else:
        audio_path = relative_audio(it.audio, dataset_root)
    return {
        "item_index": idx, "item_id": it.item_id, "tier": it.tier, "category": it.category,
        "sub_category": it.sub_category, "format": fmt, "question": it.question, "answer": it.answer,
        "prediction": text, **score(it, text), "n_tokens": int(n_tok),
        "n_steps": int(steps.max() + 1) if len(steps) else 0, "audio_path": audio_path,
    }


def record_items(run, lm, items, cfg: RecordConfig, *, log: RowLog, quiet: bool = False,
                 around_batch: Callable | None = None) -> None:
    """Generate with the recorder on for every item not yet in ``log`` (batches of
    ``cfg.batch_size``), writing each item's files and row (:func:`record_item`)."""
    eos = stop_ids(lm, pad=False)
    sr = lm.processor.feature_extractor.sampling_rate
    root = run.manifest.get("dataset_root")

    def rows_for(_setting, chunk):
        its = [it for _, it in chunk]
        with around_batch(lm, its) if around_batch is not None else contextlib.nullcontext():
            batch = record_batch(lm, its, cfg.fmt, max_new_tokens=cfg.max_new_tokens, time_bins=cfg.time_bins,
                                 all_prompt=cfg.all_prompt)
        return [record_item(run, lm, idx, it, b, batch, fmt=cfg.fmt, all_prompt=cfg.all_prompt, eos=eos, sr=sr,
                            dataset_root=root)
                for b, (idx, it) in enumerate(chunk)]

    fill_rows([cfg.fmt], list(enumerate(items)), key=lambda pair, _: pair[1].item_id, rows_for=rows_for,
              batch_size=cfg.batch_size, log=log, progress=not quiet, desc="record", unit="item")


def record_calibration(cfg: RecordConfig, run, lm, cal_data: str, *, quiet: bool = False) -> dict[str, Any]:
    """Record ``cal_data`` into ``<run>/calibration`` (same settings, ``n_cal`` or ``n`` items) and
    return its heads (:func:`read_heads_source`)."""
    cal_cfg = dataclasses.replace(cfg, data=cal_data, n=cfg.n_cal or cfg.n, out=Path(run.path) / "calibration",
                                  calibration="none", heads_from="", n_cal=0)
    stage_record(cal_cfg, lm=lm, quiet=quiet)
    return read_heads_source(str(RunFolder.open(cal_cfg.out).path))


@takes_config(RecordConfig)
def stage_record(cfg: RecordConfig, *, lm=None, quiet: bool = False, around_batch=None) -> dict[str, Any]:
    """Record per-head audio yield across reasoning steps; write decay and head tables.

    ``around_batch(lm, items)``: a context manager entered around each batch's generation (e.g.
    steering with a per-input direction of those items, :mod:`auralens.compare`); it is not part
    of the run's identity — the caller names it in ``model``.

    Options (:class:`RecordConfig`), items and audio headers are checked, and the model loaded,
    before the run folder is created (:func:`auralens.interp.runs.open_run`).  Also callable with the
    config's fields as keywords: ``stage_record(model=..., n=..., out=..., lm=...)``."""
    # 1. validate: options (RecordConfig), items, every audio header, the heads' source
    items = load_items(cfg.data, n=cfg.n, seed=cfg.seed)
    ext_heads = read_heads_source(cfg.heads_from) if cfg.heads_from else None
    cal_data = cfg.calibration_data()
    if cal_data:
        load_items(cal_data, n=cfg.n_cal or cfg.n, seed=cfg.seed)  # checked before the folder is made
    # 2-4. folder check, model, folder
    run, lm = open_run(cfg.out, manifest=cfg.manifest(heads_from=cfg.heads_source()), items=items, resume=cfg.resume,
                       lm=lm, model=cfg.model, dtype=cfg.dtype, device_map=cfg.device_map,
                       before_create=lambda m: check_time_bins(m, items, cfg))
    run.update_manifest(architecture=lm.arch.to_dict())
    # 5. rows, then the calibration run that ranks the heads
    log = RowLog(run, "items.parquet", key="item_id", resume=cfg.resume)
    record_items(run, lm, items, cfg, log=log, quiet=quiet, around_batch=around_batch)
    if cal_data:
        ext_heads = record_calibration(cfg, run, lm, cal_data, quiet=quiet)
    heads_info = None if ext_heads is None else {**ext_heads, "source": cfg.heads_source()}

    def finish():  # rank 0 ranks the heads over every item and writes the tables (auralens.interp.distributed)
        summary = analyse_record(run, items, top_k=cfg.top_k, n_boot=cfg.n_boot, seed=cfg.seed, heads_from=heads_info)
        run.mark_stage("record", n_items=len(items))
        run.finish()
        return summary

    return on_main(finish)


def read_heads_source(path: str) -> dict[str, Any]:
    """A heads table ranked elsewhere: ``{"heads": DataFrame, "item_ids": set | None, "data": str | None,
    "path": str}`` from a record run folder (its heads.parquet, items.parquet and manifest) or a
    heads.parquet file (item ids read from the items.parquet beside it, when there is one)."""
    import pandas as pd

    p = Path(path)
    file = p / "heads.parquet" if p.is_dir() else p
    if not file.is_file():
        raise ConfigError(f"heads_from: expected a record run folder with heads.parquet or a heads.parquet file, "
                          f"found {'nothing' if not p.exists() else 'no heads.parquet'} at {str(p)!r}")
    def unreadable(f: Path, what: str, exc: BaseException) -> ConfigError:
        return ConfigError(f"heads_from {str(f)!r}: expected {what}, found a file that does not read "
                           f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})")

    try:
        heads = pd.read_parquet(file)
    except Exception as exc:  # noqa: BLE001 - ArrowInvalid, OSError...: not a usable table
        raise unreadable(file, "a parquet table of listening heads", exc) from None
    missing = [c for c in ("layer", "head", "rank") if c not in heads.columns]
    if missing:
        raise ConfigError(f"heads_from {str(file)!r}: expected the columns of {HEADS.path}, missing {missing}")
    ids, data = None, None
    items_file = file.parent / "items.parquet"
    if items_file.is_file():
        try:
            ids = set(pd.read_parquet(items_file, columns=["item_id"])["item_id"].astype(str))
        except Exception as exc:  # noqa: BLE001 - a damaged table, or one without item_id
            raise unreadable(items_file, "a parquet table with an item_id column", exc) from None
    man = file.parent / "manifest.json"
    if man.is_file():
        try:
            manifest = json.loads(man.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise unreadable(man, "a JSON manifest", exc) from None
        data = manifest.get("data") if isinstance(manifest, dict) else None
    return {"heads": heads, "item_ids": ids, "data": data, "path": str(file)}
