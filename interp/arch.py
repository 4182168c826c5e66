"""Architecture tables: where things live inside each supported LALM class.

One small table per transformers class (pyvene-style), plus an explicit override for anything
the tables do not know.  Nothing here guesses from module names at run time: an unknown class
gets an :class:`ArchitectureError` that says how to add a table.

Site vocabulary (TransformerLens-style), used by every recorder, probe and steering vector,
resolved to a module and a side (its input or its output) by :meth:`Architecture.hook_point`
and nowhere else:

- ``lm.blocks.{L}.hook_resid_pre``   input of decoder layer L           [batch, pos, d_model]
- ``lm.blocks.{L}.hook_resid_post``  output of decoder layer L          [batch, pos, d_model]
- ``lm.blocks.{L}.attn.hook_z``      per-head attention output, i.e. the input of ``o_proj``
                                      [batch, pos, head * head_dim]
- ``audio_encoder.blocks.{L}.hook_resid_pre``   input of audio-encoder layer L
- ``audio_encoder.blocks.{L}.hook_resid_post``  output of audio-encoder layer L
- ``audio_encoder.blocks.{L}.attn.hook_z``      input of audio-encoder layer L's attention
                                                 output projection (``out_proj``)

Per-architecture facts that are not module paths live in the table too: whether the decoder
derives its own (3-D, multimodal) rotary positions (:attr:`ArchTable.own_position_ids`), the
container checkpoint classes that wrap the model (Qwen2.5-Omni thinker + talker), and other
spellings of the architecture's name.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auralens.interp.errors import ArchitectureError

#: How a processor bounds one clip (:attr:`ArchTable.audio_windowing`):
#:
#: - ``one_chunk``: one window of ``feature_extractor.chunk_length`` seconds, padded to it and cut
#:   past it (Qwen2-Audio: 30 s; Qwen2.5-Omni: 300 s); the maximum is that window.
#: - ``windows``: consecutive windows of ``feature_extractor.chunk_length`` seconds, each encoded on
#:   its own, the audio tokens of all windows in order; at most ``processor.max_audio_len //
#:   chunk_length`` whole windows (Audio Flamingo 3: 20 x 30 s = 600 s; GLM-ASR: 655 // 30 = 21
#:   windows, so 630 s, not the 655 s it names).
#: - ``unbounded``: the processor neither cuts nor windows the clip (Qwen3-ASR: its encoder
#:   chunks the mel frames itself, 13 tokens per 1-s window); the table's ``max_audio_seconds``
#:   (None: no maximum) is the maximum.
#: - ``padded_windows``: consecutive windows of ``feature_extractor.chunk_length`` seconds, each
#:   encoded on its own, the last one padded to a whole window *and given audio tokens for the
#:   padding* (Voxtral: 30-s windows, 375 tokens each, so a 3-s clip has 375 audio tokens, not 37).
#:   Token and time-bin seconds (auralens.interp.audio.token_seconds) then span the padded windows
#:   ``[0, ceil(seconds / window) * window]``, not the clip; the table's ``max_audio_seconds``
#:   (None: the processor cuts nothing) is the maximum.
AUDIO_WINDOWING = {"one_chunk": "one padded window", "windows": "whole windows up to max_audio_len",
                   "unbounded": "not cut by the processor",
                   "padded_windows": "whole windows, the padding of the last one has audio tokens too"}


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
    # attribute of model.config holding the LM config ("": model.config itself, as in Phi-4's flat config)
    text_config: str = "text_config"
    # (dotted) attribute of model.config with the placeholder id (Phi-4: "audio_config.audio_token_id")
    audio_token_attr: str = "audio_token_id"
    # attribute of model.config holding the audio encoder's config (Granite Speech: "encoder_config")
    audio_config: str = "audio_config"
    # keyword of the processor's __call__ that takes audio arrays
    processor_audio_kwarg: str = "audio"
    # extra keyword arguments for generate() (e.g. Omni thinker needs none; kept for overrides)
    generate_kwargs: dict[str, Any] = field(default_factory=dict)
    audio_o_proj: str = "self_attn.out_proj"  # relative to an audio-encoder layer
    # The decoder computes its own (multimodal, 3-D) rotary positions from the attention mask:
    # 1-D ``position_ids`` must not be passed to it (see auralens.interp.capture.with_position_ids).
    own_position_ids: bool = False
    # Checkpoint classes (config.json ``architectures[0]``) that wrap this model, the
    # transformers class that loads such a checkpoint, and its attribute holding this model.
    containers: tuple[str, ...] = ()
    container_class: str = ""
    container_attr: str = ""
    # Other spellings of the name (lower case), e.g. for test-model builders and the CLI.
    aliases: tuple[str, ...] = ()
    # How the processor bounds a clip (one of AUDIO_WINDOWING; see there), the released
    # checkpoint's maximum clip and window in seconds (None: the processor sets no maximum), and
    # the processor classes these limits apply to (auralens.interp.audio.audio_limits finds the table of a
    # processor by its class; the values the processor itself carries win at run time).
    audio_windowing: str = "one_chunk"
    max_audio_seconds: float | None = None
    window_seconds: float | None = None
    processor_classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        where = f"table {self.name!r}"
        if self.audio_windowing not in AUDIO_WINDOWING:
            raise ArchitectureError(
                f"{where}: audio_windowing expected one of {sorted(AUDIO_WINDOWING)}, found {self.audio_windowing!r}"
            )
        for key in ("max_audio_seconds", "window_seconds"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
                raise ArchitectureError(f"{where}: {key} expected a positive number of seconds or null, found {v!r}")
        if self.audio_windowing in ("windows", "padded_windows") and self.window_seconds is None:
            raise ArchitectureError(
                f"{where}: audio_windowing {self.audio_windowing!r} expected window_seconds, found null"
            )
        if (self.max_audio_seconds is not None and self.window_seconds is not None
                and self.max_audio_seconds < self.window_seconds):
            raise ArchitectureError(
                f"{where}: max_audio_seconds expected >= window_seconds ({self.window_seconds}), "
                f"found {self.max_audio_seconds}"
            )

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
            aliases=("qwen2audio",),
            max_audio_seconds=30.0,
            window_seconds=30.0,
            processor_classes=("Qwen2AudioProcessor",),
        ),
        ArchTable(
            name="qwen2_5_omni_thinker",
            model_class="Qwen2_5OmniThinkerForConditionalGeneration",
            decoder_layers="model.language_model.layers",
            final_norm="model.language_model.norm",
            audio_tower="model.audio_tower",
            audio_layers="model.audio_tower.layers",
            projector="model.audio_tower.proj",
            own_position_ids=True,
            # the hub checkpoints are thinker + talker; auralens studies the thinker (text out)
            containers=("Qwen2_5OmniForConditionalGeneration", "Qwen2_5OmniModel"),
            container_class="Qwen2_5OmniForConditionalGeneration",
            container_attr="thinker",
            aliases=("qwen2_5_omni",),
            # the released preprocessor_config.json: chunk_length 300, n_samples 4800000
            max_audio_seconds=300.0,
            window_seconds=300.0,
            processor_classes=("Qwen2_5OmniProcessor",),
        ),
        ArchTable(
            name="audioflamingo3",
            model_class="AudioFlamingo3ForConditionalGeneration",
            decoder_layers="model.language_model.layers",
            final_norm="model.language_model.norm",
            audio_tower="model.audio_tower",
            audio_layers="model.audio_tower.layers",
            projector="model.multi_modal_projector",
            aliases=("audio_flamingo_3",),
            audio_windowing="windows",
            max_audio_seconds=600.0,
            window_seconds=30.0,
            processor_classes=("AudioFlamingo3Processor",),
        ),
        ArchTable(
            name="musicflamingo",
            model_class="MusicFlamingoForConditionalGeneration",
            decoder_layers="model.language_model.layers",
            final_norm="model.language_model.norm",
            audio_tower="model.audio_tower",
            audio_layers="model.audio_tower.layers",
            projector="model.multi_modal_projector",
            aliases=("music_flamingo",),
            audio_windowing="windows",
            # MusicFlamingoProcessor: max_audio_len 1200 over 30-s windows
            max_audio_seconds=1200.0,
            window_seconds=30.0,
            processor_classes=("MusicFlamingoProcessor",),
        ),
        ArchTable(
            name="glmasr",
            model_class="GlmAsrForConditionalGeneration",
            decoder_layers="model.language_model.layers",
            final_norm="model.language_model.norm",
            audio_tower="model.audio_tower",
            audio_layers="model.audio_tower.layers",
            projector="model.multi_modal_projector",
            audio_o_proj="self_attn.o_proj",
            aliases=("glm_asr",),
            audio_windowing="windows",
            # GlmAsrProcessor: max_audio_len 655 -> 655 // 30 = 21 whole 30-s windows = 630 s
            max_audio_seconds=630.0,
            window_seconds=30.0,
            processor_classes=("GlmAsrProcessor",),
        ),
        ArchTable(
            name="qwen3_asr",
            model_class="Qwen3ASRForConditionalGeneration",
            decoder_layers="model.language_model.layers",
            final_norm="model.language_model.norm",
            audio_tower="model.audio_tower",
            audio_layers="model.audio_tower.layers",
            projector="model.multi_modal_projector",
            aliases=("qwen3asr",),
            # Qwen3ASRProcessor: truncation=False; the encoder windows 100 mel frames (1 s) itself
            audio_windowing="unbounded",
            max_audio_seconds=None,
            window_seconds=1.0,
            processor_classes=("Qwen3ASRProcessor",),
        ),
        ArchTable(
            name="voxtral",
            model_class="VoxtralForConditionalGeneration",
            decoder_layers="model.language_model.layers",
            final_norm="model.language_model.norm",
            audio_tower="model.audio_tower",
            audio_layers="model.audio_tower.layers",
            projector="model.multi_modal_projector",
            # audio_token_id 24 ([AUDIO] of the tekken tokenizer); 4 encoder frames per token
            aliases=("voxtral_mini", "voxtral_small"),
            # VoxtralProcessor (through mistral_common) pads each clip to a multiple of 30 s
            # (pad_to_multiple_of 480000, tekken chunk_length_s 30) and gives the padding audio tokens
            # too (12.5 per second, 375 per window); it cuts nothing: the bound is the 32k context
            # (the model card states 30 min for transcription, 40 min for understanding).  Audio
            # enters only through apply_chat_template (auralens.interp.prompts.build_inputs has the branch).
            audio_windowing="padded_windows",
            max_audio_seconds=None,
            window_seconds=30.0,
            processor_classes=("VoxtralProcessor",),
        ),
        ArchTable(
            name="granite_speech",
            model_class="GraniteSpeechForConditionalGeneration",
            decoder_layers="model.language_model.layers",
            final_norm="model.language_model.norm",
            audio_tower="model.encoder",
            audio_layers="model.encoder.layers",
            # a Q-Former over windows of 15 encoder frames, 3 queries each, then a linear map
            projector="model.projector",
            audio_o_proj="attn.to_out",  # the conformer block's attention output projection
            audio_config="encoder_config",
            aliases=("granite_speech_3_3", "granitespeech"),
            # GraniteSpeechFeatureExtractor cuts nothing; the conformer attends in blocks of
            # context_size frames and the projector's windows are 0.3 s (10 tokens per second)
            audio_windowing="unbounded",
            max_audio_seconds=None,
            window_seconds=None,
            processor_classes=("GraniteSpeechAudioProcessor", "GraniteSpeechProcessor"),
        ),
        ArchTable(
            name="phi4_multimodal",
            model_class="Phi4MultimodalForCausalLM",
            decoder_layers="model.layers",
            final_norm="model.norm",
            audio_tower="model.embed_tokens_extend.audio_embed.encoder",
            audio_layers="model.embed_tokens_extend.audio_embed.encoder.encoders",
            # the speech projection (up, GELU, down) into the decoder width
            projector="model.embed_tokens_extend.audio_embed.down_proj_for_speech",
            audio_o_proj="self_attn.o_proj",
            text_config="",  # a flat config: the decoder's fields are model.config's own
            audio_token_attr="audio_config.audio_token_id",
            aliases=("phi4mm", "phi_4_multimodal"),
            # Phi4MultimodalFeatureExtractor cuts nothing (one token per 8 frames of 10 ms)
            audio_windowing="unbounded",
            max_audio_seconds=None,
            window_seconds=None,
            processor_classes=("Phi4AudioProcessor", "Phi4MultimodalProcessor"),
        ),
        ArchTable(
            name="qwen3_omni_moe_thinker",
            model_class="Qwen3OmniMoeThinkerForConditionalGeneration",
            decoder_layers="model.language_model.layers",
            final_norm="model.language_model.norm",
            audio_tower="model.audio_tower",
            audio_layers="model.audio_tower.layers",
            projector="model.audio_tower.proj2",
            own_position_ids=True,
            # the hub checkpoints are thinker + talker (+ code2wav); auralens studies the thinker
            containers=("Qwen3OmniMoeForConditionalGeneration",),
            container_class="Qwen3OmniMoeForConditionalGeneration",
            container_attr="thinker",
            aliases=("qwen3_omni_moe", "qwen3_omni"),
            # Qwen3OmniMoeProcessor: truncation=False; the encoder windows 100 mel frames (1 s,
            # 13 tokens) itself, as Qwen3-ASR's
            audio_windowing="unbounded",
            max_audio_seconds=None,
            window_seconds=1.0,
            processor_classes=("Qwen3OmniMoeAudioProcessor", "Qwen3OmniMoeProcessor"),
        ),
    ]
}


#: Audio-in/text-out classes of transformers 5.24 without a table yet, and why (checked against
#: what can be built offline here: no hub access; no torchaudio / torchvision / timm in the
#: environment).  A table needs a tiny model + locally built processor that pass the
#: exactness tests (tests/test_attention_yield.py) before it is added.
UNSUPPORTED: dict[str, str] = {
    "Gemma3nForConditionalGeneration": (
        "the class builds a timm MobileNetV5 vision tower (timm not installed: timm requires torchvision, "
        "which has no CPU build for torch 2.13 on the index), so no tiny model "
        "can be instantiated; its decoder is hybrid: the yield recorder refuses the "
        "sliding-window layers (ArchitectureError 'decoder layer L uses sliding-window attention "
        "(window W)'), and its KV-shared layers are unverified"
    ),
}


def register_table(table: ArchTable, *, overwrite: bool = False) -> None:
    """Add a table for a new model class (the explicit override instead of guessing)."""
    if table.model_class in TABLES and not overwrite:
        raise ArchitectureError(
            f"a table for {table.model_class!r} already exists; pass overwrite=True to replace it"
        )
    TABLES[table.model_class] = table


ENTRY_POINT_GROUP = "auralens.arch_tables"
_TUPLE_FIELDS = ("containers", "aliases", "processor_classes")
_SECONDS_FIELDS = ("max_audio_seconds", "window_seconds")


def table_from_dict(data: Any, *, where: str = "table") -> ArchTable:
    """An :class:`ArchTable` from plain data (a JSON object), each key checked: an unknown key, a
    missing required key or a value of the wrong type is an :class:`ArchitectureError` naming it."""

    if not isinstance(data, dict):
        raise ArchitectureError(f"{where}: expected a JSON object with ArchTable fields, found {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(ArchTable)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ArchitectureError(f"{where}: unknown key(s) {unknown}; expected keys among {sorted(fields)}")
    required = [n for n, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in data]
    if missing:
        raise ArchitectureError(f"{where}: expected the required key(s) {missing}, found only {sorted(data)}")
    values: dict[str, Any] = {}
    for name, value in data.items():
        default = fields[name].default
        if name in _TUPLE_FIELDS:
            ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
            value = tuple(value) if ok else value
            kind = "a list of strings"
        elif name == "generate_kwargs":
            ok, kind = isinstance(value, dict), "an object"
        elif name in _SECONDS_FIELDS:
            ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0)
            value = float(value) if ok and value is not None else value
            kind = "a positive number of seconds or null"
        elif name == "audio_windowing":
            ok, kind = value in AUDIO_WINDOWING, f"one of {sorted(AUDIO_WINDOWING)}"
        elif isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif name in required:
            ok, kind = isinstance(value, str) and bool(value), "a non-empty string"
        else:
            ok, kind = isinstance(value, str), "a string"
        if not ok:
            raise ArchitectureError(f"{where}: key {name!r} expected {kind}, found {value!r}")
        values[name] = value
    try:
        return ArchTable(**values)
    except ArchitectureError as exc:  # the cross-field checks of ArchTable.__post_init__
        raise ArchitectureError(f"{where}: {exc}") from None


def load_table_file(path: str | Any) -> list[ArchTable]:
    """Register the table(s) in a JSON file (one object, or a list of them) for classes auralens
    does not know, or to override a built-in table on purpose (``auralens --arch-table FILE``)."""

    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except (OSError, ValueError):
        mode = None  # missing or unreadable: named by the read below
    if mode is not None and not stat.S_ISREG(mode):  # a FIFO would block the read: refused by type
        found = "a directory" if stat.S_ISDIR(mode) else "a FIFO, socket or device"
        raise ArchitectureError(f"--arch-table {str(p)!r}: expected a JSON file, found {found}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArchitectureError(f"--arch-table {str(p)!r}: expected a JSON file, found nothing there") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArchitectureError(f"--arch-table {str(p)!r}: expected a UTF-8 JSON file, found {exc}") from None
    except RecursionError:
        raise ArchitectureError(f"--arch-table {str(p)!r}: expected a JSON table, found nesting too deep to parse") from None
    rows = data if isinstance(data, list) else [data]
    if not rows:
        raise ArchitectureError(f"--arch-table {str(p)!r}: expected a table object or a non-empty list of them, "
                                "found an empty list")
    tables = [table_from_dict(row, where=f"--arch-table {str(p)!r} table {i}") for i, row in enumerate(rows)]
    for table in tables:
        register_table(table, overwrite=True)
    return tables


def load_entry_point_tables() -> list[ArchTable]:
    """Tables that installed packages provide under the ``auralens.arch_tables`` entry-point
    group (each entry point loads an ArchTable, a dict of its fields, or a list of either).
    Called on the first unknown class, never at import."""

    found = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        for item in obj if isinstance(obj, (list, tuple)) else [obj]:
            table = item if isinstance(item, ArchTable) else table_from_dict(item, where=f"entry point {ep.name!r}")
            if table.model_class not in TABLES:
                register_table(table)
            found.append(table)
    return found


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
        return text_config_of(model.config, self.table)

    def check_layer(self, layer: int) -> int:
        if not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise ArchitectureError(
                f"decoder layer {layer!r} out of range: {self.table.name} has {self.n_layers} "
                f"layers (0..{self.n_layers - 1})"
            )
        return layer

    # --- sites -------------------------------------------------------------------------
    def hook_point(self, site: str) -> HookPoint:
        """Where ``site`` lives in this architecture: module path and input/output side.

        The one resolver of the site vocabulary (module docstring); an unknown site or a layer
        out of range is an :class:`ArchitectureError` naming the site."""
        where, layer, hook = parse_site(site)
        if where == "audio_encoder":
            if not 0 <= layer < self.n_audio_layers:
                raise ArchitectureError(
                    f"site {site!r}: audio-encoder layer {layer} out of range: {self.table.name} has "
                    f"{self.n_audio_layers} audio-encoder layers (0..{self.n_audio_layers - 1})"
                )
            base, attn_out = f"{self.table.audio_layers}.{layer}", self.table.audio_o_proj
        else:
            if not 0 <= layer < self.n_layers:
                raise ArchitectureError(
                    f"site {site!r}: decoder layer {layer} out of range: {self.table.name} has "
                    f"{self.n_layers} decoder layers (0..{self.n_layers - 1})"
                )
            base, attn_out = self.table.decoder_layer_path(layer), self.table.o_proj
        if hook == "hook_resid_post":
            path, kind = base, "output"
        elif hook == "hook_resid_pre":
            path, kind = base, "input"
        else:  # attn.hook_z: what the attention output projection reads
            path, kind = f"{base}.{attn_out}", "input"
        return HookPoint(site=site, where=where, layer=layer, hook=hook, path=path, kind=kind)

    def hook_points(self, sites: Sequence[str]) -> list[HookPoint]:
        """:meth:`hook_point` of every distinct site, in the order a forward pass reaches them."""
        return sorted((self.hook_point(s) for s in dict.fromkeys(sites)), key=lambda p: p.order)

    def module_for_site(self, model: Any, site: str) -> tuple[Any, str]:
        """Map a site name to (module of ``model``, 'output' | 'input')."""
        point = self.hook_point(site)
        return get_attr_path(model, point.path), point.kind

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


#: the hooks of one block, in the order a forward pass reaches them
SITE_HOOKS: tuple[str, ...] = ("hook_resid_pre", "attn.hook_z", "hook_resid_post")
#: the stacks of blocks, in the order a forward pass reaches them
SITE_STACKS: tuple[str, ...] = ("audio_encoder", "lm")
_SITE_RE = re.compile(r"(lm|audio_encoder)\.blocks\.(\d+)\.(hook_resid_pre|hook_resid_post|attn\.hook_z)")
_SITE_FORMS = ", ".join(f"{w}.blocks.{{L}}.{h}" for w in ("lm", "audio_encoder") for h in SITE_HOOKS)


@dataclass(frozen=True, kw_only=True)
class HookPoint:
    """One site resolved against an architecture (:meth:`Architecture.hook_point`).

    ``path`` is the dotted module path from the top model (also valid on an nnsight envoy of
    it); ``kind`` says whether the site is that module's ``"input"`` (first positional argument
    of its forward) or its ``"output"`` (first element when the forward returns a tuple)."""

    site: str
    where: str  # "lm" | "audio_encoder"
    layer: int
    hook: str  # one of SITE_HOOKS
    path: str
    kind: str  # "input" | "output"

    @property
    def order(self) -> tuple[int, int, int]:
        """Sort key of execution order: audio encoder before decoder, layer, then hook."""
        return (SITE_STACKS.index(self.where), self.layer, SITE_HOOKS.index(self.hook))


def site_name(layer: int, hook: str = "hook_resid_post", where: str = "lm") -> str:
    return f"{where}.blocks.{layer}.{hook}"


def parse_site(site: str) -> tuple[str, int, str]:
    """``(stack, layer, hook)`` of a concrete site; :class:`ArchitectureError` if unknown."""
    m = _SITE_RE.fullmatch(site) if isinstance(site, str) else None
    if m is None:
        raise ArchitectureError(f"unknown site {site!r}; expected one of {_SITE_FORMS} (L an integer layer)")
    return m.group(1), int(m.group(2)), m.group(3)


def table_for_class(class_name: str) -> ArchTable:
    if class_name not in TABLES:
        load_entry_point_tables()  # packages may provide it (first miss only costs a scan)
    try:
        return TABLES[class_name]
    except KeyError:
        known = ", ".join(sorted(TABLES))
        why = f" ({UNSUPPORTED[class_name]})" if class_name in UNSUPPORTED else ""
        raise ArchitectureError(
            f"no architecture table for model class {class_name!r}{why}; auralens knows: {known}. "
            "Give one without Python: `auralens --arch-table FILE.json ...` (a JSON object with the "
            "ArchTable fields name, model_class, decoder_layers, final_norm, audio_tower, audio_layers, "
            f"projector, ...), a package entry point in the {ENTRY_POINT_GROUP!r} group, or "
            "auralens.interp.arch.register_table(ArchTable(...))"
        ) from None


def container_table(class_name: str) -> ArchTable | None:
    """The table of the model that a container checkpoint class wraps (None: not a container)."""
    for table in TABLES.values():
        if class_name in table.containers:
            return table
    return None


def table_for_checkpoint(class_name: str) -> ArchTable:
    """The table for the top class a checkpoint's config.json names: that class's own table,
    or, for a container (Qwen2.5-Omni thinker + talker), the table of the model it wraps."""
    return container_table(class_name) or table_for_class(class_name)


def containers() -> dict[str, str]:
    """``{container class: attribute holding the studied model}`` over every table."""
    return {c: t.container_attr for t in TABLES.values() for c in t.containers}


def table_by_name(name: str) -> ArchTable:
    """The table of an architecture named by its table name, its class name or an alias
    (case-insensitive)."""
    key = name.strip().lower() if isinstance(name, str) else name
    for table in TABLES.values():
        if key in (table.name, table.model_class.lower(), *table.aliases):
            return table
    known = ", ".join(sorted(t.name for t in TABLES.values()))
    raise ArchitectureError(
        f"architecture {name!r}: expected a table name ({known}), a model class name or an alias"
    )


def text_config_of(config: Any, table: ArchTable) -> Any:
    """The decoder's config: ``config.<table.text_config>``, or ``config`` itself when that is ""."""
    return getattr(config, table.text_config, None) if table.text_config else config


