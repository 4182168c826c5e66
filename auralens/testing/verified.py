"""What was verified here, per architecture table (``auralens models --json`` shows it).

A claim, checked by ``tests/unit/test_verified.py`` so it cannot drift: every table marked
``tiny_exactness`` has a tiny builder (``TINY_ARCHS``) and the exactness tests of
``tests/unit/test_attention_yield.py`` are parametrised over it; ``transformer_lens`` only where that
comparison runs rather than skips; ``long_audio`` only where ``tests/unit/test_long_audio.py`` runs a
multi-window clip through the model (``WINDOWED``, and ``PADDED`` for Voxtral's padded windows);
``transformers``/``torch`` are the versions installed when the suite last passed here (the test
fails on any other version until the suite is rerun and these are updated).  Real checkpoints:
none was run (no GPU, no hub in the sessions that built these).
"""

from __future__ import annotations

#: tables whose multi-window clips ``tests/unit/test_long_audio.py`` runs through the model
LONG_AUDIO_WINDOWED = ("audioflamingo3", "musicflamingo", "glmasr")
#: ... and those whose processor pads the last window whole (the padding gets audio tokens too)
LONG_AUDIO_PADDED = ("voxtral",)

TESTED_WITH = {"transformers": "5.24.0", "torch": "2.13.0+cpu"}

#: table name -> what its tests cover here
TESTED_HERE: dict[str, dict[str, bool]] = {
    "qwen2_audio": {"tiny_exactness": True, "transformer_lens": True, "long_audio": False, "real_checkpoint": False},
    "qwen2_5_omni_thinker": {"tiny_exactness": True, "transformer_lens": True, "long_audio": False, "real_checkpoint": False},
    "audioflamingo3": {"tiny_exactness": True, "transformer_lens": True, "long_audio": True, "real_checkpoint": False},
    "musicflamingo": {"tiny_exactness": True, "transformer_lens": True, "long_audio": True, "real_checkpoint": False},
    "glmasr": {"tiny_exactness": True, "transformer_lens": True, "long_audio": True, "real_checkpoint": False},
    "qwen3_asr": {"tiny_exactness": True, "transformer_lens": False, "long_audio": False, "real_checkpoint": False},
    "voxtral": {"tiny_exactness": True, "transformer_lens": False, "long_audio": True, "real_checkpoint": False},
    # processors built by auralens.interp.processors (no torchaudio / torchvision in the lock)
    "granite_speech": {"tiny_exactness": True, "transformer_lens": False, "long_audio": False, "real_checkpoint": False},
    "phi4_multimodal": {"tiny_exactness": True, "transformer_lens": False, "long_audio": False, "real_checkpoint": False},
    "qwen3_omni_moe_thinker": {"tiny_exactness": True, "transformer_lens": False, "long_audio": False,
                               "real_checkpoint": False},
}


def tested_here(table_name: str) -> dict | None:
    """The record for one table (None: nothing was run here, e.g. a user table)."""
    row = TESTED_HERE.get(table_name)
    return None if row is None else {**row, **TESTED_WITH}
