"""Processors built locally for the classes whose transformers processor needs a missing package.

Three audio-in/text-out classes of transformers ship processors that cannot be built in the CPU
lock (no torchaudio, no working torchvision; see :data:`auralens.interp.arch.UNSUPPORTED`'s
history in issue 16).  auralens studies audio + text only, so each gets the processor it needs
for that, of the real class's behaviour:

- **Granite Speech**: :class:`GraniteSpeechMelExtractor`, the transformers
  ``GraniteSpeechFeatureExtractor`` with its one torchaudio call (``MelSpectrogram``) replaced by
  :func:`granite_log_mel` (``torch.stft`` + ``transformers.audio_utils.mel_filter_bank``, the same
  formula: periodic Hann window of ``win_length`` centred in ``n_fft``, reflect padding, power 2,
  HTK mel scale without normalisation from 0 Hz to ``sampling_rate // 2``), wrapped in
  :class:`GraniteSpeechAudioProcessor` (the real ``GraniteSpeechProcessor``, plus the
  ``feature_extractor`` name the rest of auralens reads the sampling rate from).
- **Phi-4-multimodal**: :class:`Phi4AudioProcessor`, the real ``Phi4MultimodalProcessor`` with
  :class:`NoImageProcessor` in place of its torchvision image processor (images are refused).
- **Qwen3-Omni MoE thinker**: :class:`Qwen3OmniMoeAudioProcessor`, the real
  ``Qwen3OmniMoeProcessor`` minus its image and video processors (``Qwen2VLImageProcessor`` /
  ``Qwen2VLVideoProcessor`` need torchvision); its audio path (Whisper log-mels, the
  ``feature_attention_mask``, 13 audio tokens per 100 mel frames) is transformers' own code.

The pieces of transformers' private behaviour these rely on are in :mod:`auralens.interp.compat`
(``granite_speech_extractor_base``, ``omni_processor_init``), each with a test.
:func:`build_processor` builds them from a checkpoint folder for
:func:`auralens.interp.loading.load_model`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import snapshot_download

from auralens.interp import compat
from auralens.interp.errors import ConfigError

#: table name -> what :func:`build_processor` builds for it (the processor class's name)
LOCAL_PROCESSORS = {
    "granite_speech": "GraniteSpeechAudioProcessor",
    "phi4_multimodal": "Phi4AudioProcessor",
    "qwen3_omni_moe_thinker": "Qwen3OmniMoeAudioProcessor",
}


#: ``GraniteSpeechFeatureExtractor``'s defaults (ibm-granite/granite-speech-3.3's values), in
#: torchaudio's names as its ``melspec_kwargs`` holds them
GRANITE_MEL_DEFAULTS = {"sample_rate": 16_000, "n_fft": 512, "win_length": 400, "hop_length": 160, "n_mels": 80}


def granite_log_mel(
    audio: Any, *, sampling_rate: int = 16_000, n_fft: int = 512, win_length: int = 400, hop_length: int = 160,
    n_mels: int = 80,
) -> Any:
    """Granite Speech's encoder input ``[batch, frames // 2, 2 * n_mels]`` from ``[batch, samples]``.

    The mel power spectrogram of ``torchaudio.transforms.MelSpectrogram(sample_rate, n_fft,
    win_length, hop_length, n_mels)`` (its defaults: periodic Hann window, ``center=True``,
    reflect padding, power 2, HTK mel scale, no filter normalisation, 0 Hz to ``sample_rate //
    2``), here with ``torch.stft`` and ``transformers.audio_utils.mel_filter_bank``; then, as
    ``GraniteSpeechFeatureExtractor._extract_mel_spectrograms`` does: log10 of the power clipped
    at 1e-10, floored at 8 below each clip's maximum, ``/ 4 + 1``, an odd last frame dropped and
    pairs of frames stacked."""
    import torch
    from transformers.audio_utils import mel_filter_bank

    audio = torch.as_tensor(audio, dtype=torch.float32)
    if audio.ndim == 1:
        audio = audio[None]
    window = torch.hann_window(win_length, periodic=True, dtype=torch.float32, device=audio.device)
    spec = torch.stft(audio, n_fft, hop_length=hop_length, win_length=win_length, window=window, center=True,
                      pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    power = spec.abs().pow(2)  # [batch, n_fft // 2 + 1, frames]
    fb = mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=0.0,
                         max_frequency=float(sampling_rate // 2), sampling_rate=sampling_rate, norm=None,
                         mel_scale="htk")
    fb_t = torch.from_numpy(fb).to(device=audio.device, dtype=torch.float32)  # [freq, n_mels]
    mel = torch.matmul(power.transpose(-1, -2), fb_t)  # [batch, frames, n_mels]
    logmel = mel.clamp(min=1e-10).log10()
    mx = logmel.amax(dim=(-2, -1), keepdim=True)
    logmel = torch.maximum(logmel, mx - 8.0) / 4 + 1
    if logmel.shape[1] % 2 == 1:
        logmel = logmel[:, :-1]
    return logmel.reshape(logmel.shape[0], -1, 2 * logmel.shape[-1])


def _granite_extractor_class():
    base = compat.granite_speech_extractor_base()

    class GraniteSpeechMelExtractor(base):  # type: ignore[misc, valid-type]
        """``GraniteSpeechFeatureExtractor`` without torchaudio: the same ``__call__`` (clip
        lengths, audio token counts, ``input_features_mask``), the mel features from
        :func:`granite_log_mel`."""

        def __init__(self, sampling_rate: int | None = None, n_fft: int | None = None,
                     win_length: int | None = None, hop_length: int | None = None, n_mels: int | None = None,
                     projector_window_size: int = 15, projector_downsample_rate: int = 5,
                     padding_value: float = 0.0, **kwargs: Any) -> None:
            # An argument wins, then the saved ``melspec_kwargs`` (a saved extractor holds n_mels only
            # there), then the parent's defaults (the released checkpoint's values).
            saved = kwargs.pop("melspec_kwargs", None) or {}
            given = {"sample_rate": sampling_rate, "n_fft": n_fft, "win_length": win_length,
                     "hop_length": hop_length, "n_mels": n_mels}
            kw = {k: v if v is not None else saved.get(k, GRANITE_MEL_DEFAULTS[k]) for k, v in given.items()}
            compat.granite_speech_extractor_init(
                self, sampling_rate=kw["sample_rate"], n_fft=kw["n_fft"], win_length=kw["win_length"],
                hop_length=kw["hop_length"], n_mels=kw["n_mels"], projector_window_size=projector_window_size,
                projector_downsample_rate=projector_downsample_rate, padding_value=padding_value, **kwargs)

        def __call__(self, audios: Any, device: str | None = "cpu", **kwargs: Any) -> Any:
            # the parent's __call__ minus requires_backends(torchaudio); kwargs (sampling_rate,
            # padding, ... that ProcessorMixin routes to audio) are ignored, as the parent's signature does
            import torch
            from transformers.feature_extraction_utils import BatchFeature

            batched, lengths = self._get_audios_and_audio_lengths(audios)
            sizes = self._get_num_audio_features(lengths)
            return BatchFeature(data={
                "input_features": self._extract_mel_spectrograms(batched, device=device),
                "audio_embed_sizes": sizes,
                "input_features_mask": torch.arange(max(sizes)).view(1, -1) < torch.tensor(sizes).view(-1, 1),
            })

        def _extract_mel_spectrograms(self, audio: Any, device: Any = "cpu") -> Any:
            import torch

            if device is not None:
                audio = audio.to(device)
            kw = self.melspec_kwargs
            with torch.no_grad():
                return granite_log_mel(audio.float(), sampling_rate=kw["sample_rate"], n_fft=kw["n_fft"],
                                       win_length=kw["win_length"], hop_length=kw["hop_length"], n_mels=kw["n_mels"])

    return GraniteSpeechMelExtractor


_CLASSES: dict[str, Any] = {}


def _cached(name: str, make: Any) -> Any:
    if name not in _CLASSES:
        _CLASSES[name] = make()
    return _CLASSES[name]


def granite_mel_extractor_class() -> Any:
    """The class :class:`GraniteSpeechMelExtractor` (built on first use: it subclasses a
    transformers class, and transformers is imported only when needed)."""
    return _cached("GraniteSpeechMelExtractor", _granite_extractor_class)


def _granite_processor_class():
    from transformers import GraniteSpeechProcessor

    class GraniteSpeechAudioProcessor(GraniteSpeechProcessor):
        """``GraniteSpeechProcessor`` over :class:`GraniteSpeechMelExtractor`; ``feature_extractor``
        names its audio processor (auralens reads ``processor.feature_extractor.sampling_rate``)."""

        @property
        def feature_extractor(self) -> Any:
            return self.audio_processor

    return GraniteSpeechAudioProcessor


def granite_processor_class() -> Any:
    return _cached("GraniteSpeechAudioProcessor", _granite_processor_class)


def _no_image_processor_class():
    from transformers.image_processing_utils import BaseImageProcessor

    class NoImageProcessor(BaseImageProcessor):
        """Stands in for an image processor that needs torchvision: auralens feeds audio and
        text only, and an image is refused with a one-line error."""

        model_input_names: list[str] = []

        def preprocess(self, images: Any, **kwargs: Any) -> Any:
            raise ConfigError(
                "images: expected none (auralens builds this processor for audio + text; the real image "
                f"processor needs torchvision), found {type(images).__name__}"
            )

    return NoImageProcessor


def no_image_processor_class() -> Any:
    return _cached("NoImageProcessor", _no_image_processor_class)


def _phi4_processor_class():
    from transformers import Phi4MultimodalProcessor

    class Phi4AudioProcessor(Phi4MultimodalProcessor):
        """``Phi4MultimodalProcessor`` with :class:`NoImageProcessor`; ``feature_extractor``
        names its audio processor."""

        @property
        def feature_extractor(self) -> Any:
            return self.audio_processor

        def __call__(self, text: Any = None, images: Any = None, audio: Any = None, **kwargs: Any) -> Any:
            if images is not None:
                no_image_processor_class()().preprocess(images)
            return super().__call__(text=text, audio=audio, **kwargs)

    return Phi4AudioProcessor


def phi4_processor_class() -> Any:
    return _cached("Phi4AudioProcessor", _phi4_processor_class)


def _qwen3_omni_processor_class():
    from transformers import Qwen3OmniMoeProcessor

    class Qwen3OmniMoeAudioProcessor(Qwen3OmniMoeProcessor):
        """``Qwen3OmniMoeProcessor`` with a feature extractor and a tokenizer only: its
        ``__call__`` and audio path are transformers' own; images and videos are refused."""

        def __init__(self, feature_extractor: Any = None, tokenizer: Any = None, chat_template: Any = None) -> None:
            compat.omni_processor_init(self, feature_extractor, tokenizer, chat_template)

        def __call__(self, text: Any = None, images: Any = None, videos: Any = None, audio: Any = None,
                     **kwargs: Any) -> Any:
            if images is not None or videos is not None:
                raise ConfigError(
                    "images/videos: expected none (auralens builds this Qwen3-Omni processor for audio + text; "
                    "the real image and video processors need torchvision)")
            return super().__call__(text=text, audio=audio, **kwargs)

    return Qwen3OmniMoeAudioProcessor


