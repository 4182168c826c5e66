"""Every reliance on a library's *private* or version-specific behaviour, in one place.

transformers, TransformerLens and friends change internals between minor releases
(transformers 5.24 renamed the KV cache that ``generate`` hands to the model's forward from
``past_key_values=`` to ``cache=``; the recorder took every decode step for a fresh prompt).
Code elsewhere in auralens calls these functions instead of touching the internals, and
``tests/unit/test_compat.py`` checks each one against the installed releases, including the calling
conventions of every supported transformers minor (5.23: ``past_key_values``; 5.24: ``cache``).

The tested range of each fast-moving package is :data:`TESTED`; ``pyproject.toml`` bounds
the dependencies to it and ``requirements.lock`` pins the exact versions ``make`` installs.
``make compat`` runs the recorder, steering and probe tests against the newest releases.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from auralens.interp.errors import ArchitectureError

# Tested ranges: (oldest tested, first untested).  Keep in sync with pyproject.toml (a test
# checks that they agree).
TESTED: dict[str, tuple[str, str]] = {
    "transformers": ("5.23", "5.26"),
    "nnsight": ("0.8.1", "0.9"),
    "transformer-lens": ("4.3", "4.4"),
    "trl": ("1.16", "1.17"),
    "accelerate": ("1.15", "1.17"),
    "streamlit": ("1.67", "1.68"),
    "mistral_common": ("1.12", "1.14"),  # Voxtral's tokenizer (MistralCommonBackend)
}


# --- KV cache: prefill or decode? --------------------------------------------------------------

def find_cache(kwargs: dict[str, Any]) -> Any | None:
    """The KV cache a model's forward received, whatever the keyword is called.

    transformers <= 5.23 passes it as ``past_key_values``, 5.24 as ``cache`` (with the old name
    deprecated); we look for a :class:`transformers.cache_utils.Cache` *by type* among the
    keyword arguments, so the next rename does not silently turn decode steps into prompts."""
    from transformers.cache_utils import Cache

    for value in kwargs.values():
        if isinstance(value, Cache):
            return value
    return None


def cached_length(kwargs: dict[str, Any]) -> int:
    """How many positions the model has already seen in this ``generate`` call (0 at prefill).

    Read from what the forward really receives: the cache's own length when a cache is passed,
    else the first ``cache_position`` (present in transformers 5.x forwards), else 0 (a forward
    without a cache, e.g. ``use_cache=False``, always sees its whole sequence)."""
    cache = find_cache(kwargs)
    if cache is not None:
        return int(cache.get_seq_length())
    pos = kwargs.get("cache_position")
    if pos is not None and hasattr(pos, "numel") and pos.numel() > 0:
        return int(pos.reshape(-1)[0])
    return 0


def is_prefill(kwargs: dict[str, Any]) -> bool:
    """True when this forward starts a sequence (no positions cached yet)."""
    return cached_length(kwargs) == 0


def is_static_cache(kwargs: dict[str, Any]) -> bool:
    """A static / compileable cache (query positions cannot be read from its length)."""
    cache = find_cache(kwargs)
    return cache is not None and bool(getattr(cache, "is_compileable", False))


def output_cache(outputs: Any) -> Any | None:
    """The cache a forward returned (``outputs.cache`` from 5.24, ``past_key_values`` before)."""
    for name in ("cache", "past_key_values"):
        value = getattr(outputs, name, None) if not isinstance(outputs, dict) else outputs.get(name)
        if value is not None:
            return value
    return None


def compile_config(**kwargs: Any) -> Any:
    """A ``transformers.CompileConfig`` that ``generate`` honours on every device: its private
    flag ``_compile_all_devices`` (otherwise ``generate`` compiles the decode step on CUDA/XPU/TPU
    only, so a CPU test of a compiled step would silently run eagerly)."""
    from transformers import CompileConfig

    config = CompileConfig(**kwargs)
    config._compile_all_devices = True  # type: ignore[assignment]  # typed None in transformers, read as a flag
    return config


# --- attention / mask function registries --------------------------------------------------------

def attention_functions():
    """transformers' global attention-function registry (``ALL_ATTENTION_FUNCTIONS``)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS


