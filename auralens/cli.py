"""The ``auralens`` command line (typer).  Heavy imports happen inside commands, after parsing."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import json as _json
import math
import os
import shlex
import shutil
import sys
import types
import typing
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

# The stages are called through their modules (``record.stage_record``), so a stage replaced in
# its module (a test, a plugin) is the one the command runs.
from auralens import compare, demo as demo_stage
from auralens.bench import bench_gpu, bench_stages, bench_yield, bench_yield_scale, build_7b_layers
from auralens.dashboards import launch
from auralens.dashboards.report import write_report
from auralens.finetuning.config import FinetuneConfig
from auralens.finetuning.recipe import finetune
from auralens.interp import ablation, compat, evaluate, patching, record
from auralens.interp.arch import TABLES, UNSUPPORTED, describe, load_entry_point_tables, load_table_file
from auralens.interp.datasets import OUTSIDE_AUDIO_FLAG, outside_audio_allowed
from auralens.interp.dataspec import MAX_SEED
from auralens.interp.distributed import is_main
from auralens.interp.errors import AuralensError, ConfigError
from auralens.interp.loading import LoadedModel, load_model
from auralens.interp.micro import BASE_DIR, EMBEDDED, FINETUNED_DIR, WEIGHTS_DIR, weights_folder
from auralens.interp.micro.train import TrainConfig, finalize, train
from auralens.interp.runs import check_device_map, check_dtype, check_int, check_model, check_n, dumps_strict
from auralens.interp.smol import TRAINED_DIR
from auralens.interp.smol.assemble import check_parts
from auralens.interp.smol.train import AlignConfig, train_alignment
from auralens.interp.spoken import write_spoken_dataset
from auralens.interp.stage_config import RESUME_HELP
from auralens.organisms import ORGANISMS, RECIPES, train_organism, validate
from auralens.organisms.validate import check_seeds
from auralens.probes import stage as probe_stage
from auralens.steering import stage_eval as steer_eval_stage, stage_fit as steer_fit_stage
from auralens.testing.tiny import build_shaped
from auralens.testing.verified import tested_here

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
smol_app = typer.Typer(help="`smol-audio`: Whisper-base + SmolLM2-135M-Instruct joined by a trained projector.",
                       no_args_is_help=True)
data_app = typer.Typer(help="Write datasets (MMAU-format folders) that every stage reads.", no_args_is_help=True)
app.add_typer(micro_app, name="micro")
app.add_typer(smol_app, name="smol")
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")

DtypeOpt = typer.Option("auto", "--dtype", help="auto | float32 | bfloat16 | float16")
ResumeOpt = typer.Option(False, "--resume", help=RESUME_HELP)
JsonOpt = typer.Option(False, "--json", help="Print the result as strict JSON (NaN/Infinity as null).")
OUTSIDE_AUDIO_HELP = ("Read a file dataset's audio even where a path resolves outside the dataset's folder (../x.wav, "
                      "an absolute path, a symlink pointing elsewhere); refused by default.")


@app.callback()
def _root(
    arch_table: list[Path] = typer.Option(
        [], "--arch-table", help="Register an architecture table from a JSON file (repeatable) before the command runs."),
) -> None:
    """Is the model still listening while it reasons?"""


    extra = [Path(p) for p in os.environ.get("AURALENS_ARCH_TABLES", "").split(os.pathsep) if p]
    for path in [*extra, *arch_table]:
        _guarded(load_table_file)(path)


@app.command("models")
def models_cmd(as_json: bool = typer.Option(False, "--json", help="Print the list as strict JSON.")) -> None:
    """Every model class auralens has a table for, its maximum audio and windows, what was tested
    here (and the classes it cannot support yet, with why)."""

    _guarded(load_entry_point_tables)()
    rows = [{"class": t.model_class, "table": t.name, "aliases": list(t.aliases),
             "containers": list(t.containers), "processor_classes": list(t.processor_classes),
             "max_audio_seconds": t.max_audio_seconds, "window_seconds": t.window_seconds,
             "audio_windowing": t.audio_windowing, "tested_here": tested_here(t.name)}
            for t in sorted(TABLES.values(), key=lambda t: t.name)]
    res = {"supported": rows, "unsupported": [{"class": k, "why": v} for k, v in sorted(UNSUPPORTED.items())]}
    if as_json:
        _echo_json(res)
        return

    def seconds(v):
        return "no maximum" if v is None else f"{v:g} s"

    t = Table(title="model classes with an architecture table")
    for col in ("class", "table", "max audio", "windows", "tested here"):
        t.add_column(col)
    for r in rows:
        done = r["tested_here"]
        t.add_row(r["class"], r["table"], seconds(r["max_audio_seconds"]),
                  f"{r['audio_windowing']}, {seconds(r['window_seconds'])}",
                  ", ".join(k for k, v in done.items() if v is True) or "-" if done else "no (user table)")
    Console().print(t)
    for r in res["unsupported"]:
        Console().print(f"not supported: {r['class']}: {r['why']}")


def _command_line() -> str:
    return "auralens " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _fail(exc: BaseException) -> None:
    """One line on stderr (``error: ...``), exit status 2."""

    msg = " ".join(str(exc).split()) or type(exc).__name__
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(msg)}")
    raise typer.Exit(2)


def _guarded(fn):
    """A command whose expected errors (the auralens family; OSError such as a permission or a
    full disk) reach the user as one line and exit 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):

        try:
            return fn(*args, **kwargs)
        except (AuralensError, OSError) as exc:
            _fail(exc)

    return wrapper


