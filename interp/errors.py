"""One exception hierarchy for the whole toolkit.

Every error names the input, what was expected and what was found (einops-style messages).
"""

from __future__ import annotations


class AuralensError(Exception):
    """Base class of every error auralens raises on purpose."""


class ArchitectureError(AuralensError):
    """The model's class has no architecture table, or a table does not match the model."""


class AudioInputError(AuralensError):
    """An audio file or array cannot be used (unreadable, empty, not audio, wrong rate...)."""


class DatasetError(AuralensError):
    """A dataset file or row is malformed (missing answer, bad choices...)."""


class PromptError(AuralensError):
    """A prompt lacks what an analysis needs (e.g. no audio tokens)."""


class ConfigError(AuralensError, ValueError):
    """A configuration value is out of its allowed range."""


class RunFolderError(AuralensError):
    """A run folder is missing, incomplete or was written by an incompatible run."""


class VectorFileError(AuralensError):
    """A steering-vector file is malformed or belongs to another model."""


class ProbeError(AuralensError):
    """Probe inputs cannot support the requested analysis."""
