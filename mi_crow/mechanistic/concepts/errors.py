"""Errors about concept files and configs."""

from __future__ import annotations


class ConceptValidationError(ValueError):
    """A concept dictionary or config that does not fit its SAE; the message names every bad entry."""