def _command(group: typer.Typer, name: str):
    """``@group.command(name)`` with :func:`_guarded` errors."""

    def deco(fn):
        return group.command(name)(_guarded(fn))

    return deco


def _echo_json(obj) -> None:
    """The one --json printer: strict JSON, non-finite floats as null (auralens.interp.runs.dumps_strict)."""

    if is_main():  # under a multi-process launch every rank has the same result: rank 0 prints it
        typer.echo(dumps_strict(obj))


def _say(text: str) -> None:
    """One line on stdout, from rank 0 only under a multi-process launch (auralens.interp.distributed)."""

    if is_main():
        typer.echo(text)


def _csv(option: str, value: str) -> tuple[str, ...]:

    parts = tuple(p.strip() for p in value.split(","))
    if not value.strip() or any(not p for p in parts):
        raise ConfigError(f"{option}: expected a comma-separated list such as 'a,b', found {value!r}")
    return parts


def _numbers(option: str, value: str, cast=float) -> list:
    """``'0,2,4'`` -> [0.0, 2.0, 4.0]; a bad element is a ConfigError naming the option."""


    kind = "integers" if cast is int else "numbers"
    out = []
    for part in _csv(option, value):
        try:
            x = cast(part)
        except ValueError:
            raise ConfigError(f"{option}: expected comma-separated {kind}, found {part!r} in {value!r}") from None
        if cast is float and not math.isfinite(x):
            raise ConfigError(f"{option}: expected finite numbers, found {part!r} in {value!r}")
        out.append(x)
    return out


def _load(model: str, dtype: str = "auto", device: str | None = None):

    check_dtype(dtype)
    check_model(model)
    return load_model(model, dtype=dtype, device=device)


# --- commands derived from a stage's config dataclass (auralens.interp.stage_config) --------------------


def _config_class(spec: str):
    """``"module:Class"`` -> the class (imported when the command tree is built: the stage
    modules import nothing heavy at module level)."""

    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _cli_annotation(tp):
    """``X | None`` as ``Optional[X]`` (what typer understands)."""

    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return Optional[args[0]]  # noqa: UP045 (typer reads typing.Optional, not X | None, at run time)
    return tp


def _flag_decls(f) -> list[str]:
    """``--kebab-name`` (or the field's ``flag``), plus its short form."""
    flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
    short = f.metadata.get("short")
    return [flag, short] if short else [flag]


def _config_params(config_cls) -> list:
    """One keyword-only typer option per CLI field of ``config_cls``: ``--kebab-name``, the
    field's default (as text for the comma lists) and its help."""

    hints = typing.get_type_hints(config_cls)
    params = []
    for f in dataclasses.fields(config_cls):
        m = f.metadata
        if not m.get("cli", True):
            continue
        default = m.get("cli_default", dataclasses.MISSING)
        parse = m.get("parse")
        if default is dataclasses.MISSING:
            default = f.default
            if parse and default is not dataclasses.MISSING:
                if default is None:
                    default = ""
                elif isinstance(default, str):
                    pass
                elif parse == "one":
                    default = str(default[0])
                else:
                    default = ",".join(str(x) for x in default)
        if default is dataclasses.MISSING:
            default = ...
        annotation = str if parse else (m.get("cli_type") or _cli_annotation(hints[f.name]))
        decls = _flag_decls(f)
        if annotation is bool and default is True and "/" not in decls[0]:
            decls[0] = f"{decls[0]}/--no-{decls[0][2:]}"
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                                        default=typer.Option(default, *decls, help=m["help"])))
    return params


def _from_flag(f, value):
    """A flag's value as the field's: comma lists parsed, with errors naming the flag."""
    parse = f.metadata.get("parse")
    flag = _flag_decls(f)[0].split("/")[0]
    if parse is None or value is None:
        return value
    if parse == "one":
        return (value,)
    if parse == "csv":
        return _csv(flag, value)
    if not value.strip() and f.default is None:
        return None
    return tuple(_numbers(flag, value, int if parse == "ints" else float))


def _stage_command(group: typer.Typer, name: str, config: str):
    """``@group.command(name)`` whose options are the CLI fields of the stage config ``config``
    (``"module:Class"``, :func:`_config_params`), followed by the function's own options
    (``--json``...) and ``--allow-outside-audio`` (every stage reads datasets: without it a file
    dataset's audio must resolve inside its folder, :func:`auralens.interp.datasets.outside_audio_allowed`).
    The function receives the validated config first: ``fn(cfg, **own)``;
    a config with a ``command`` field gets the command line; a ``--device-map`` naming a GPU this
    machine lacks is refused before the stage starts.  (Commands call their stage with
    ``**cfg.options()``, the keyword style, so a stage replaced in a test still sees keywords.)"""

    config_cls = _config_class(config)
    fields = {f.name: f for f in dataclasses.fields(config_cls)}

    def deco(fn):
        hints = typing.get_type_hints(fn)
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation))
               for p in list(inspect.signature(fn).parameters.values())[1:]]
        params = _config_params(config_cls)
        names = {p.name for p in params}

        outside = inspect.Parameter("allow_outside_audio", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                                    default=typer.Option(False, OUTSIDE_AUDIO_FLAG, help=OUTSIDE_AUDIO_HELP))

        def command(**kwargs):
            allow_outside = bool(kwargs.pop("allow_outside_audio", False))
            options = {k: _from_flag(fields[k], kwargs.pop(k)) for k in list(kwargs) if k in names}
            if "command" in fields:
                options["command"] = _command_line()
            cfg = config_cls(**options)
            check_device_map(getattr(cfg, "device_map", None))
            with outside_audio_allowed(allow_outside):
                return fn(cfg, **kwargs)

        command.__name__, command.__qualname__, command.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
        command.__module__ = fn.__module__
        command.__signature__ = inspect.Signature([*params, *own, outside])
        command.__annotations__ = {p.name: p.annotation for p in [*params, *own, outside]}
        command.config_class = config_cls
        return _command(group, name)(command)

    return deco


