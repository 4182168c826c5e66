"""The perception-decay experiment: generate with the yield recorder, segment reasoning steps,
rank listening heads, and write the decay tables (``auralens record``).

Run folder layout (read by the dashboard and the notebooks):
- ``items.parquet``: one row per item (prediction, correctness, n_tokens, n_steps, error_type,
  audio_path, ...)
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

from auralens.interp.audio import item_audio
from auralens.interp.capture import stop_ids, trim_at_stop
from auralens.interp.dataspec import DataSpec
from auralens.interp.decay import (
    attribute_errors, claim_accuracy_by_step, claim_accuracy_overall, claim_rows, decay_summary, decay_table,
    depends_on, error_shares, step_types_of,
)
from auralens.interp.distributed import on_main
from auralens.interp.errors import ConfigError
from auralens.interp.figures import decay_curves
from auralens.interp.generation import cast_features, model_inputs, score
from auralens.interp.listening import contrast_scores, correlation_scores, heads_table, top_k as pick_top
from auralens.interp.runs import (
    RowLog, RunFolder, atomic_write_bytes, check_dtype, check_formats, check_int, check_n, fill_rows, load_items,
    open_run,
)
from auralens.interp.schemas import CLAIM_ACCURACY, CLAIMS, DECAY, DECAY_SUMMARY, HEADS, RECORD_ITEMS
from auralens.interp.stage_config import DTYPE_HELP, RESUME_HELP, ModelDataConfig, option, takes_config
from auralens.interp.steps import token_steps
from auralens.interp.tokenizer import clean_decoded


def write_wav(run, name: str, wave: np.ndarray, sr: int) -> str:
    """Write ``wave`` (16-bit PCM at ``sr`` Hz) to ``run``'s file ``name``; returns ``name``."""
    import soundfile as sf

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


def record_item(run, lm, idx: int, it, b: int, batch: tuple, *, fmt: str, all_prompt: bool, eos, sr: int) -> dict[str, Any]:
    """Write item ``it``'s yields file (and, for cafe audio, its wav) from row ``b`` of a
    :func:`record_batch` result ``batch``; returns its ``items.parquet`` row."""
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
        audio_path = it.audio
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

    def rows_for(_setting, chunk):
        its = [it for _, it in chunk]
        with around_batch(lm, its) if around_batch is not None else contextlib.nullcontext():
            batch = record_batch(lm, its, cfg.fmt, max_new_tokens=cfg.max_new_tokens, time_bins=cfg.time_bins,
                                 all_prompt=cfg.all_prompt)
        return [record_item(run, lm, idx, it, b, batch, fmt=cfg.fmt, all_prompt=cfg.all_prompt, eos=eos, sr=sr)
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
                       lm=lm, model=cfg.model, dtype=cfg.dtype, device_map=cfg.device_map)
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
    heads = pd.read_parquet(file)
    missing = [c for c in ("layer", "head", "rank") if c not in heads.columns]
    if missing:
        raise ConfigError(f"heads_from {str(file)!r}: expected the columns of {HEADS.path}, missing {missing}")
    ids, data = None, None
    items_file = file.parent / "items.parquet"
    if items_file.is_file():
        ids = set(pd.read_parquet(items_file, columns=["item_id"])["item_id"].astype(str))
    man = file.parent / "manifest.json"
    if man.is_file():
        data = json.loads(man.read_text()).get("data")
    return {"heads": heads, "item_ids": ids, "data": data, "path": str(file)}


def heads_selection(measured_ids, ranked_ids) -> str:
    """How the heads were selected relative to the measured items."""
    if ranked_ids is None:
        return "unknown items (a heads table without its items)"
    shared = len(set(measured_ids) & set(ranked_ids))
    if shared == 0:
        return "calibration items (disjoint)"
    if set(measured_ids) <= set(ranked_ids):
        return "same items (biased)"
    return f"overlapping items (biased: {shared} of {len(set(measured_ids))} measured items ranked the heads)"


def load_yields(run, df) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    """(yields per item, steps per item, last-prompt yields [items, L, H], silence [items, L, H])."""
    ys, ss, last, sil = [], [], [], []
    for idx in df["item_index"]:
        t = run.read_tensors(f"yields/{int(idx):05d}.safetensors", framework="np")
        ys.append(t["yield"])
        ss.append(t["steps"])
        last.append(t["yield"][0])
        sil.append(t["silence_last"])
    return ys, ss, np.stack(last), np.stack(sil)


