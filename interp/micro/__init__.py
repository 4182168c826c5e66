"""`micro`: the embedded default LALM, a real ``Qwen2AudioForConditionalGeneration``.

Small enough to ship its weights in the package and run everything on 2 CPU cores; trained by
:mod:`auralens.interp.micro.train` on the cafe benchmark in all three answer formats.
"""

from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
BASE_DIR = WEIGHTS_DIR / "base"
FINETUNED_DIR = WEIGHTS_DIR / "mpar2"