@_stage_command(app, "eval", "auralens.interp.evaluate:EvalConfig")
def eval_cmd(cfg, as_json: bool = typer.Option(False, "--json", help="Print accuracy per tier and format as strict JSON.")) -> None:
    """Accuracy per tier and answer format, with the audio and with silence."""

    res = evaluate.stage_eval(**cfg.options(), quiet=as_json)
    if as_json:
        _echo_json(res)


@_command(micro_app, "train")
def micro_train(
    out: Path = typer.Option(None, "--out", help="Folder for the weights (default: the embedded micro folder)."),
    steps: int = typer.Option(3000, "--steps", help="Training steps."),
    minutes: float = typer.Option(19.0, "--minutes", help="Wall-clock budget; training checkpoints and stops when reached."),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="Training seed."),
    threads: int = typer.Option(2, "--threads", help="CPU threads for torch."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in --out."),
) -> None:
    """Train `micro` from scratch on cafe (seeded; checkpoints every 250 steps; --resume continues)."""


    folder = out or BASE_DIR
    train(folder, TrainConfig(steps=steps, max_minutes=minutes, seed=seed, threads=threads), resume=resume)
    done = _json.loads((folder / "training.json").read_text())["steps_done"]
    if done >= steps:
        finalize(folder)
        typer.echo(f"saved micro to {folder} ({done} steps)")
    else:
        typer.echo(f"stopped at step {done}/{steps} (time budget); continue with --resume")


@_command(smol_app, "train")
def smol_train(
    out: Path = typer.Option(None, "--out", help="Folder for trained.safetensors + training.json (default: the embedded one)."),
    steps: int = typer.Option(900, "--steps", help="Optimizer steps."),
    batch_size: int = typer.Option(8, "--batch-size", help="Items per step."),
    lr: float = typer.Option(2e-3, "--lr", help="Peak learning rate (cosine, warm-up 50 steps)."),
    n_cafe: int = typer.Option(3000, "--n-cafe", help="cafe training items (seeds 5,000,000 + i)."),
    n_spoken: int = typer.Option(3000, "--n-spoken", help="espeak-ng spoken training items (seed 500)."),
    minutes: float = typer.Option(58.0, "--minutes", help="Wall-clock budget; checkpoints and stops when reached."),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="Training seed."),
    bf16: bool = typer.Option(True, "--bf16/--fp32", help="bf16 autocast (faster on this CPU: measured in the README)."),
    threads: int = typer.Option(2, "--threads", help="CPU threads for torch."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in --out."),
) -> None:
    """Align smol-audio: projector + audio-token rows on cafe and spoken items, the pretrained parts frozen."""

    cfg = AlignConfig(steps=steps, batch_size=batch_size, lr=lr, n_cafe=n_cafe, n_spoken=n_spoken, max_minutes=minutes,
                      seed=seed, bf16=bf16, threads=threads)
    check_parts(need_trained=False)  # the pretrained packages; the trained file is what this makes
    info = train_alignment(out or TRAINED_DIR, cfg, resume=resume, log=typer.echo)
    typer.echo(f"{'finished' if info['finished'] and info['steps_done'] >= steps else 'stopped'} at step "
               f"{info['steps_done']}/{steps} in {info['wall_seconds'] / 60:.1f} min -> {out or TRAINED_DIR}")


@_command(data_app, "spoken")
def data_spoken(
    out: Path = typer.Option(..., "--out", help="New folder: questions.jsonl + audio/*.wav."),
    n: int = typer.Option(200, "--n", help="Items."),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="Draws the words, voices, speeds and pitches."),
    kinds: str = typer.Option("word,number,sentence", "--kinds", help="Question types, comma-separated."),
    replace: bool = typer.Option(False, "--replace", help="Overwrite an existing --out folder."),
) -> None:
    """Spoken words, numbers and short sentences from espeak-ng, as an MMAU-format folder dataset."""

    folder = write_spoken_dataset(out, n, seed=seed, qtypes=_csv("--kinds", kinds), replace=replace)
    typer.echo(f"wrote {n} spoken items to {folder}")


