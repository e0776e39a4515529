"""Errors a caller can act on."""

from __future__ import annotations


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be loaded (not cached while offline, bad directory, bad dtype…)."""


class UnknownLayerError(ValueError):
    """A layer name that the model does not have; the message lists the closest names."""


class HarvestCancelled(RuntimeError):
    """The caller of a harvest asked it to stop; the run it was writing is marked failed."""
