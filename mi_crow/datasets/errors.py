"""Errors raised by the text-dataset layer.

Both derive from ``ValueError`` so callers that validate user input (CLI, server request handlers)
can treat a bad dataset like any other bad argument without importing this module.
"""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset source is misconfigured, unreadable or holds data of the wrong shape."""


class EmptyDatasetError(DatasetError):
    """A dataset source was read to the end without producing a single text sample."""

    def __init__(self, source: str, hint: str = "empty source, or every sample was None/blank") -> None:
        self.source = source
        super().__init__(f"dataset {source!r} produced no text samples ({hint})")
