"""Experiment stages shared by the CLI, the demo and the notebooks: each writes a run folder.

Every stage has the same skeleton (:func:`auralens.interp.runs.open_run`): validate its options (its
config dataclass, :mod:`auralens.interp.stage_config`), load the items and check every audio header,
check the run folder would accept the run, check and load the model, and only then create the
folder and generate rows; ``finish()`` marks it complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auralens.interp.record import RecordConfig, stage_record  # noqa: F401  (re-exported: the perception-decay stage)
from auralens.interp.stage_config import DTYPE_HELP, RESUME_HELP, ModelDataConfig, option, takes_config



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

    def __post_init__(self) -> None:
        from auralens.interp.runs import check_dtype, check_formats, check_int, check_n

        check_n(self.n)
        self._set("formats", check_formats(self.formats))
        check_int("batch_size", self.batch_size)
        check_int("max_new_tokens", self.max_new_tokens)
        check_dtype(self.dtype)
        if self.out is not None:
            self._set("out", Path(self.out))

    @property
    def run_folder(self) -> Path:
        """``out``, or ``runs/eval-<model folder name>``."""
        return self.out if self.out is not None else Path("runs") / f"eval-{Path(self.model).name}"


@takes_config(EvalConfig)
def stage_eval(cfg: EvalConfig, *, lm=None, quiet: bool = False) -> dict[str, Any]:
    from auralens.interp.evaluate import run_eval, summarize, summary_json
    from auralens.interp.generation import GenerationConfig
    from auralens.interp.runs import RowLog, load_items, open_run
    from auralens.interp.schemas import ACCURACY, EVAL_ITEMS

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
        res = summary_json(df)
        run.mark_stage("eval", n_rows=len(df))
        run.finish()
        return {"model": cfg.model, "data": cfg.data, "n": len(items), "run": str(out), "accuracy": res}

    from auralens.interp.distributed import on_main

    return on_main(finish)
