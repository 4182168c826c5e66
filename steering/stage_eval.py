"""``auralens steer eval``: a steering vector swept over the strength beta (and layer, position
mode, mode) against its controls on a dataset, written to a run folder.

The run folder: ``manifest.json``, ``items.parquet`` (every generation, resumable),
``steering.parquet`` (:data:`auralens.steering.evaluate.STEERING_COLUMNS` + ``format``),
``steering_accuracy.html`` / ``steering_delta.html`` (self-contained plotly),
``vectors/<name>.safetensors`` (the vectors used) and ``summary.json``.  The protocols
(:mod:`auralens.steering.protocol`): ``dev_test`` chooses the setting on the dev split — or
declines to steer (``selection='ci_low'``: a nonzero beta is kept only if its dev gain's 95% CI
lower bound is > 0) — and reports it on the test split, with the controls at the same setting,
``random_directions`` random directions each with its own dev beta (the vector's percentile
among them), the neutral-item cost, the answer distribution and a per-item off-gate; ``sweep`` reports the
best in-sample gain over beta = 0 with its paired-bootstrap CI, the controls at the same
setting, and the vector − control difference, whatever their signs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auralens.interp.errors import ConfigError
from auralens.interp.runs import check_dtype, check_n
from auralens.interp.stage_config import (
    DTYPE_HELP,
    RESUME_HELP,
    ModelDataConfig,
    option,
    takes_config,
)
from auralens.steering.evaluate import SweepConfig
from auralens.steering.registry import MODES, POSITIONS, SELECTION_RULES

__all__ = ["PROTOCOLS", "SteerEvalConfig", "stage_steer_eval"]

PROTOCOLS: tuple[str, ...] = ("dev_test", "sweep")


@dataclass(frozen=True, kw_only=True)
class SteerEvalConfig(ModelDataConfig):
    """``auralens steer eval``: accuracy as a function of the strength beta (and layer), against controls."""

    COMMAND = "auralens steer eval"

    vector: Any = option(identity=False, cli_type=Path, help="Steering vector file (safetensors, gguf or npz).")
    betas: tuple[float, ...] = option((0.0, 2.0, 4.0, 8.0), parse="floats", cli_default="0,2,4,8",
                                      help="Comma-separated steering strengths beta.")
    n: int = option(90, help="Number of items (>= 1).")
    out: Path = option(Path("runs/steer"), identity=False, help="Run folder.")
    controls: bool = option(True, help="Also run the controls: random direction/heads at the same setting and (dev_test) "
                                       "the random-direction null.")
    selection: str = option("ci_low", help="dev_test rule choosing on dev: ci_low (beta 0 is a candidate; a nonzero "
                                           "setting is kept only if its dev gain's 95% CI lower bound is > 0, else "
                                           "steering is declined) | best (the largest dev gain, cannot decline).")
    random_directions: int = option(20, help="dev_test with controls: random directions of equal norm, each given its "
                                             "own beta on dev by the same rule; the vector's test-gain percentile "
                                             "among them (0: none).")
    off_gate: bool = option(True, help="dev_test: also report a per-item gate that switches steering off when the "
                                       "unsteered listening signal is above a threshold chosen on dev (gated vs "
                                       "ungated test gain).")
    neutral: bool = option(True, help="dev_test on a cafe cue dataset: also run the chosen setting on the neutral "
                                      "condition's test items (the cost of steering).")
    formats: tuple[str, ...] = option(("direct",), flag="--format", parse="one",
                                      help="Answer format: direct | cot | structured.")
    batch_size: int = option(16, help="Items per generation batch (>= 1).")
    resume: bool = option(False, identity=False,
                          help=RESUME_HELP)
    seed: int = option(7, help="Data seed (cafe items, bootstrap and controls).")
    # not part of the identity: runs before it was a config field do not record it
    dtype: str = option("auto", identity=False, help=DTYPE_HELP)
    layers: tuple[int, ...] | None = option(None, parse="ints",
                                            help="Layers to steer, one at a time, chosen on dev (default: the vector's).")
    positions: tuple[str, ...] | None = option(None, cli_type=str,
                                               help=f"{POSITIONS.help()} (default: both with dev_test, last_prompt with sweep).")
    protocol: str = option("dev_test", help="dev_test: beta/layer/mode chosen on dev, reported on test | sweep: in-sample sweep.")
    modes: tuple[str, ...] | None = option(None, cli_type=str,
                                           help=f"{MODES.help()}; default mean,per_input with dev_test.")
    max_new_tokens: int = option(32, help="Generated tokens per answer (>= 1).")
    backend: str = option("torch", help="torch | nnsight (identical results; torch is faster).")
    n_boot: int = option(1000, help="Bootstrap resamples of the confidence intervals (>= 1).")
    adaptive_gain: float | None = option(None, help="Steer with adaptive beta of this gain (gated by listening heads).")
    adaptive_heads: Any = option(None, identity=False, cli=False,
                                 help="Heads gating the adaptive beta (default: the vector's own heads).")
    # not part of the identity when None (runs before it existed); recorded in the manifest when set
    control_model: str | None = option(None, identity=False, cli_type=str,
                                       help="dev_test: also run the selected setting (same mode, layer, beta, positions; "
                                            "mean v refitted on the same calibration items) on this model, e.g. a "
                                            "healthy one (negative control): controls['model_without_deficit'].")

    def __post_init__(self) -> None:
        check_n(self.n)
        check_dtype(self.dtype)
        if self.adaptive_gain is not None and (isinstance(self.adaptive_gain, bool) or
                                               not isinstance(self.adaptive_gain, (int, float))):
            raise ConfigError(f"adaptive_gain: expected a number or None, found {self.adaptive_gain!r}")
        if self.selection not in SELECTION_RULES:
            raise ConfigError(f"selection: expected one of {list(SELECTION_RULES)}, found {self.selection!r}")
        if isinstance(self.random_directions, bool) or not isinstance(self.random_directions, int) \
                or self.random_directions < 0:
            raise ConfigError(f"random_directions: expected an integer >= 0, found {self.random_directions!r}")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"protocol: expected one of {list(PROTOCOLS)}, found {self.protocol!r}")
        dev_test = self.protocol == "dev_test"
        if isinstance(self.positions, str):
            self._set("positions", tuple(p.strip() for p in self.positions.split(",") if p.strip()) or None)
        if self.positions is None:
            self._set("positions", ("both",) if dev_test else ("last_prompt",))
        modes = self.modes if self.modes is not None else (("mean", "per_input") if dev_test else ("mean",))
        if isinstance(modes, str):
            modes = tuple(m.strip() for m in modes.split(",") if m.strip())
        self._set("modes", MODES.check_distinct(modes, option="modes"))
        sweep = self.sweep()  # betas, layers, positions, formats, sizes, backend
        for name in ("betas", "layers", "positions", "formats"):
            self._set(name, getattr(sweep, name))
        if self.vector is None:
            raise ConfigError("vector: expected a steering vector file or a SteeringVector, found None")
        if isinstance(self.vector, str):
            self._set("vector", Path(self.vector))
        self._set("out", Path(self.out))
        if self.control_model is not None:
            if not isinstance(self.control_model, (str, Path)) or not str(self.control_model):
                raise ConfigError(f"control_model: expected a model name or checkpoint folder, found {self.control_model!r}")
            if self.protocol != "dev_test":
                raise ConfigError("control_model: expected protocol='dev_test' (it runs the setting chosen on dev), "
                                  f"found {self.protocol!r}")
            self._set("control_model", str(self.control_model))

    def sweep(self, gate_heads: tuple = ()):
        """The sweep's :class:`~auralens.steering.evaluate.SweepConfig` (adaptive beta only with heads)."""
        return SweepConfig(
            betas=tuple(self.betas), layers=None if self.layers is None else tuple(self.layers),
            positions=tuple(self.positions), formats=tuple(self.formats), max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size, backend=self.backend, n_boot=self.n_boot, seed=self.seed,
            adaptive_gain=self.adaptive_gain if gate_heads else None, adaptive_heads=tuple(gate_heads),
        )


@takes_config(SteerEvalConfig)
def stage_steer_eval(cfg: SteerEvalConfig, *, lm=None, control_lm=None, quiet: bool = False) -> dict[str, Any]:
    """Sweep beta x layer x position mode with ``vector`` (a file or a SteeringVector) and its
    controls on ``n`` items of ``data`` (data seed ``seed``, also the controls' seed); write the
    run folder ``out`` (see the module docstring) and return the summary.  Options:
    :class:`SteerEvalConfig` (or its fields as keywords).

    ``adaptive_gain``: steer with adaptive beta (:class:`auralens.steering.apply.AdaptiveAlpha`) gated
    by ``adaptive_heads`` (same spellings as ``heads_from``; default: the vector's own heads).
    ``control_model`` (dev_test only; ``control_lm``: that model already loaded): see
    :func:`auralens.steering.protocol.run_dev_test`."""
    from auralens.steering import protocol  # heavy: torch through the directions and their controls

    if cfg.protocol == "dev_test":
        return protocol.run_dev_test(cfg, lm=lm, control_lm=control_lm, quiet=quiet)
    return protocol.run_in_sample(cfg, lm=lm, quiet=quiet)