@_command(micro_app, "finetune")
def micro_finetune(
    base: str = typer.Option("micro", "--base", help="Model to fine-tune ('micro', a folder or an HF id)."),
    out: Path = typer.Option(None, "--out", help="Output folder (default: the embedded micro-mpar2 folder)."),
    sft_steps: int | None = typer.Option(None, "--sft-steps", help="SFT steps (default: FinetuneConfig's)."),
    grpo_steps: int | None = typer.Option(None, "--grpo-steps", help="GRPO steps (default: FinetuneConfig's)."),
    sft_batch_size: int | None = typer.Option(None, "--sft-batch-size", help="SFT batch (default 16)."),
    grpo_prompts: int | None = typer.Option(None, "--grpo-prompts", help="GRPO prompts per step (default 8)."),
    group_size: int | None = typer.Option(None, "--group-size", help="GRPO completions per prompt (default 8)."),
    grpo_lr: float | None = typer.Option(None, "--grpo-lr", help="GRPO learning rate (default: FinetuneConfig's)."),
    loss_type: str | None = typer.Option(None, "--loss-type", help="dapo (token-level) | grpo (per completion)."),
    minutes: float | None = typer.Option(None, "--minutes", help="Wall-clock cap of the whole run."),
    threads: int = typer.Option(2, "--threads", help="CPU threads for torch."),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="Fine-tuning seed."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in --out."),
    recipe: str = typer.Option("mpar2", "--recipe", help="mpar2 (geometric-mean rewards) | hyper (PAUSE tokens, weighted rewards)."),
    cue_mix: str | None = typer.Option(None, "--cue-mix", help="Training items: chance (cues at chance validity) | none."),
    pause_quantile: float | None = typer.Option(None, "--pause-quantile",
                                                   help="hyper: entropy quantile of the PAUSE threshold (default 0.98)."),
    max_pauses: int | None = typer.Option(None, "--max-pauses", help="hyper: PAUSE tokens per answer (default 3)."),
    lora_r: int | None = typer.Option(None, "--lora-r", help="LoRA rank on the decoder (default 0 = full fine-tune); "
                                                             "the final folder holds merged weights."),
    lora_alpha: int | None = typer.Option(None, "--lora-alpha", help="LoRA alpha (scale alpha / r; default 32)."),
    lora_targets: str | None = typer.Option(None, "--lora-targets",
                                            help="auto (every linear module of the decoder layers) | comma-separated "
                                                 "leaf names, e.g. q_proj,v_proj."),
) -> None:
    """MPAR²-style (or HyPeR-style, --recipe hyper) fine-tuning: SFT on perception → reasoning → review traces, then GRPO
    (--grpo-steps 0: the SFT-only arm)."""

    _finetune(base, out or FINETUNED_DIR, recipe=recipe, sft_steps=sft_steps, grpo_steps=grpo_steps, grpo_lr=grpo_lr,
              loss_type=loss_type, max_minutes=minutes, cue_mix=cue_mix, threads=threads, seed=seed, resume=resume,
              pause_quantile=pause_quantile, max_pauses=max_pauses, lora_r=lora_r, lora_alpha=lora_alpha,
              lora_targets=lora_targets, sft_batch_size=sft_batch_size, grpo_prompts=grpo_prompts,
              group_size=group_size)


def _finetune(base, out, *, threads, seed, resume, **given) -> None:

    cfg = FinetuneConfig(threads=threads, seed=seed, **{k: v for k, v in given.items() if v is not None})
    info = finetune(base, out, cfg, resume=resume)
    _echo_json({k: v for k, v in info.items() if not isinstance(v, (list, dict))})


organisms_app = typer.Typer(help="Model organisms: micro variants with planted listening deficits.", no_args_is_help=True)
app.add_typer(organisms_app, name="organisms")


