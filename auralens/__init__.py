"""auralens: mechanistic interpretability for audio-language models.

The stable public surface, in one namespace::

    import auralens as al

    lm = al.load_model("micro")
    al.stage_record(model="micro", data="cafe", n=12, fmt="structured", out=OUT / "record", lm=lm)
    decay = al.read_table(OUT / "record", "decay.parquet")
    al.figures.decay_curves(decay).show()

Names are resolved on first use (PEP 562): ``import auralens`` imports no torch, transformers,
pandas or plotly and changes no global state.  The names live in the packages below; this
package is the top of the stack (it may import every other package, none imports it).

- models, data, generation, attention yield: :mod:`interp`
- the stages (each writes a run folder): :func:`stage_eval`, :func:`stage_record`,
  :func:`stage_probe`, :func:`stage_steer_fit`, :func:`stage_steer_eval`, :func:`stage_compare`
- probes: :mod:`probes`; steering vectors: :mod:`steering`
- reading run folders, the report: :mod:`dashboards`; the tables' columns:
  :mod:`auralens.interp.schemas`; the papers' numbers: :mod:`auralens.interp.papers`
- every figure: :mod:`auralens.figures`; errors: one family under :class:`AuralensError`
"""

from __future__ import annotations

import importlib
from typing import Any

from auralens.interp import __version__

#: public name -> (module, attribute in it); attribute None: the module itself
_EXPORTS: dict[str, tuple[str, str | None]] = {
    # models, data, generation, attention yield
    "load_model": ("auralens.interp.loading", "load_model"),
    "LoadedModel": ("auralens.interp.loading", "LoadedModel"),
    "load_dataset": ("auralens.interp.datasets", "load_dataset"),
    "Item": ("auralens.interp.items", "Item"),
    "GenerationConfig": ("auralens.interp.generation", "GenerationConfig"),
    "model_inputs": ("auralens.interp.generation", "model_inputs"),
    "generate_batch": ("auralens.interp.generation", "generate_batch"),
    "YieldRecorder": ("auralens.interp.attention_yield", "YieldRecorder"),
    "audio_mask_from_ids": ("auralens.interp.attention_yield", "audio_mask_from_ids"),
    # the stages
    "stage_eval": ("auralens.interp.evaluate", "stage_eval"),
    "stage_record": ("auralens.interp.record", "stage_record"),
    "stage_probe": ("auralens.probes.stage", "stage_probe"),
    "stage_steer_fit": ("auralens.steering.stage_fit", "stage_steer_fit"),
    "stage_steer_eval": ("auralens.steering.stage_eval", "stage_steer_eval"),
    "stage_compare": ("auralens.compare", "stage_compare"),
    "run_demo": ("auralens.demo", "run_demo"),
    # probes
    "ProbeConfig": ("auralens.probes.fit", "ProbeConfig"),
    "fit_probe": ("auralens.probes.fit", "fit_probe"),
    "run_probes": ("auralens.probes.tables", "run_probes"),
    # steering vectors
    "SteeringVector": ("auralens.steering.vector", "SteeringVector"),
    "apply_vector": ("auralens.steering.apply", "apply_vector"),
    "load_vector": ("auralens.steering.formats", "load_vector"),
    "export_vector": ("auralens.steering.formats", "export"),
    # run folders, tables, report, papers, figures
    "RunFolder": ("auralens.interp.runs", "RunFolder"),
    "read_table": ("auralens.dashboards.data", "read_table"),
    "read_item": ("auralens.dashboards.data", "read_item"),
    "write_report": ("auralens.dashboards.report", "write_report"),
    "TABLES": ("auralens.interp.schemas", "TABLES"),
    "REPORTED": ("auralens.interp.papers", "REPORTED"),
    "figures": ("auralens.figures", None),
    # errors
    "AuralensError": ("auralens.interp.errors", "AuralensError"),
    "ArchitectureError": ("auralens.interp.errors", "ArchitectureError"),
    "AudioInputError": ("auralens.interp.errors", "AudioInputError"),
    "ConfigError": ("auralens.interp.errors", "ConfigError"),
    "DatasetError": ("auralens.interp.errors", "DatasetError"),
    "ProbeError": ("auralens.interp.errors", "ProbeError"),
    "PromptError": ("auralens.interp.errors", "PromptError"),
    "RunFolderError": ("auralens.interp.errors", "RunFolderError"),
    "VectorFileError": ("auralens.interp.errors", "VectorFileError"),
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'auralens' has no attribute {name!r}") from None
    mod = importlib.import_module(module)
    value = mod if attribute is None else getattr(mod, attribute)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
