"""The eval stage (``auralens eval``): accuracy of a model on items, per tier and answer format,
with real audio and with silence.

:class:`EvalConfig` holds the stage's options and :func:`stage_eval` runs it into a run folder
(``items.parquet``, one row per item x format x audio mode, and ``accuracy.parquet``; columns:
:data:`auralens.interp.schemas.EVAL_ITEMS`, :data:`auralens.interp.schemas.ACCURACY`);
:func:`run_eval`, :func:`summarize` and :func:`summary_json` are its steps, also used on their own
(e.g. by the organism validator).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auralens.interp.answers import extraction_counts
from auralens.interp.distributed import on_main
from auralens.interp.errors import ConfigError
from auralens.interp.generation import AUDIO_MODES, GenerationConfig, generate_batch, item_row, model_inputs
from auralens.interp.items import Item
from auralens.interp.runs import (
    RowLog,
    atomic_write_with,
    check_dtype,
    check_formats,
    check_int,
    check_n,
    fill_rows,
    load_items,
    open_run,
)
from auralens.interp.schemas import ACCURACY, EVAL_ITEMS
from auralens.interp.stage_config import DTYPE_HELP, RESUME_HELP, ModelDataConfig, option, takes_config
from auralens.interp.stats import accuracy_ci

__all__ = ["EvalConfig", "chance_json", "extraction_json", "run_eval", "stage_eval", "summarize", "summary_json",
           "write_mmau_output"]


def run_eval(
    lm,
    items: Sequence[Item],
    *,
    formats: Sequence[str] = ("direct", "cot", "structured"),
    audio_modes: Sequence[str] = AUDIO_MODES,
    cfg: GenerationConfig = GenerationConfig(),
    log=None,
    progress: bool = True,
):
    """Generate and score every (item, format, audio mode); rows go to ``log`` (a RowLog)
    after each batch, and rows already in it are skipped (resume)."""

    def rows_for(job, chunk):
        fmt, mode = job
        _, texts = generate_batch(lm, model_inputs(lm, chunk, fmt, mode), cfg)
        return [{**item_row(it, fmt, mode, t), "task": it.task, "difficulty": it.difficulty}
                for it, t in zip(chunk, texts)]

    return fill_rows([(f, a) for f in formats for a in audio_modes], items,
                     key=lambda it, job: f"{it.item_id}|{job[0]}|{job[1]}", rows_for=rows_for,
                     batch_size=cfg.batch_size, log=log, progress=progress, desc="eval", unit="item")


def summarize(df, by: Sequence[str] = ("audio", "format", "tier")):
    """Accuracy with its 95% Wilson interval per group."""
    import pandas as pd

    out = []
    for keys, g in df.groupby(list(by), sort=True):
        keys = keys if isinstance(keys, tuple) else (keys,)
        _, lo, hi = accuracy_ci(g["correct"].to_numpy(dtype=float))
        out.append({**dict(zip(by, keys)), "accuracy": float(g["correct"].mean()), "ci_low": float(lo), "ci_high": float(hi), "n": len(g)})
    return pd.DataFrame(out)


def summary_json(df) -> dict[str, Any]:
    """{audio: {format: {tier: accuracy, "all": accuracy}}} plus counts."""
    res: dict[str, Any] = {}
    for (mode, fmt), g in df.groupby(["audio", "format"]):
        d = {tier: round(float(t["correct"].mean()), 4) for tier, t in g.groupby("tier")}
        d["all"] = round(float(g["correct"].mean()), 4)
        res.setdefault(mode, {})[fmt] = d
    for mode, g in df.groupby("audio"):
        res.setdefault(mode, {})["all_formats"] = {
            **{tier: round(float(t["correct"].mean()), 4) for tier, t in g.groupby("tier")},
            "all": round(float(g["correct"].mean()), 4),
        }
    return res


def chance_json(items: Sequence[Item]) -> dict[str, float]:
    """Accuracy of a uniform guess among each item's choices, per tier and over all items (the
    level silence should sit at when a model cannot hear and has no prior)."""
    by: dict[str, list[float]] = {}
    for it in items:
        by.setdefault(it.tier or it.category or "all", []).append(1.0 / len(it.choices))
    out = {t: round(sum(v) / len(v), 4) for t, v in sorted(by.items())}
    out["all"] = round(sum(1.0 / len(it.choices) for it in items) / max(len(items), 1), 4)
    return out


def extraction_json(df) -> dict[str, dict[str, int]]:
    """Per ``audio/format``: how many answers each extraction step resolved
    (:func:`auralens.interp.answers.extraction_counts`); ``none`` = extraction failures, scored wrong."""
    return {f"{mode}/{fmt}": extraction_counts(g["extracted"].tolist())
            for (mode, fmt), g in df.groupby(["audio", "format"], sort=True)}


@dataclass(frozen=True, kw_only=True)
class EvalConfig(ModelDataConfig):
    """``auralens eval``: accuracy per tier and answer format, with the audio and with silence."""

    COMMAND = "auralens eval"

    n: int = option(300, help="Number of items (>= 1).")
    formats: tuple[str, ...] = option(("direct", "cot", "structured"), parse="csv",
                                      help="Comma-separated answer formats.")
    silence: bool = option(True, help="Also evaluate with the audio replaced by silence.")
    out: Path | None = option(None, identity=False, help="Run folder (default: runs/eval-<model>).")
    resume: bool = option(False, identity=False, help=RESUME_HELP)
    batch_size: int = option(32, identity=False, help="Items per generation batch (>= 1).")
    max_new_tokens: int = option(96, help="Generated tokens per answer (>= 1).")
    seed: int = option(7, help="Data seed (cafe).")
    dtype: str = option("auto", help=DTYPE_HELP)
    command: str = option("auralens eval", identity=False, cli=False, help="The command line that started the run.")
    mmau_output: Path | None = option(None, identity=False,
                                      help="Also write MMAU's prediction JSON here (.json): each input row plus "
                                           "model_output (the whole generated text, with the audio, first format) and "
                                           "auralens_extracted (the span auralens scores), for MMAU's evaluation.py.")

    def __post_init__(self) -> None:
        check_n(self.n)
        self._set("formats", check_formats(self.formats))
        check_int("batch_size", self.batch_size)
        check_int("max_new_tokens", self.max_new_tokens)
        check_dtype(self.dtype)
        if self.out is not None:
            self._set("out", Path(self.out))
        if self.mmau_output is not None:
            path = Path(self.mmau_output)
            self._set("mmau_output", path)
            if path.suffix.lower() != ".json" or path.is_dir():
                raise ConfigError(f"--mmau-output {str(path)!r}: expected a .json file path, found "
                                  + ("a directory" if path.is_dir() else f"the extension {path.suffix!r}"))
            if path.parent.exists() and not path.parent.is_dir():
                raise ConfigError(f"--mmau-output {str(path)!r}: expected a folder path, found that "
                                  f"{str(path.parent)!r} is a file")

    @property
    def run_folder(self) -> Path:
        """``out``, or ``runs/eval-<model folder name>``."""
        return self.out if self.out is not None else Path("runs") / f"eval-{Path(self.model).name}"


def write_mmau_output(path: Path, items: Sequence[Item], df, *, fmt: str) -> Path:
    """MMAU's prediction file: each item's input row (question, choices, answer and every other
    key it had, ``meta``) plus ``model_output`` (the whole generated text of format ``fmt`` with
    the audio; MMAU's ``evaluation.py`` string-matches this) and ``auralens_extracted`` (the span
    auralens scores, its ``answer_span``), in item order."""
    real = df[(df["format"] == fmt) & (df["audio"] == "real")].set_index("item_id")
    rows = []
    for it in items:
        r = real.loc[it.item_id]
        rows.append({"question": it.question, "choices": list(it.choices), "answer": it.answer, **it.meta,
                     "model_output": str(r["prediction"]), "auralens_extracted": str(r["answer_span"])})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(path, lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n"))
    return path


@takes_config(EvalConfig)
def stage_eval(cfg: EvalConfig, *, lm=None, quiet: bool = False) -> dict[str, Any]:
    """Generate and score every item x format (x silence) into ``cfg.run_folder``; returns the
    summary (model, data, n, run, accuracy: :func:`summary_json`).

    Options (:class:`EvalConfig`), items and audio headers are checked, and the model loaded,
    before the run folder is created (:func:`auralens.interp.runs.open_run`)."""
    # 1. validate: options (EvalConfig), items, every audio header
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    items = load_items(cfg.data, n=cfg.n, seed=cfg.seed)
    out = cfg.run_folder
    # 2-4. folder check, model, folder
    run, lm = open_run(out, manifest=cfg.manifest(), items=items, resume=cfg.resume, lm=lm, model=cfg.model,
                       dtype=cfg.dtype, device_map=cfg.device_map)
    # 5. rows
    log = RowLog(run, "items.parquet", key="row_id", resume=cfg.resume)
    df = run_eval(
        lm, items, formats=cfg.formats, audio_modes=("real", "silence") if cfg.silence else ("real",),
        cfg=gen, log=log, progress=not quiet,
    )
    EVAL_ITEMS.check(df)  # items.parquet, written row by row by the log

    def finish():  # rank 0 writes the tables (auralens.interp.distributed); every rank returns its summary
        ACCURACY.write(run, summarize(df))
        if cfg.mmau_output is not None:
            write_mmau_output(cfg.mmau_output, items, df, fmt=cfg.formats[0])
        res = summary_json(df)
        run.mark_stage("eval", n_rows=len(df))
        run.finish()
        return {"model": cfg.model, "data": cfg.data, "n": len(items), "run": str(out), "accuracy": res,
                "chance": chance_json(items), "extraction": extraction_json(df)}

    return on_main(finish)