@_command(organisms_app, "train")
def organisms_train(
    name: str = typer.Argument(..., help="micro-prior | micro-heads | micro-decay | micro (the healthy control)."),
    out: Path | None = typer.Option(None, "--out", help="Weights folder (default: the embedded folder of NAME)."),
    steps: int | None = typer.Option(None, "--steps", help="Training steps (default: the recipe's)."),
    minutes: float = typer.Option(45.0, "--minutes", help="Wall-clock budget; checkpoints and stops when reached."),
    threads: int = typer.Option(2, "--threads", help="CPU threads for torch."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in --out."),
) -> None:
    """Plant NAME's deficit into a copy of the healthy micro (recipe knobs: interp/micro/organisms.py)."""


    if name not in RECIPES:
        raise ConfigError(f"organism: expected one of {sorted(RECIPES)}, found {name!r}")
    if steps is not None and steps < 1:
        raise ConfigError(f"--steps: expected an integer >= 1, found {steps}")
    cfg = RECIPES[name] if steps is None else dataclasses.replace(RECIPES[name], steps=steps)
    folder = out or weights_folder(name)
    if name == "micro" and out is None:
        raise ConfigError("organism 'micro': pass --out (it starts from the embedded micro and must not overwrite it)")
    train_organism(cfg, folder, max_minutes=minutes, threads=threads, resume=resume, command=_command_line())
    typer.echo(f"saved {name} to {folder}")


@_command(organisms_app, "finetune")
def organisms_finetune(
    name: str = typer.Argument(..., help="Organism to fine-tune: micro, micro-prior or micro-decay."),
    recipe: str = typer.Option("mpar2", "--recipe", help="mpar2 | hyper."),
    out: Path = typer.Option(None, "--out", help="Output folder (default: the embedded NAME-RECIPE folder)."),
    sft_steps: int | None = typer.Option(None, "--sft-steps", help="SFT steps (default: FinetuneConfig's)."),
    grpo_steps: int | None = typer.Option(None, "--grpo-steps", help="GRPO steps (default: FinetuneConfig's)."),
    minutes: float | None = typer.Option(None, "--minutes", help="Wall-clock cap of the whole run."),
    threads: int = typer.Option(1, "--threads", help="CPU threads for torch."),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="Fine-tuning seed."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in --out."),
) -> None:
    """Fine-tune an organism with one arm (MPAR²-style or HyPeR-style) into NAME-RECIPE (e.g. micro-prior-hyper)."""

    target = f"{name}-{recipe}"
    if target not in EMBEDDED:
        arms = sorted(k for k in EMBEDDED if k.endswith(("-mpar2", "-hyper")))
        raise ConfigError(f"organisms finetune: expected NAME in micro, micro-prior, micro-decay and --recipe in mpar2, hyper "
                          f"(one of {arms}), found {name!r} with {recipe!r}")
    _finetune(name, out or WEIGHTS_DIR / EMBEDDED[target], recipe=recipe, sft_steps=sft_steps, grpo_steps=grpo_steps,
              max_minutes=minutes, threads=threads, seed=seed, resume=resume)


@_command(organisms_app, "validate")
def organisms_validate(
    names: str = typer.Option("micro,micro-prior,micro-heads,micro-decay", "--organisms",
                              help="Comma-separated models to check (healthy micro = the negative control)."),
    n: int = typer.Option(300, "--n", help="Held-out test items per condition."),
    n_cal: int = typer.Option(200, "--n-cal", help="Calibration items (head ranking, probe layer choice)."),
    probes: bool = typer.Option(True, "--probes/--no-probes", help="Also run the audio-token probe check."),
    split: str = typer.Option("test", "--split", help="Cue-dataset split of the measured items: dev | test."),
    seed_offset: int = typer.Option(0, "--seed-offset",
                                    help="Start the direct-answer (cue accuracy) checks this many seeds into the split: "
                                         "fresh seeds nobody tuned on (the record-based checks take the split's first "
                                         "items)."),
    as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON."),
) -> None:
    """Check each organism's signature against what was planted, on held-out seeds."""

    chosen = _csv("--organisms", names)
    bad = [x for x in chosen if x not in ("micro", *ORGANISMS)]
    if bad:
        raise ConfigError(f"--organisms: expected names from {('micro', *ORGANISMS)}, found {bad}")
    for opt, v in (("--n", n), ("--n-cal", n_cal)):
        if v < 10:
            raise ConfigError(f"{opt}: expected an integer >= 10, found {v}")
    seeds = check_seeds(split, n, seed_offset)
    res = validate(organisms=chosen, n=n, n_cal=n_cal, probes=probes, split=split, seed_offset=seed_offset)
    if as_json:
        _echo_json(res)
        return

    t = Table(title=f"organism signatures (held-out {split} split, n={n}; cue-accuracy seeds "
                    f"{seeds.start}..{seeds.stop - 1})")
    for col in ("organism", "check", "value", "CI", "threshold", "result", "note"):
        t.add_column(col)
    for r in res["checks"]:
        ci = "" if r["ci"] is None else f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"
        t.add_row(r["organism"], r["check"], f"{r['value']:.3f}", ci, r["threshold"],
                  "pass" if r["pass"] else "FAIL", r["note"])
    Console().print(t)


@_stage_command(app, "compare", "auralens.compare:CompareConfig")
def compare_cmd(cfg, as_json: bool = JsonOpt) -> None:
    """Base, base + steering, MPAR²-style, MPAR² + steering, HyPeR-style and SFT-only fine-tunes on the same items,
    per organism (--mpar2 train / --sft train: trained here, --lora-r for LoRA)."""

    _echo_json(compare.stage_compare(**cfg.options(), quiet=as_json))


@_command(app, "demo")
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Folder for the stage run folders."),
    n: int = typer.Option(60, "--n", help="Items per stage (>= 1)."),
    resume: bool = ResumeOpt,
    replace: bool = typer.Option(False, "--replace", help="Move an earlier demo in --out aside to <out>.previous "
                                                          "(replacing an older .previous) and start afresh."),
) -> None:
    """Run every stage on the embedded `micro` model and print the summaries (<= 5 min on 2 cores)."""

    check_n(n)
    if replace and resume:
        raise ConfigError("--replace and --resume: expected one of them (start afresh or continue), found both")
    if replace and out.exists():

        if not out.is_dir():
            raise ConfigError(f"--out {str(out)!r}: expected a folder, found a file")
        if Path.cwd().resolve().is_relative_to(out.resolve()):
            raise ConfigError(f"--out {str(out)!r} --replace: expected a demo folder to move aside, found the current "
                              "folder or one above it")
        prev = out.with_name(out.name + ".previous")
        if prev.exists():
            shutil.rmtree(prev)
        out.rename(prev)
        typer.echo(f"moved the earlier demo to {prev}", err=True)
    demo_stage.run_demo(out=out, n=n, resume=resume, command=_command_line())


