"""`micro`: the embedded default LALM, a real ``Qwen2AudioForConditionalGeneration``, and the
names of every embedded model (its organisms and fine-tuned arms) with their weights folders.

Small enough to ship its weights in the package and run everything on 2 CPU cores; trained by
:mod:`auralens.interp.micro.train` on the cafe benchmark in all three answer formats.  The
organisms' recipes and training are :mod:`auralens.interp.micro.organisms`; their validation and
the public API of all three is :mod:`auralens.organisms`.
"""

from pathlib import Path

__all__ = ["BASE_DIR", "EMBEDDED", "FINETUNED_DIR", "ORGANISMS", "TRAIN_COMMANDS", "WEIGHTS_DIR", "available",
           "train_command", "weights_folder"]

WEIGHTS_DIR = Path(__file__).parent / "weights"
BASE_DIR = WEIGHTS_DIR / "base"
FINETUNED_DIR = WEIGHTS_DIR / "mpar2"

#: embedded model name -> its weights folder under :data:`WEIGHTS_DIR`
EMBEDDED = {"micro": "base", "micro-mpar2": "mpar2", "micro-prior": "prior", "micro-heads": "heads", "micro-decay": "decay",
            # the fine-tuned arms of issue 14 (`auralens organisms finetune ORGANISM --recipe mpar2|hyper`)
            "micro-hyper": "hyper", "micro-prior-mpar2": "prior-mpar2", "micro-prior-hyper": "prior-hyper",
            "micro-decay-mpar2": "decay-mpar2", "micro-decay-hyper": "decay-hyper",
            # issue 21: planted heads among heads that all listen, three seeds (DENSE_RECIPES)
            "micro-heads-dense": "heads-dense", "micro-heads-dense-s1": "heads-dense-s1",
            "micro-heads-dense-s2": "heads-dense-s2"}

#: the model organisms: `micro` with a planted listening deficit (recipes: auralens.interp.micro.organisms.RECIPES)
ORGANISMS = ("micro-prior", "micro-heads", "micro-decay")

#: the command that trains an embedded model's weights, where it is not `auralens organisms train NAME`
TRAIN_COMMANDS = {"micro": "auralens micro train", "micro-mpar2": "auralens organisms finetune micro --recipe mpar2",
                  **{f"{o}-{r}": f"auralens organisms finetune {o} --recipe {r}"
                     for o in ("micro", "micro-prior", "micro-decay") for r in ("mpar2", "hyper")}}


def weights_folder(name: str) -> Path:
    """The weights folder of embedded model ``name`` (a key of :data:`EMBEDDED`), present or not."""
    return WEIGHTS_DIR / EMBEDDED[name]


def available(name: str) -> bool:
    """Whether the embedded weights of ``name`` are present."""
    return name in EMBEDDED and (weights_folder(name) / "config.json").exists()


def train_command(name: str) -> str:
    """The command line that trains embedded model ``name``'s weights."""
    return TRAIN_COMMANDS.get(name, f"auralens organisms train {name}")
