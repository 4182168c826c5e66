"""Numbers quoted from the papers this toolkit reproduces: typed here once, read everywhere.

They are *reported* by the authors for real models on real benchmarks, never measured here.
``auralens compare`` adds them to ``compare.parquet`` as ``source="reported"`` rows
(:func:`reported_rows`), the demo prints :func:`reported_summary`, and the notebooks show them
for scale.  Values are fractions; each note gives the number as the paper prints it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from auralens.interp.schemas import COMPARE

__all__ = ["GLAZER", "MPAR2", "REPORTED", "Reported", "reported_rows", "reported_summary"]

MPAR2 = "Mao et al., MPAR², arXiv 2603.02266"
GLAZER = "Glazer, Aharon, Fetaya, audio-specialist-head steering, Interspeech 2026"


@dataclass(frozen=True, kw_only=True)
class Reported:
    """One number from a paper, in the vocabulary of ``compare.parquet``."""

    system: str  # the paper's model (and method)
    metric: str  # accuracy | claim_accuracy | gain_vs_unsteered
    group: str  # the benchmark
    value: float  # a fraction (0.659 for 65.9 %)
    note: str  # the number as the paper states it, and where

    def row(self) -> dict:
        return {"organism": "", "system": self.system, "condition": self.group, "format": "", "metric": self.metric,
                "group": "all", "value": self.value, "note": self.note}


def _mpar2(system: str, metric: str, group: str, value: float, text: str) -> Reported:
    return Reported(system=system, metric=metric, group=group, value=value,
                    note=f"reported, not measured: {text} ({MPAR2})")


def _glazer(system: str, value: float, text: str) -> Reported:
    return Reported(system=system, metric="gain_vs_unsteered", group="MMAU", value=value,
                    note=f"reported, not measured: {text} ({GLAZER})")


REPORTED: tuple[Reported, ...] = (
    _mpar2("Qwen2.5-Omni-7B", "accuracy", "MMAU", 0.6590, "MMAU 65.90 before MPAR²"),
    _mpar2("Qwen2.5-Omni-7B+MPAR²", "accuracy", "MMAU", 0.7459, "MMAU 74.59 after MPAR² SFT + GRPO"),
    _mpar2("Qwen2.5-Omni-7B", "claim_accuracy", "CAFE perception", 0.3174,
           "CAFE perception accuracy 31.74 before MPAR²"),
    _mpar2("Qwen2.5-Omni-7B+MPAR²", "claim_accuracy", "CAFE perception", 0.6351,
           "CAFE perception accuracy 63.51 after MPAR²"),
    _glazer("Qwen2-Audio-7B-Instruct+steering", 0.080, "up to +8.0 points on MMAU, no training"),
    _glazer("R1-AQA+steering", 0.049, "up to +4.9 points on MMAU, no training"),
)


def _value(system: str, metric: str, group: str) -> float:
    return next(r.value for r in REPORTED if (r.system, r.metric, r.group) == (system, metric, group))


def reported_rows():
    """:data:`REPORTED` as ``compare.parquet`` rows (``source="reported"``, no CI, ``n`` 0)."""


    return COMPARE.frame([{**r.row(), "ci_low": np.nan, "ci_high": np.nan, "n": 0, "source": "reported"}
                          for r in REPORTED])


def reported_summary() -> str:
    """One sentence with every reported number, as the papers print them."""
    omni, mpar = "Qwen2.5-Omni-7B", "Qwen2.5-Omni-7B+MPAR²"
    mmau = (_value(omni, "accuracy", "MMAU"), _value(mpar, "accuracy", "MMAU"))
    cafe = (_value(omni, "claim_accuracy", "CAFE perception"), _value(mpar, "claim_accuracy", "CAFE perception"))
    qwen2 = _value("Qwen2-Audio-7B-Instruct+steering", "gain_vs_unsteered", "MMAU")
    r1 = _value("R1-AQA+steering", "gain_vs_unsteered", "MMAU")
    return (f"MPAR² on {omni}: MMAU {100 * mmau[0]:.2f} -> {100 * mmau[1]:.2f}, CAFE perception "
            f"{100 * cafe[0]:.2f} -> {100 * cafe[1]:.2f}; specialist-head steering up to "
            f"{100 * qwen2:+.1f} (Qwen2-Audio-7B-Instruct) and {100 * r1:+.1f} (R1-AQA) on MMAU")
