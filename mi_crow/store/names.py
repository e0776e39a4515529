"""Validation of names that become path components, so no request can escape the store root."""

from __future__ import annotations

import hashlib
import re

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class InvalidNameError(ValueError):
    """A run id, SAE id, layer or other name that cannot be used as a path component."""


def validate_name(name: str, kind: str = "name") -> str:
    """Return ``name`` unchanged if it is a safe single path component, else raise InvalidNameError."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
        raise InvalidNameError(
            f"invalid {kind} {name!r}: use 1-128 characters from letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, and no '..'"
        )
    return name


def model_key(model_id: str) -> str:
    """A stable directory name for a model id, which may be a hub id (``org/name``) or a local path.

    Hub ids keep their readable form (``org--name``); anything else gets the last path component plus a
    short hash of the full id so that two local checkpoints called ``model`` never share a directory.
    """
    if not model_id:
        raise InvalidNameError("model id must not be empty")
    if model_id.count("/") <= 1 and not model_id.startswith((".", "/", "~")):
        candidate = model_id.replace("/", "--")
        if _NAME_RE.fullmatch(candidate) and ".." not in candidate:
            return candidate
    tail = re.sub(r"[^A-Za-z0-9._-]", "_", model_id.rstrip("/").split("/")[-1]).strip("._-") or "model"
    digest = hashlib.sha256(model_id.encode()).hexdigest()[:10]
    return f"{tail[:100]}-{digest}"