@_command(bench_app, "yield")
def bench_yield_cmd(
    model: str = typer.Option("micro", "--model", "-m", help="'micro', 'qwen2-audio-7b-shaped', '7b-layers' (random init), an id or folder."),
    new_tokens: str = typer.Option("128", "--new-tokens", help="Generated tokens per phase (>= 1); with --batch, comma-separated."),
    batch: str = typer.Option("", "--batch", help="Comma-separated batch sizes: time and held memory of the recorder at each (batch, new tokens); default model 7b-layers, 30 s clip."),
    clip_seconds: float | None = typer.Option(None, "--clip-seconds", help="Length of the synthetic audio clip (default 4 s; 30 s with --batch)."),
    repeats: int = typer.Option(3, "--repeats", help="Timed repeats per phase (>= 1)."),
    dtype: str = DtypeOpt,
    device: str | None = typer.Option(None, "--device", help="cpu | cuda (default: CUDA when present)."),
    eager: bool = typer.Option(True, "--eager/--no-eager", help="Include the eager-attention reference phase."),
    tl: bool = typer.Option(True, "--tl/--no-tl", help="Include the TransformerLens hook_pattern phase."),
    as_json: bool = JsonOpt,
) -> None:
    """Cost of recording the audio yield: recorder vs plain SDPA generate, eager and TransformerLens."""
    import torch


    tokens = tuple(_numbers("--new-tokens", new_tokens, int))
    sizes = tuple(_numbers("--batch", batch, int)) if batch else ()
    for name, v in [("--new-tokens", x) for x in tokens] + [("--batch", x) for x in sizes] + [("--repeats", repeats)]:
        check_int(name, v)
    if len(tokens) > 1 and not sizes:
        raise ConfigError(f"--new-tokens {new_tokens!r}: expected one number without --batch, found {len(tokens)}")
    check_dtype(dtype)
    if sizes:
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if model in ("micro", "7b-layers"):
            lm = build_7b_layers(dtype=None if dtype == "auto" else getattr(torch, dtype), device=dev)
        else:
            lm = _load(model, dtype, device)
        res = bench_yield_scale(lm, batches=sizes, new_tokens=tokens, repeats=repeats,
                                clip_seconds=30.0 if clip_seconds is None else clip_seconds)
        if as_json:
            _echo_json(res)
            return
        t = Table(title=f"bench yield: {res['model']} on {res['device']} ({res['dtype']}), {res['audio_tokens']} audio tokens")
        for c in ("batch", "new tokens", "plain s", "recorded s", "ratio", "held / L*B*H*N*4"):
            t.add_column(c)
        for r in res["runs"]:
            t.add_row(str(r["batch"]), str(r["new_tokens"]), f"{r['plain_s']:.3f}", f"{r['recorded_s']:.3f}",
                      f"{r['ratio']:.3f}", f"{r['held_over_prediction']:.3f}")
        Console().print(t)
        return
    new_tokens_n = tokens[0]
    clip_seconds = 4.0 if clip_seconds is None else clip_seconds
    if model == "qwen2-audio-7b-shaped":

        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        m, proc = build_shaped("qwen2_audio", "qwen2-audio-7b", dtype=getattr(torch, "bfloat16" if dtype == "auto" else dtype), device=dev)
        proc.tokenizer.padding_side = "left"
        lm = LoadedModel(model=m, processor=proc, arch=describe(m), model_id=model, source="")
        tl = False  # no saved folder to boot a bridge from; the eager phase is the reference
    else:
        lm = _load(model, dtype, device)
    res = bench_yield(lm, clip_seconds=clip_seconds, new_tokens=new_tokens_n, repeats=repeats, eager=eager,
                      transformer_lens=tl)
    if as_json:
        _echo_json(res)
        return

    t = Table(title=f"bench yield: {res['model']} on {res['device']} ({res['dtype']}), {res['audio_tokens']} audio tokens, {new_tokens_n} new tokens")
    for c in ("phase", "seconds", "ratio to (a)", "peak MiB"):
        t.add_column(c)
    for name, p in res["phases"].items():
        if "seconds" in p:
            t.add_row(name, f"{p['seconds']:.3f}", f"{p['ratio']:.3f}", f"{p['peak_bytes'] / 2**20:.1f}")
        else:
            t.add_row(name, "-", "-", p.get("skipped", ""))
    Console().print(t)
    if "max_abs_err_recorder_vs_eager" in res:
        Console().print(f"max |recorder - eager| = {res['max_abs_err_recorder_vs_eager']:.2e}")


@_command(bench_app, "stages")
def bench_stages_cmd(
    processes: str = typer.Option("1,2", "--processes", help="Comma-separated process counts (1 = no launcher)."),
    n: int = typer.Option(0, "--n", help="Items per stage (0: record 48, probe 96, steer eval 32)."),
    batches: str = typer.Option("1,8,32", "--recorder-batches", help="Batch sizes of the recorder-overhead timing."),
    threads: int = typer.Option(1, "--threads", help="torch threads per process (OMP_NUM_THREADS)."),
    repeats: int = typer.Option(5, "--repeats", help="Timed repeats of the recorder phases (>= 1)."),
    as_json: bool = JsonOpt,
) -> None:
    """Items/s of record, probe and steer eval on micro at 1 and 2 processes (torchrun), and the recorder's overhead by batch size."""

    procs = tuple(_numbers("--processes", processes, int))
    sizes = tuple(_numbers("--recorder-batches", batches, int))
    for name, v in [("--processes", x) for x in procs] + [("--recorder-batches", x) for x in sizes] + \
            [("--threads", threads), ("--repeats", repeats)]:
        check_int(name, v)
    if n:
        check_int("--n", n)
    res = bench_stages(processes=procs, n={k: n for k in ("record", "probe", "steer_eval")} if n else None,
                       recorder_batches=sizes, threads=threads, repeats=repeats)
    if as_json:
        _echo_json(res)
        return

    t = Table(title=f"bench stages: micro on {res['device']}, {threads} thread(s) per process")
    for c in ("stage", "items", "processes", "seconds", "items/s", "speed-up", "items/s after start-up", "speed-up"):
        t.add_column(c)

    def num(x):
        return "-" if x is None else f"{x:.2f}"

    for stage, row in res["stages"].items():
        for p, r in row["processes"].items():
            t.add_row(stage, str(row["items"]), p, num(r["seconds"]), num(r["items_per_s"]), num(r["speedup"]),
                      num(r["items_per_s_marginal"]), num(r["speedup_marginal"]))
    Console().print(t)
    t = Table(title=f"recorder overhead ({res['recorder_overhead']['new_tokens']} new tokens)")
    for c in ("batch", "plain s", "recorded s", "ratio"):
        t.add_column(c)
    for b, r in res["recorder_overhead"]["batches"].items():
        t.add_row(b, f"{r['plain_s']:.3f}", f"{r['recorded_s']:.3f}", f"{r['ratio']:.3f}")
    Console().print(t)


