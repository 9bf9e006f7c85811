"""The errors a model spec can raise."""
from __future__ import annotations


class ModelNotFoundError(RuntimeError):
    """A model spec that names nothing that can be loaded here."""


class ModelFileError(ValueError):
    """A model file that cannot be used (not GGUF, unsupported architecture, wrong size or hash)."""