def mask_functions():
    """transformers' global mask-function registry (``ALL_MASK_ATTENTION_FUNCTIONS``)."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    return ALL_MASK_ATTENTION_FUNCTIONS


def register_attention(name: str, fn: Callable, mask_impl: str) -> None:
    """Register ``fn`` as attention implementation ``name``, with the mask function of ``mask_impl``."""
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(name, fn)
    AttentionMaskInterface.register(name, mask_functions()[mask_impl])


def unregister_attention(name: str) -> None:
    """Remove ``name`` from both registries.  The public interface has no ``unregister``; the
    registry's class-level ``_global_mapping`` is the private part we rely on."""
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface._global_mapping.pop(name, None)
    AttentionMaskInterface._global_mapping.pop(name, None)


def registered_attention_names() -> list[str]:
    from transformers.modeling_utils import AttentionInterface

    return sorted(AttentionInterface._global_mapping)


def eager_attention_forward(attention_module: Any) -> Callable | None:
    """The function the ``"eager"`` implementation runs for ``attention_module``: the
    ``eager_attention_forward`` of the modeling file that defines the module's class (eager
    attention is not in the registry of :func:`attention_functions`); None when that file has none."""

    modeling = importlib.import_module(type(attention_module).__module__)
    return getattr(modeling, "eager_attention_forward", None)


def get_attn_impl(config: Any) -> Any:
    """The raw implementation name a config holds (``None`` = transformers' default)."""
    return config._attn_implementation_internal


def set_attn_impl(config: Any, value: Any) -> None:
    """Switch one (sub)config's attention implementation *without* the public setter's checks:
    ``set_attn_implementation`` refuses names it does not know and walks every sub-config,
    while the recorder needs a temporary, registered name on the decoder's configs only."""
    config._attn_implementation_internal = value


# --- models built from a config ----------------------------------------------------------------

def model_from_config(cls: Any, config: Any, **kwargs: Any) -> Any:
    """A random-init model of class ``cls`` from ``config``, through the classmethod
    ``_from_config`` (private) that ``AutoModel.from_config`` calls: it takes ``dtype=`` and
    ``attn_implementation=`` and sets them on the config and every sub-config."""
    return cls._from_config(config, **kwargs)


# --- audio encoders ------------------------------------------------------------------------------

def encoder_output_lengths(tower: Any, feature_lengths: Any) -> Any | None:
    """How many frames the audio encoder ``tower`` emits for inputs of ``feature_lengths`` mel
    frames, from its private ``_get_feat_extract_output_lengths`` (Whisper-style encoders);
    where that returns a tuple (Qwen2-Audio: after the convolution, after the pooling), its first
    element.  None when the encoder has no such method."""
    if not hasattr(tower, "_get_feat_extract_output_lengths"):
        return None
    lengths = tower._get_feat_extract_output_lengths(feature_lengths)
    return lengths[0] if isinstance(lengths, tuple) else lengths


# --- Qwen2.5-Omni container ----------------------------------------------------------------------

def unwrap_container(outer: Any, attribute: str) -> Any:
    """The audio-language model inside a container checkpoint (Qwen2.5-Omni: thinker + talker).

    ``disable_talker`` exists from the first transformers release with Omni; when absent the
    talker is simply never called (auralens only runs the thinker)."""
    if hasattr(outer, "disable_talker"):
        outer.disable_talker()
    inner = getattr(outer, attribute, None)
    if inner is None:

        raise ArchitectureError(
            f"container {type(outer).__name__}: expected an attribute {attribute!r} holding the "
            "audio-language model, found none"
        )
    return inner


# --- TransformerLens ----------------------------------------------------------------------------

def boot_transformer_bridge(folder: str, *, hf_model: Any, tokenizer: Any):
    """``TransformerBridge.boot_transformers`` on an already loaded model, offline.

    TL's boot tries to pip-install torchvision when ``AutoProcessor`` fails (its private
    ``_ensure_torchvision``); that would reach for the network and swap the CPU torch build, so
    it is disabled for the duration of the call."""
    import transformer_lens.model_bridge.sources.transformers.helpers as tl_helpers
    from transformer_lens.model_bridge import TransformerBridge

    saved = getattr(tl_helpers, "_ensure_torchvision", None)
    tl_helpers._ensure_torchvision = lambda: False
    try:
        return TransformerBridge.boot_transformers(folder, hf_model=hf_model, tokenizer=tokenizer)
    finally:
        if saved is not None:
            tl_helpers._ensure_torchvision = saved