def audio_token_id_of(config: Any, table: ArchTable) -> Any:
    """The audio placeholder id at the table's (dotted) ``audio_token_attr`` of ``config``
    (None where an attribute on the way is missing)."""
    value = config
    for part in table.audio_token_attr.split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    return value


def describe(model: Any, table: ArchTable | None = None) -> Architecture:
    """Resolve the table of ``model``'s class against the instance (dims, token ids)."""
    table = table or table_for_class(type(model).__name__)
    cfg = model.config
    tcfg = text_config_of(cfg, table)
    if tcfg is None:
        raise ArchitectureError(f"{type(model).__name__}.config has no {table.text_config!r}")
    audio_token_id = audio_token_id_of(cfg, table)
    if audio_token_id is None:
        raise ArchitectureError(
            f"{type(model).__name__}.config has no audio placeholder id {table.audio_token_attr!r}"
        )
    n_heads = tcfg.num_attention_heads
    head_dim = getattr(tcfg, "head_dim", None) or tcfg.hidden_size // n_heads
    layers = get_attr_path(model, table.decoder_layers)
    audio_layers = get_attr_path(model, table.audio_layers)
    acfg = getattr(cfg, table.audio_config, None)
    d_audio: Any = getattr(acfg, "d_model", None) or getattr(acfg, "hidden_size", 0)
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