def qwen3_omni_processor_class() -> Any:
    return _cached("Qwen3OmniMoeAudioProcessor", _qwen3_omni_processor_class)


# --- from a checkpoint folder ------------------------------------------------------------------


def _json(folder: Path, name: str) -> dict:
    path = folder / name
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _chat_template(folder: Path, tokenizer: Any) -> Any:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for name in ("processor_config.json", "chat_template.json"):
        if (t := _json(folder, name).get("chat_template")) is not None:
            return t
    return getattr(tokenizer, "chat_template", None)


def _feature_config(folder: Path) -> dict:
    """The feature extractor's saved fields (``preprocessor_config.json``, or the
    ``feature_extractor``/``audio_processor`` entry of ``processor_config.json``)."""
    data = _json(folder, "preprocessor_config.json")
    if not data:
        proc = _json(folder, "processor_config.json")
        data = proc.get("audio_processor") or proc.get("feature_extractor") or {}
    return {k: v for k, v in data.items() if k not in ("feature_extractor_type", "processor_class", "audio_processor_type")}


def build_processor(table_name: str, source: str | Path, *, trust_remote_code: bool = False) -> Any:
    """The local processor of table ``table_name`` (one of :data:`LOCAL_PROCESSORS`) from a
    checkpoint folder or hub id: its tokenizer, its feature extractor's saved settings and its
    chat template."""
    from transformers import AutoTokenizer

    if table_name not in LOCAL_PROCESSORS:
        raise ConfigError(f"table_name {table_name!r}: expected one of {sorted(LOCAL_PROCESSORS)}")
    folder = Path(source)
    if not folder.is_dir():
        folder = Path(snapshot_download(str(source), allow_patterns=["*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken"]))
    tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    template = _chat_template(folder, tok)
    fe_cfg = _feature_config(folder)
    if table_name == "granite_speech":
        fe = granite_mel_extractor_class()(**fe_cfg)
        audio_token = _json(folder, "processor_config.json").get("audio_token", "<|audio|>")
        return granite_processor_class()(audio_processor=fe, tokenizer=tok, audio_token=audio_token,
                                         chat_template=template)
    if table_name == "phi4_multimodal":
        from transformers import Phi4MultimodalFeatureExtractor

        fe = Phi4MultimodalFeatureExtractor(**fe_cfg)
        return phi4_processor_class()(image_processor=no_image_processor_class()(), audio_processor=fe,
                                      tokenizer=tok, chat_template=template)
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(**fe_cfg)
    return qwen3_omni_processor_class()(feature_extractor=fe, tokenizer=tok, chat_template=template)