def load_step_types(run, df, steps) -> list[np.ndarray]:
    """Per item, per token: the type of its step (:func:`auralens.interp.decay.step_types_of`)."""
    from safetensors import safe_open

    out = []
    for idx, s in zip(df["item_index"], steps):
        with safe_open(str(run.file(f"yields/{int(idx):05d}.safetensors")), "np") as f:
            text = (f.metadata() or {}).get("text", "")
        out.append(step_types_of(text, s))
    return out


def external_heads(heads_from: dict[str, Any], shape: tuple[int, int]):
    """The heads table of ``heads_from`` (:func:`read_heads_source`) checked against a model of
    ``shape`` (layers, heads), with exactly the columns of :data:`~auralens.interp.schemas.HEADS`
    (NaN where it lacks one), sorted by rank."""
    L, H = shape
    ext = heads_from["heads"]
    if len(ext) and (int(ext["layer"].max()) >= L or int(ext["head"].max()) >= H):
        raise ConfigError(f"heads_from {heads_from.get('path')!r}: expected heads of a {L}x{H} model, found layer "
                          f"{int(ext['layer'].max())} / head {int(ext['head'].max())}")
    heads = ext[[c for c in HEADS.names if c in ext.columns]].copy()
    for c in HEADS.names:
        if c not in heads.columns:
            heads[c] = np.nan
    return heads[list(HEADS.names)].sort_values("rank").reset_index(drop=True)


