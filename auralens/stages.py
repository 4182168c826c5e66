"""Experiment stages shared by the CLI, the demo and the notebooks: each writes a run folder."""

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
    from interp.datasets import fingerprint, load_dataset
    from interp.evaluate import run_eval, summarize, summary_json
    from interp.generation import GenerationConfig
    from interp.loading import load_model
    from interp.runs import RowLog, RunFolder

    items = load_dataset(data, n=n, seed=seed)
    config = {"formats": list(formats), "silence": silence, "max_new_tokens": max_new_tokens, "dtype": dtype}
    run = RunFolder.create(
        out, manifest={**_manifest("auralens eval", model, data, seed, n, config), "data_fingerprint": fingerprint(items)},
        resume=resume,
    )
    lm = lm or load_model(model, dtype=dtype)
    log = RowLog(run, "items.parquet", key="row_id", resume=resume)
    df = run_eval(
        lm, items, formats=formats, audio_modes=("real", "silence") if silence else ("real",),
        cfg=GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size), log=log, progress=not quiet,
    )
    run.write_table("accuracy.parquet", summarize(df))
    res = summary_json(df)
    run.mark_stage("eval", n_rows=len(df))
    run.finish()
    return {"model": model, "data": data, "n": len(items), "run": str(out), "accuracy": res}