@_command(bench_app, "gpu")
def bench_gpu_cmd(
    batch: str = typer.Option("1,8", "--batch", help="Comma-separated batch sizes."),
    new_tokens: int = typer.Option(512, "--new-tokens", help="Generated tokens per phase (>= 1)."),
    repeats: int = typer.Option(3, "--repeats", help="Timed repeats of the plain and recorder phases (>= 1)."),
    eval_n: int = typer.Option(200, "--eval-n", help="Items of the real-weights model's eval (0: skip it)."),
    eval_model: str = typer.Option("smol-audio", "--eval-model", help="The real-weights model evaluated on --eval-n cafe items."),
    as_json: bool = JsonOpt,
) -> None:
    """One-command GPU check: recorder vs plain SDPA generate vs eager at Qwen2-Audio-7B dimensions in bf16
    (30 s audio), peak memory of each, max |recorder - eager|, and the real-weights model's eval.  Exits 2 without a GPU."""

    sizes = tuple(_numbers("--batch", batch, int))
    for name, v in [("--batch", x) for x in sizes] + [("--new-tokens", new_tokens), ("--repeats", repeats)]:
        check_int(name, v)
    if eval_n:
        check_int("--eval-n", eval_n)
    res = bench_gpu(batches=sizes, new_tokens=new_tokens, repeats=repeats, eval_n=eval_n, eval_model=eval_model)
    if as_json:
        _echo_json(res)
        return
    t = Table(title=f"bench gpu: {res['model']} on {res['device_name']} ({res['dtype']}), {res['audio_tokens']} audio tokens, {new_tokens} new tokens")
    for c in ("batch", "plain s", "recorder s", "ratio", "eager s", "peak GiB plain / rec / eager", "max |rec - eager|"):
        t.add_column(c)
    for r in res["runs"]:
        peaks = " / ".join(f"{r[k]['peak_bytes'] / 2**30:.2f}" for k in ("plain_sdpa", "recorder", "eager_output_attentions"))
        t.add_row(str(r["batch"]), f"{r['plain_sdpa']['seconds']:.2f}", f"{r['recorder']['seconds']:.2f}",
                  f"{r['recorder']['ratio']:.3f}", f"{r['eager_output_attentions']['seconds']:.2f}", peaks,
                  f"{r['max_abs_recorder_minus_eager']:.2e}")
    Console().print(t)
    ev = res["eval"]
    Console().print(f"eval {ev.get('model')}: " + (ev["skipped"] if "skipped" in ev else
                    f"{ev['accuracy']:.3f} [{ev['ci_low']:.3f}, {ev['ci_high']:.3f}] on {ev['n']} items, {ev['items_per_s']:.1f} items/s"))


@_stage_command(app, "record", "auralens.interp.record:RecordConfig")
def record_cmd(cfg, as_json: bool = JsonOpt) -> None:
    """Per-head audio attention yield across reasoning steps: perception decay and listening heads."""

    _echo_json(record.stage_record(**cfg.options(), quiet=as_json))


@_stage_command(app, "ablate", "auralens.interp.ablation:AblateConfig")
def ablate_cmd(cfg, as_json: bool = JsonOpt) -> None:
    """Causal check of the listening heads: held-out accuracy with the top-k heads ablated vs k random
    audio-attending heads (paired bootstrap CI of the difference of the drops)."""

    res = ablation.stage_ablate(**cfg.options(), quiet=as_json)
    if as_json:
        _echo_json(res)
        return
    acc = res["accuracy"]
    _say(f"{res['model']} on {res['data']} (n={res['n']}, {res['mode']}-ablation, k={res['k']}, "
         f"{res['n_draws']} random draws from {res['pool_size']} audio-attending heads)")
    _say(f"accuracy: none {acc['none']:.3f}, top-k {acc['top_k']:.3f}, random-k {acc['random_k']:.3f}")
    _say(f"top-k drop - random-k drop = {res['diff']:+.3f} [{res['ci'][0]:+.3f}, {res['ci'][1]:+.3f}]; "
         f"top-k heads {res['top_k']}; wrote {res['run']}")


@_stage_command(app, "patch", "auralens.interp.patching:PatchConfig")
def patch_cmd(cfg, as_json: bool = JsonOpt) -> None:
    """Audio -> silence activation patching per decoder layer x position group (audio tokens, text
    after them, the last prompt token; the text before the audio is the exact null)."""

    res = patching.stage_patch(**cfg.options(), quiet=as_json)
    if as_json:
        _echo_json(res)
        return
    _say(f"{res['model']} on {res['data']} (n={res['n']}, {res['direction']}); clean - silence score "
         f"{res['clean_minus_corrupt']:+.3f}; restored share by layer x group:")
    for row in res["table"]:
        if row["n"]:
            _say(f"  layer {row['layer']:>3} {row['group']:<13} effect {row['effect']:+.3f} "
                 f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]  restored {row['restored']:+.2f}  (n={row['n']})")
    _say(f"wrote {res['run']}")