def rank_heads(df, last: np.ndarray, sil: np.ndarray, heads_from: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
    """``(heads table, provenance)``: the heads ranked on these items (listening signals of the
    last-prompt yields ``last`` against correctness and the silence yields ``sil``), or taken from
    ``heads_from``; the provenance (the manifest's ``heads``) says which items ranked them."""
    # ranked here even with heads_from: the same checks of the yields in both cases
    # (correlation undefined (NaN) when every answer is right or every answer is wrong: the column stays)
    corr = correlation_scores(last, df["correct"].to_numpy())
    contrast, dz = contrast_scores(last, sil)
    heads = heads_table(correlation=corr, contrast=contrast, contrast_dz=dz, mean_yield=last.mean(0))
    measured = [str(i) for i in df["item_id"]]
    if heads_from is None:
        return heads, {"heads_selection": "same items (biased)", "heads_source": "same items",
                       "heads_ranked_on": "the measured items", "heads_ranked_on_items": len(measured)}
    heads = external_heads(heads_from, last.shape[1:])
    ids = heads_from.get("item_ids")
    return heads, {"heads_selection": heads_selection(measured, ids),
                   "heads_source": heads_from.get("source", "same items"),
                   "heads_ranked_on": heads_from.get("data") or "the measured items",
                   "heads_ranked_on_items": len(ids) if ids is not None else None}


def claim_tables(run, df, items, *, n_boot: int, seed: int):
    """Write ``claims.parquet``, ``claim_accuracy.parquet`` and ``items.parquet`` (with each wrong
    answer's error type); returns ``(claims, claim accuracy by step, items)``."""
    by_id = {it.item_id: it for it in items}
    claims = []
    for r in df.itertuples():
        it = by_id.get(r.item_id)
        if it is not None and it.scene:
            claims += claim_rows(r.item_id, r.prediction, it.scene)
    claims_df = CLAIMS.frame(claims)
    CLAIMS.write(run, claims_df)
    claim_acc = claim_accuracy_by_step(claims_df, n_boot=n_boot, seed=seed)
    CLAIM_ACCURACY.write(run, claim_acc)
    depends = {i: depends_on(by_id[i]) for i in df["item_id"] if i in by_id}
    df = attribute_errors(df, claims_df, depends)
    RECORD_ITEMS.write(run, df)
    return claims_df, claim_acc, df


def decay_curve(decay, group: str) -> list[dict[str, Any]]:
    """The decay table's by-step curve of ``group`` as JSON rows (rounded to 4 places)."""
    d = decay[(decay.group == group) & (decay.axis == "step")].sort_values("step")
    return [{"step": int(r.step), "mean_yield": round(float(r.mean_yield), 4), "ci_low": round(float(r.ci_low), 4),
             "ci_high": round(float(r.ci_high), 4), "n": int(r.n)} for r in d.itertuples()]


def decay_slope(summ, group: str) -> dict[str, Any]:
    """The decay summary's by-step slope and last/first ratio of ``group`` (with CIs, rounded to
    5 places); empty when the summary has no such row."""
    s = summ[(summ.group == group) & (summ.axis == "step")]
    if not len(s):
        return {}
    r = s.iloc[0]
    out = {"slope": float(r.slope), "slope_ci": [float(r.slope_ci_low), float(r.slope_ci_high)],
           "last_first_ratio": float(r.last_first_ratio),
           "ratio_ci": [float(r.ratio_ci_low), float(r.ratio_ci_high)], "n_steps": int(r.n_steps),
           "n_items": int(r.n_items)}
    return {k: ([round(x, 5) for x in v] if isinstance(v, list) else round(v, 5) if isinstance(v, float) else v)
            for k, v in out.items()}


def record_summary(run, df, *, decay, summ, top, ranked_by: dict[str, Any], claims_df, claim_acc,
                   n_boot: int, seed: int) -> dict[str, Any]:
    """The record stage's result: accuracy, the heads' provenance and top heads, the decay curves
    and slopes (all, top-k, by step type, items reaching the last step), claim accuracy and the
    error shares."""
    reach = decay[(decay.group == "all:reach_last") & (decay.axis == "step")]
    wrong = int((~df["correct"].astype(bool)).sum())
    return {
        "run": str(run.path), "n": len(df), "accuracy": round(float(df["correct"].mean()), 4),
        **ranked_by,
        "top_heads": [list(h) for h in top], "topk_curve": decay_curve(decay, "topk"),
        "all_curve": decay_curve(decay, "all"),
        "topk_decay": decay_slope(summ, "topk"), "all_decay": decay_slope(summ, "all"),
        "decay_by_step_type": {g: decay_slope(summ, g)
                               for g in ("all:claim", "all:reasoning", "topk:claim", "topk:reasoning")},
        "decay_reach_last": {"s_max": int(reach.step.max()) if len(reach) else None,
                             "all": decay_slope(summ, "all:reach_last"), "topk": decay_slope(summ, "topk:reach_last")},
        "claim_accuracy": {k: (round(v, 4) if isinstance(v, float) else v)
                           for k, v in claim_accuracy_overall(claims_df, n_boot=n_boot, seed=seed).items()},
        "claim_accuracy_by_step": claim_acc.round(4).to_dict("records"),
        "error_shares": error_shares(df), "error_shares_of": "wrong answers", "n_wrong": wrong,
        "perception_error_rule": "a wrong claim about a fact the question depends on (auralens.interp.decay.depends_on)",
    }


def analyse_record(run, items, *, top_k: int = 8, n_boot: int = 1000, seed: int = 0,
                   heads_from: dict[str, Any] | None = None) -> dict[str, Any]:
    """Heads, decay and outcome tables from the per-item files already in ``run``.

    ``heads_from`` (:func:`read_heads_source`, plus ``source``): rank the heads there (e.g. on a
    calibration split) instead of on these items; the summary's ``heads_selection`` says which
    items ranked them (``"same items (biased)"`` without it)."""
    df = run.read_table("items.parquet").sort_values("item_index").reset_index(drop=True)
    ys, ss, last, sil = load_yields(run, df)
    heads, ranked_by = rank_heads(df, last, sil, heads_from)
    HEADS.write(run, heads)
    run.update_manifest(heads=ranked_by)
    top = pick_top(heads, min(top_k, len(heads)))
    types = load_step_types(run, df, ss)
    decay, per_item = decay_table(ys, ss, top_heads=top, n_boot=n_boot, seed=seed, step_types=types,
                                  return_per_item=True)
    DECAY.write(run, decay)
    summ = decay_summary(decay, per_item=per_item, n_boot=n_boot, seed=seed)
    DECAY_SUMMARY.write(run, summ)
    claims_df, claim_acc, df = claim_tables(run, df, items, n_boot=n_boot, seed=seed)
    run.write_figure("decay.html", decay_curves(decay))
    return record_summary(run, df, decay=decay, summ=summ, top=top, ranked_by=ranked_by, claims_df=claims_df,
                          claim_acc=claim_acc, n_boot=n_boot, seed=seed)
