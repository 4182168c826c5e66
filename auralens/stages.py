"""Experiment stages shared by the CLI, the demo and the notebooks: each writes a run folder.

Every stage has the same skeleton (:func:`interp.runs.open_run`): validate its options, load the
items and check every audio header, check the run folder would accept the run, check and load
the model, and only then create the folder and generate rows; ``finish()`` marks it complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from interp.record import stage_record  # noqa: F401  (re-exported: the perception-decay stage)


def _manifest(command: str, model: str, data: str, seed: int, n: int | None, config: dict[str, Any]) -> dict[str, Any]:
    return {"command": command.split(" --resume")[0], "model": model, "data": data, "seed": seed, "n": n, "config": config}


def stage_eval(
    *,
    model: str,
    data: str,
    n: int,
    formats: tuple[str, ...] = ("direct", "cot", "structured"),
    silence: bool = True,
    out: Path,
    resume: bool = False,
    batch_size: int = 32,
    max_new_tokens: int = 96,
    seed: int = 7,
    dtype: str = "auto",
    command: str = "auralens eval",
    quiet: bool = False,
    lm=None,
) -> dict[str, Any]:
    from interp.evaluate import run_eval, summarize, summary_json
    from interp.generation import GenerationConfig
    from interp.runs import RowLog, check_dtype, check_formats, check_int, load_items, open_run
    from interp.schemas import ACCURACY, EVAL_ITEMS

    # 1. validate: options, items, every audio header
    formats = check_formats(formats)
    check_int("batch_size", batch_size)
    check_int("max_new_tokens", max_new_tokens)
    check_dtype(dtype)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
    items = load_items(data, n=n, seed=seed)
    config = {"formats": list(formats), "silence": silence, "max_new_tokens": max_new_tokens, "dtype": dtype}
    # 2-4. folder check, model, folder
    run, lm = open_run(out, manifest=_manifest("auralens eval", model, data, seed, n, config), items=items,
                       resume=resume, lm=lm, model=model, dtype=dtype)
    # 5. rows
    log = RowLog(run, "items.parquet", key="row_id", resume=resume)
    df = run_eval(
        lm, items, formats=formats, audio_modes=("real", "silence") if silence else ("real",),
        cfg=cfg, log=log, progress=not quiet,
    )
    EVAL_ITEMS.check(df)  # items.parquet, written row by row by the log
    ACCURACY.write(run, summarize(df))
    res = summary_json(df)
    run.mark_stage("eval", n_rows=len(df))
    run.finish()
    return {"model": model, "data": data, "n": len(items), "run": str(out), "accuracy": res}
