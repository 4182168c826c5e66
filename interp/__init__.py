"""auralens.interp — the ground floor: models, audio, prompts, datasets, attention yield, decay.

Importing this package changes no global state and imports nothing heavy; submodules are
imported on demand.
"""

__version__ = "0.1.0"

from auralens.interp.errors import (  # noqa: F401  (re-exported: the one exception family)
    ArchitectureError,
    AudioInputError,
    AuralensError,
    ConfigError,
    DatasetError,
    ProbeError,
    PromptError,
    RunFolderError,
    VectorFileError,
)
