"""Model loading: ``micro``, a Hugging Face id, or a local checkpoint folder — one code path."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auralens.interp.arch import Architecture, ArchTable, container_table, containers, describe, table_for_checkpoint
from auralens.interp.compat import unwrap_container
from auralens.interp.errors import ArchitectureError, ConfigError
from auralens.interp.micro import EMBEDDED, available, train_command, weights_folder
from auralens.interp.pause import generate_kwargs_for, read_pause_config
from auralens.interp.processors import LOCAL_PROCESSORS, build_processor
from auralens.interp.smol import NAME as SMOL_AUDIO
from auralens.interp.smol.assemble import assembled_folder
from auralens.interp.templates import check_template, default_template

DTYPES = ("auto", "float32", "bfloat16", "float16")
# Checkpoints whose top class wraps the audio-language model we study: {container class:
# attribute holding the LALM}.  The facts live in the architecture tables (ArchTable.containers,
# e.g. Qwen2.5-Omni thinker + talker); this mapping is derived from them for older callers.
CONTAINERS = containers()


@dataclass(kw_only=True)
class LoadedModel:
    """A model with its processor, architecture table and where it came from."""

    model: Any
    processor: Any
    arch: Architecture
    model_id: str
    source: str  # resolved folder or hub id

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def pause(self):
        """The folder's PAUSE rule (:mod:`auralens.interp.pause`), or ``None``."""
        if not hasattr(self, "_pause"):

            self._pause = read_pause_config(self.source)
        return self._pause

    @property
    def generate_kwargs(self) -> dict:
        """What every ``generate`` call of this model adds: the table's ``generate_kwargs`` and the
        folder's PAUSE rule, if it has one (a PAUSE-trained model is measured as it was trained)."""

        return {**self.arch.table.generate_kwargs, **generate_kwargs_for(self.pause)}

    @property
    def prompt_template(self) -> str:
        """The prompt template every prompt of this model is built with
        (:mod:`auralens.interp.templates`): the one set with ``--prompt-template``
        (:meth:`use_template`), else the folder's ``auralens_model.json``, else by its id."""
        if not getattr(self, "_template", None):
            info_path = Path(self.source) / "auralens_model.json"
            info = json.loads(info_path.read_text()) if info_path.is_file() else None
            self._template = default_template(f"{self.model_id} {self.source}", info)
        return self._template

    def use_template(self, name: str | None) -> LoadedModel:
        """Build this model's prompts with template ``name`` (None or "": keep the default)."""
        if name:
            self._template = check_template(name)
        return self


def resolve_source(name_or_path: str) -> str:
    """An embedded model's name (:data:`auralens.interp.micro.EMBEDDED`: ``micro``, ``micro-prior``...)
    -> its weights folder; ``smol-audio`` -> its assembled checkpoint folder (built once from the
    installed pretrained parts, :mod:`auralens.interp.smol`); anything else is passed through."""
    if name_or_path == SMOL_AUDIO:
        return str(assembled_folder())
    if name_or_path in EMBEDDED:
        folder = weights_folder(name_or_path)
        if not available(name_or_path):
            raise ConfigError(
                f"embedded model {name_or_path!r}: expected weights in {folder}, found none; "
                f"train them with `{train_command(name_or_path)}`"
            )
        return str(folder)
    return name_or_path


def _torch_dtype(dtype: str):
    import torch

    if dtype not in DTYPES:
        raise ConfigError(f"dtype: expected one of {DTYPES}, found {dtype!r}")
    return "auto" if dtype == "auto" else getattr(torch, dtype)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(
    name_or_path: str = "micro",
    *,
    dtype: str = "auto",
    device: str | None = None,
    device_map: str | dict | None = None,
    attn_implementation: str = "sdpa",
    table: ArchTable | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a model, its processor and its architecture table.

    ``device_map="auto"`` is passed through to transformers (for a model that does not fit one
    GPU); otherwise the model goes to ``device`` (CUDA when present)."""
    import transformers
    from transformers import AutoConfig

    source = resolve_source(name_or_path)
    if not Path(source).exists() and Path(source).is_absolute():
        raise ConfigError(f"model {name_or_path!r}: expected a local checkpoint folder or HF id, found no folder {source}")
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    archs = list(getattr(config, "architectures", None) or [])
    container = container_table(archs[0]) if archs else None
    if table is None:
        if not archs:
            raise ArchitectureError(f"model {name_or_path!r}: its config.json names no architectures; pass table=...")
        table = table_for_checkpoint(archs[0])
    if container is not None:
        cls = getattr(transformers, container.container_class, None)
        if cls is None:
            raise ArchitectureError(
                f"model {name_or_path!r}: transformers {transformers.__version__} has no class "
                f"{container.container_class!r}"
            )
        kwargs = {"dtype": _torch_dtype(dtype), "attn_implementation": attn_implementation}
        if device_map is not None:
            kwargs["device_map"] = device_map
        outer = cls.from_pretrained(source, trust_remote_code=trust_remote_code, **kwargs)

        model = unwrap_container(outer, container.container_attr)
        return _finish(model, source, name_or_path, table, device, device_map, trust_remote_code)
    cls = getattr(transformers, table.model_class, None)
    if cls is None:
        raise ArchitectureError(
            f"model {name_or_path!r}: transformers {transformers.__version__} has no class {table.model_class!r}"
        )
    kwargs: dict[str, Any] = {"dtype": _torch_dtype(dtype), "attn_implementation": attn_implementation}
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = cls.from_pretrained(source, trust_remote_code=trust_remote_code, **kwargs)
    return _finish(model, source, name_or_path, table, device, device_map, trust_remote_code)


def _finish(model, source: str, name_or_path: str, table: ArchTable, device, device_map, trust_remote_code: bool):
    from transformers import AutoProcessor

    if device_map is None:
        model = model.to(device or default_device())
    model.eval()
    if table.name in LOCAL_PROCESSORS:  # the class's own processor needs torchaudio / torchvision
        processor = build_processor(table.name, source, trust_remote_code=trust_remote_code)
    else:
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    if getattr(processor, "tokenizer", None) is not None:
        processor.tokenizer.padding_side = "left"
    arch = describe(model, table)
    return LoadedModel(model=model, processor=processor, arch=arch, model_id=name_or_path, source=source)
