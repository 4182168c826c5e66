"""The ``auralens`` command line (typer).  Heavy imports happen inside commands, after parsing."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    name="auralens",
    help="Is the model still listening while it reasons? Audio attention yield, perception decay, "
    "probes and audio-minus-silence steering for audio-language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
micro_app = typer.Typer(help="Train or fine-tune the embedded `micro` model.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks (wall-time ratios in one process).", no_args_is_help=True)
app.add_typer(micro_app, name="micro")
app.add_typer(bench_app, name="bench")

ModelOpt = typer.Option("micro", "--model", "-m", help="'micro', a Hugging Face id or a local checkpoint folder.")
DataOpt = typer.Option("cafe", "--data", "-d", help="'cafe', an MMAU/MMAR JSON file, or a folder with questions.jsonl.")
DtypeOpt = typer.Option("auto", "--dtype", help="auto | float32 | bfloat16 | float16")


def _command_line() -> str:
    return "auralens " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _fail(exc: Exception) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(2)


def _load(model: str, dtype: str = "auto", device: Optional[str] = None):
    from interp.loading import load_model

    return load_model(model, dtype=dtype, device=device)


@app.command("eval")
def eval_cmd(
    model: str = ModelOpt,
    data: str = DataOpt,
    n: int = typer.Option(300, "--n", help="Number of items."),
    formats: str = typer.Option("direct,cot,structured", help="Comma-separated answer formats."),
    silence: bool = typer.Option(True, "--silence/--no-silence", help="Also evaluate with the audio replaced by silence."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default: runs/eval-<model>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out."),
    as_json: bool = typer.Option(False, "--json", help="Print accuracy per tier and format as JSON."),
    batch_size: int = typer.Option(32, "--batch-size"),
    max_new_tokens: int = typer.Option(96, "--max-new-tokens"),
    seed: int = typer.Option(7, "--seed", help="Data seed (cafe)."),
    dtype: str = DtypeOpt,
) -> None:
    """Accuracy per tier and answer format, with the audio and with silence."""
    from auralens.stages import stage_eval

    try:
        res = stage_eval(
            model=model, data=data, n=n, formats=tuple(formats.split(",")), silence=silence,
            out=out or Path("runs") / f"eval-{Path(model).name}", resume=resume, batch_size=batch_size,
            max_new_tokens=max_new_tokens, seed=seed, dtype=dtype, command=_command_line(), quiet=as_json,
        )
    except Exception as exc:  # noqa: BLE001 - all errors reach the user as one clear line
        from interp.errors import AuralensError

        if isinstance(exc, AuralensError):
            _fail(exc)
        raise
    if as_json:
        typer.echo(json.dumps(res, indent=2))


@micro_app.command("train")
def micro_train(
    out: Path = typer.Option(None, "--out", help="Folder for the weights (default: the embedded micro folder)."),
    steps: int = typer.Option(3000, "--steps"),
    minutes: float = typer.Option(19.0, "--minutes", help="Wall-clock budget; training stops and saves when reached."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train `micro` from scratch on cafe (seeded; <= 20 minutes on 2 CPU cores)."""
    from interp.micro import BASE_DIR
    from interp.micro.train import TrainConfig, train

    train(out or BASE_DIR, TrainConfig(steps=steps, max_minutes=minutes, seed=seed))
    typer.echo(f"saved micro to {out or BASE_DIR}")


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out"),
    n: int = typer.Option(60, "--n", help="Items per stage."),
    resume: bool = typer.Option(False, "--resume"),
) -> None:
    """Run every stage on the embedded `micro` model and print the summaries (<= 5 min on 2 cores)."""
    from auralens.demo import run_demo

    try:
        run_demo(out=out, n=n, resume=resume, command=_command_line())
    except Exception as exc:  # noqa: BLE001
        from interp.errors import AuralensError

        if isinstance(exc, AuralensError):
            _fail(exc)
        raise


def main() -> None:
    app()


if __name__ == "__main__":
    main()