@_stage_command(app, "probe", "auralens.probes.stage:ProbeStageConfig")
def probe_cmd(cfg, as_json: bool = JsonOpt) -> None:
    """Linear probes for audio attributes, by layer and by reasoning step."""

    res = probe_stage.stage_probe(**cfg.options(), quiet=as_json)
    if as_json:
        _echo_json(res)
    else:
        _say(f"wrote {cfg.out}")


steer_app = typer.Typer(help="Audio-minus-silence steering vectors: fit and evaluate.", no_args_is_help=True)
app.add_typer(steer_app, name="steer")


@_stage_command(steer_app, "fit", "auralens.steering.stage_fit:SteerFitConfig")
def steer_fit(cfg) -> None:
    """Fit an audio-minus-silence direction and save it (format from the extension)."""

    vec = steer_fit_stage.stage_steer_fit(**cfg.options())
    _say(f"wrote {cfg.out_vector} (layers {sorted(vec.layers)}, method {vec.method})")


@_stage_command(steer_app, "eval", "auralens.steering.stage_eval:SteerEvalConfig")
def steer_eval(cfg, as_json: bool = JsonOpt,
               alphas: str | None = typer.Option(None, "--alphas", hidden=True,
                                                    help="Deprecated spelling of --betas.")) -> None:
    """Accuracy as a function of the strength beta (and layer), against random controls, with CIs."""


    if alphas is not None:  # the deprecated spelling of --betas: its values, with a warning
        cfg = dataclasses.replace(cfg, betas=tuple(_numbers("--alphas", alphas)))
        typer.echo("warning: --alphas is deprecated, use --betas", err=True)
    _echo_json(steer_eval_stage.stage_steer_eval(**cfg.options(), quiet=as_json))


@_command(app, "export")
def export_cmd(
    vec: Path = typer.Argument(..., help="A steering vector file (safetensors, gguf or npz)."),
    fmt: str = typer.Option(..., "--format", help="safetensors | gguf | npz"),
    out: Path = typer.Option(..., "--out", help="Output file (its extension must match --format)."),
    model_hint: str | None = typer.Option(
        None, "--model-hint", help="gguf: controlvector.model_hint, the decoder's llama.cpp architecture "
                                   "(default: the one auralens knows for the vector's model, e.g. llama, qwen2)."),
    as_json: bool = JsonOpt,
) -> None:
    """Convert a steering vector between safetensors, llama.cpp GGUF control vectors and npz.

    For gguf, how llama.cpp will apply the vector differently from auralens (it steers every
    position) is printed as one warning line on stderr and listed under "warnings" (--json)."""
    from auralens.steering.formats import export_report, load_vector

    if out.is_dir():
        raise ConfigError(f"--out {str(out)!r}: expected a file path, found a directory")
    v = load_vector(vec)
    report = export_report(v, out, fmt, model_hint=model_hint)
    if report["warnings"]:
        typer.echo(f"warning: llama.cpp will apply {report['path']} differently: " + "; ".join(report["warnings"]),
                   err=True)
    if as_json:
        _echo_json(report)
    else:
        typer.echo(f"wrote {report['path']}")


@_command(app, "dashboard")
def dashboard_cmd(
    runs: list[Path] = typer.Argument(..., help="Run folders (or a demo folder holding stage folders)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address (default: localhost only)."),
    port: int = typer.Option(8501, "--port", help="Port of the Streamlit server."),
    live_model: str | None = typer.Option(None, "--live-model", help="Load this model for live mode."),
) -> None:
    """Open the Streamlit dashboard on run folders."""

    raise typer.Exit(launch(runs, host=host, port=port, live_model=live_model))


@_command(app, "report")
def report_cmd(
    run: Path = typer.Argument(..., help="A run folder (or a demo folder holding stage folders)."),
    out: Path | None = typer.Option(None, "--out", help="HTML file (or folder) to write (default: report.html in the run folder)."),
) -> None:
    """Write one self-contained HTML report of a run (opens offline)."""

    typer.echo(f"wrote {write_report(run, out)}")


def main(argv: list[str] | None = None) -> None:
    """The ``auralens`` command. A usage error (an unknown option or command, a value of the
    wrong type, a missing argument) is one line on stderr naming the command, then exit 2,
    instead of click's boxed message: the same shape as every other auralens error."""
    errors = compat.click_exceptions()
    try:
        code = app(args=argv, prog_name="auralens", standalone_mode=False)
    except errors.NoArgsIsHelpError as e:  # bare `auralens` / a group: its help, as click does
        sys.stdout.write((e.ctx.get_help() if e.ctx else e.format_message()) + "\n")
        raise SystemExit(2) from None
    except errors.UsageError as e:
        where = e.ctx.command_path if e.ctx else "auralens"
        message = " ".join(e.format_message().split())
        sys.stderr.write(f"error: {where}: {message} (see '{where} --help')\n")
        raise SystemExit(2) from None
    except typer.Abort:
        sys.stderr.write("error: aborted\n")
        raise SystemExit(1) from None
    if isinstance(code, int) and code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
