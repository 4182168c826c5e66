"""Architecture tables: where things live inside each supported LALM class.

One small table per transformers class (pyvene-style), plus an explicit override for anything
the tables do not know.  Nothing here guesses from module names at run time: an unknown class
gets an :class:`ArchitectureError` that says how to add a table.

Site vocabulary (TransformerLens-style), used by every recorder, probe and steering vector:

- ``lm.blocks.{L}.hook_resid_pre``   input of decoder layer L           [batch, pos, d_model]
- ``lm.blocks.{L}.hook_resid_post``  output of decoder layer L          [batch, pos, d_model]
- ``lm.blocks.{L}.attn.hook_z``      per-head attention output, i.e. the input of ``o_proj``
                                      [batch, pos, head * head_dim]
- ``audio_encoder.blocks.{L}.hook_resid_post``  output of audio-encoder layer L
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from interp.errors import ArchitectureError


@dataclass(frozen=True, kw_only=True)
class ArchTable:
    """Static module paths of one model class (dotted attribute paths from the top model)."""

    name: str
    model_class: str
    decoder_layers: str
    final_norm: str
    audio_layers: str
    audio_tower: str
    projector: str
    attn: str = "self_attn"  # relative to a decoder layer
    o_proj: str = "self_attn.o_proj"  # relative to a decoder layer
    text_config: str = "text_config"  # attribute of model.config holding the LM config
    audio_token_attr: str = "audio_token_id"  # attribute of model.config with the placeholder id
    # keyword of the processor's __call__ that takes audio arrays
    processor_audio_kwarg: str = "audio"
    # extra keyword arguments for generate() (e.g. Omni thinker needs none; kept for overrides)
    generate_kwargs: dict[str, Any] = field(default_factory=dict)

    def decoder_layer_path(self, layer: int) -> str:
        return f"{self.decoder_layers}.{layer}"


TABLES: dict[str, ArchTable] = {
    t.model_class: t
    for t in [
        ArchTable(
            name="qwen2_audio",
            model_class="Qwen2AudioForConditionalGeneration",
            decoder_layers="model.language_model.layers",
            final_norm="model.language_model.norm",
            audio_tower="model.audio_tower",
            audio_layers="model.audio_tower.layers",
            projector="model.multi_modal_projector",
        ),
        ArchTable(
            name="qwen2_5_omni_thinker",
            model_class="Qwen2_5OmniThinkerForConditionalGeneration",
            decoder_layers="model.language_model.layers",
            final_norm="model.language_model.norm",
            audio_tower="model.audio_tower",
            audio_layers="model.audio_tower.layers",
            projector="model.audio_tower.proj",
        ),
        ArchTable(
            name="audioflamingo3",
            model_class="AudioFlamingo3ForConditionalGeneration",
            decoder_layers="model.language_model.layers",
            final_norm="model.language_model.norm",
            audio_tower="model.audio_tower",
            audio_layers="model.audio_tower.layers",
            projector="model.multi_modal_projector",
        ),
    ]
}


def register_table(table: ArchTable, *, overwrite: bool = False) -> None:
    """Add a table for a new model class (the explicit override instead of guessing)."""
    if table.model_class in TABLES and not overwrite:
        raise ArchitectureError(
            f"a table for {table.model_class!r} already exists; pass overwrite=True to replace it"
        )
    TABLES[table.model_class] = table


def get_attr_path(root: Any, path: str) -> Any:
    obj = root
    for part in path.split("."):
        if part.isdigit():
            obj = obj[int(part)]
        else:
            if not hasattr(obj, part):
                raise ArchitectureError(
                    f"module path {path!r}: {type(obj).__name__} has no attribute {part!r}"
                )
            obj = getattr(obj, part)
    return obj


@dataclass(frozen=True, kw_only=True)
class Architecture:
    """A table resolved against one model instance: paths plus dimensions and token ids."""

    table: ArchTable
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_model: int
    vocab_size: int
    audio_token_id: int
    n_audio_layers: int
    d_audio: int

    @property
    def name(self) -> str:
        return self.table.name

    # --- modules -----------------------------------------------------------------------
    def decoder_layers(self, model: Any) -> Any:
        return get_attr_path(model, self.table.decoder_layers)

    def decoder_layer(self, model: Any, layer: int) -> Any:
        self.check_layer(layer)
        return self.decoder_layers(model)[layer]

    def attention(self, model: Any, layer: int) -> Any:
        return get_attr_path(self.decoder_layer(model, layer), self.table.attn)

    def o_proj(self, model: Any, layer: int) -> Any:
        return get_attr_path(self.decoder_layer(model, layer), self.table.o_proj)

    def audio_layer(self, model: Any, layer: int) -> Any:
        if not 0 <= layer < self.n_audio_layers:
            raise ArchitectureError(
                f"audio-encoder layer {layer} out of range: {self.table.name} has "
                f"{self.n_audio_layers} audio layers (0..{self.n_audio_layers - 1})"
            )
        return get_attr_path(model, self.table.audio_layers)[layer]

    def text_config(self, model: Any) -> Any:
        return getattr(model.config, self.table.text_config)

    def check_layer(self, layer: int) -> int:
        if not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise ArchitectureError(
                f"decoder layer {layer!r} out of range: {self.table.name} has {self.n_layers} "
                f"layers (0..{self.n_layers - 1})"
            )
        return layer

    # --- sites -------------------------------------------------------------------------
    def module_for_site(self, model: Any, site: str) -> tuple[Any, str]:
        """Map a site name to (module, 'output' | 'input')."""
        m = _SITE_RE.fullmatch(site)
        if m is None:
            raise ArchitectureError(
                f"unknown site {site!r}; expected one of lm.blocks.{{L}}.hook_resid_pre, "
                "lm.blocks.{L}.hook_resid_post, lm.blocks.{L}.attn.hook_z, "
                "audio_encoder.blocks.{L}.hook_resid_post"
            )
        where, layer, hook = m.group(1), int(m.group(2)), m.group(3)
        if where == "audio_encoder":
            return self.audio_layer(model, layer), "output"
        if hook == "hook_resid_post":
            return self.decoder_layer(model, layer), "output"
        if hook == "hook_resid_pre":
            return self.decoder_layer(model, layer), "input"
        return self.o_proj(model, layer), "input"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.table.name,
            "model_class": self.table.model_class,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "d_model": self.d_model,
            "audio_token_id": self.audio_token_id,
        }


_SITE_RE = re.compile(r"(lm|audio_encoder)\.blocks\.(\d+)\.(hook_resid_pre|hook_resid_post|attn\.hook_z)")


def site_name(layer: int, hook: str = "hook_resid_post", where: str = "lm") -> str:
    return f"{where}.blocks.{layer}.{hook}"


def parse_site(site: str) -> tuple[str, int, str]:
    m = _SITE_RE.fullmatch(site)
    if m is None:
        raise ArchitectureError(f"unknown site {site!r}")
    return m.group(1), int(m.group(2)), m.group(3)


def table_for_class(class_name: str) -> ArchTable:
    try:
        return TABLES[class_name]
    except KeyError:
        known = ", ".join(sorted(TABLES))
        raise ArchitectureError(
            f"no architecture table for model class {class_name!r} (known: {known}). Add one with "
            "interp.arch.register_table(ArchTable(name=..., model_class=..., decoder_layers=..., "
            "final_norm=..., audio_tower=..., audio_layers=..., projector=...))"
        ) from None


def describe(model: Any, table: ArchTable | None = None) -> Architecture:
    """Resolve the table of ``model``'s class against the instance (dims, token ids)."""
    table = table or table_for_class(type(model).__name__)
    cfg = model.config
    tcfg = getattr(cfg, table.text_config, None)
    if tcfg is None:
        raise ArchitectureError(f"{type(model).__name__}.config has no {table.text_config!r}")
    audio_token_id = getattr(cfg, table.audio_token_attr, None)
    if audio_token_id is None:
        raise ArchitectureError(
            f"{type(model).__name__}.config has no audio placeholder id {table.audio_token_attr!r}"
        )
    n_heads = tcfg.num_attention_heads
    head_dim = getattr(tcfg, "head_dim", None) or tcfg.hidden_size // n_heads
    layers = get_attr_path(model, table.decoder_layers)
    audio_layers = get_attr_path(model, table.audio_layers)
    acfg = getattr(cfg, "audio_config", None)
    d_audio = getattr(acfg, "d_model", None) or getattr(acfg, "hidden_size", 0)
    return Architecture(
        table=table,
        n_layers=len(layers),
        n_heads=n_heads,
        n_kv_heads=getattr(tcfg, "num_key_value_heads", None) or n_heads,
        head_dim=head_dim,
        d_model=tcfg.hidden_size,
        vocab_size=tcfg.vocab_size,
        audio_token_id=int(audio_token_id),
        n_audio_layers=len(audio_layers),
        d_audio=int(d_audio),
    )


def with_table(arch: Architecture, **changes: Any) -> Architecture:
    return replace(arch, table=replace(arch.table, **changes))
