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
  :mod:`interp.schemas`; the papers' numbers: :mod:`interp.papers`
- every figure: :mod:`auralens.figures`; errors: one family under :class:`AuralensError`
"""

from __future__ import annotations

import importlib
from typing import Any

from interp import __version__

#: public name -> (module, attribute in it); attribute None: the module itself
_EXPORTS: dict[str, tuple[str, str | None]] = {
    # models, data, generation, attention yield
    "load_model": ("interp.loading", "load_model"),
    "LoadedModel": ("interp.loading", "LoadedModel"),
    "load_dataset": ("interp.datasets", "load_dataset"),
    "Item": ("interp.items", "Item"),
    "GenerationConfig": ("interp.generation", "GenerationConfig"),
    "model_inputs": ("interp.generation", "model_inputs"),
    "generate_batch": ("interp.generation", "generate_batch"),
    "YieldRecorder": ("interp.attention_yield", "YieldRecorder"),
    "audio_mask_from_ids": ("interp.attention_yield", "audio_mask_from_ids"),
    # the stages
    "stage_eval": ("auralens.stages", "stage_eval"),
    "stage_record": ("interp.record", "stage_record"),
    "stage_probe": ("probes.pipeline", "stage_probe"),
    "stage_steer_fit": ("steering.pipeline", "stage_steer_fit"),
    "stage_steer_eval": ("steering.pipeline", "stage_steer_eval"),
    "stage_compare": ("auralens.compare", "stage_compare"),
    "run_demo": ("auralens.demo", "run_demo"),
    # probes
    "ProbeConfig": ("probes.fit", "ProbeConfig"),
    "fit_probe": ("probes.fit", "fit_probe"),
    "run_probes": ("probes.fit", "run_probes"),
    # steering vectors
    "SteeringVector": ("steering.vector", "SteeringVector"),
    "apply_vector": ("steering.apply", "apply_vector"),
    "load_vector": ("steering.formats", "load_vector"),
    "export_vector": ("steering.formats", "export"),
    # run folders, tables, report, papers, figures
    "RunFolder": ("interp.runs", "RunFolder"),
    "read_table": ("dashboards.data", "read_table"),
    "read_item": ("dashboards.data", "read_item"),
    "write_report": ("dashboards.report", "write_report"),
    "TABLES": ("interp.schemas", "TABLES"),
    "REPORTED": ("interp.papers", "REPORTED"),
    "figures": ("auralens.figures", None),
    # errors
    "AuralensError": ("interp.errors", "AuralensError"),
    "ArchitectureError": ("interp.errors", "ArchitectureError"),
    "AudioInputError": ("interp.errors", "AudioInputError"),
    "ConfigError": ("interp.errors", "ConfigError"),
    "DatasetError": ("interp.errors", "DatasetError"),
    "ProbeError": ("interp.errors", "ProbeError"),
    "PromptError": ("interp.errors", "PromptError"),
    "RunFolderError": ("interp.errors", "RunFolderError"),
    "VectorFileError": ("interp.errors", "VectorFileError"),
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