# --- processors built without torchaudio / torchvision (auralens.interp.processors) -------------

def granite_speech_extractor_base() -> Any:
    """transformers' ``GraniteSpeechFeatureExtractor``, the base of auralens' torchaudio-free
    extractor, which reuses its private helpers ``_get_audios_and_audio_lengths`` (clips to one
    padded tensor + lengths) and ``_get_num_audio_features`` (audio tokens per clip) and replaces
    ``__init__``, ``__call__`` and ``_extract_mel_spectrograms`` (each calls
    ``requires_backends(self, ["torchaudio"])``)."""
    from transformers import GraniteSpeechFeatureExtractor

    for name in ("_get_audios_and_audio_lengths", "_get_num_audio_features", "_extract_mel_spectrograms"):
        if not callable(getattr(GraniteSpeechFeatureExtractor, name, None)):
            raise ArchitectureError(
                f"GraniteSpeechFeatureExtractor: expected the private method {name!r} (transformers 5.23-5.24), "
                "found none; auralens' torchaudio-free extractor needs updating"
            )
    return GraniteSpeechFeatureExtractor


def granite_speech_extractor_init(extractor: Any, *, sampling_rate: int, n_fft: int, win_length: int,
                                  hop_length: int, n_mels: int, projector_window_size: int,
                                  projector_downsample_rate: int, padding_value: float, **kwargs: Any) -> None:
    """What ``GraniteSpeechFeatureExtractor.__init__`` sets, without its torchaudio
    ``MelSpectrogram`` (the attribute ``mel_filters``): the ``SequenceFeatureExtractor`` fields,
    ``melspec_kwargs`` (torchaudio's argument names) and the projector window."""
    from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor

    feature_size = n_mels if kwargs.get("feature_size") is None else kwargs.pop("feature_size")
    SequenceFeatureExtractor.__init__(extractor, feature_size=feature_size, sampling_rate=sampling_rate,
                                      padding_value=padding_value, **kwargs)
    extractor.sampling_rate = sampling_rate
    extractor.melspec_kwargs = {"sample_rate": sampling_rate, "n_fft": n_fft, "win_length": win_length,
                                "hop_length": hop_length, "n_mels": n_mels}
    extractor.projector_window_size = projector_window_size
    extractor.projector_downsample_rate = projector_downsample_rate


def omni_processor_init(processor: Any, feature_extractor: Any, tokenizer: Any, chat_template: Any) -> None:
    """``Qwen3OmniMoeProcessor.__init__`` without its image and video processors: the
    ``ProcessorMixin`` set-up over the subclass's own attributes (``get_attributes`` reads them
    from the subclass's ``__init__`` signature: ``feature_extractor``, ``tokenizer``), then the
    token names and ids the parent reads from the tokenizer's named special tokens."""
    from transformers.processing_utils import ProcessorMixin

    ProcessorMixin.__init__(processor, feature_extractor, tokenizer, chat_template=chat_template)
    for name in ("image_token", "audio_token", "video_token", "image_token_id", "audio_token_id", "video_token_id",
                 "vision_bos_token", "vision_eos_token", "audio_bos_token", "audio_eos_token"):
        setattr(processor, name, getattr(tokenizer, name))


# --- typer's click (auralens.cli.main) ------------------------------------------------------------

def click_exceptions() -> Any:
    """The click exceptions module typer raises: recent typer (0.29.2 in the lock) vendors click as the private
    ``typer._click`` (its ``UsageError`` is not ``click.UsageError``); older typer uses click."""
    try:
        from typer._click import exceptions
    except ImportError:  # older typer: the click package itself
        from click import exceptions  # type: ignore[no-redef]
    for name in ("UsageError", "NoArgsIsHelpError"):
        if not isinstance(getattr(exceptions, name, None), type):
            raise ArchitectureError(f"{exceptions.__name__}: expected the exception class {name!r}, found none")
    return exceptions
