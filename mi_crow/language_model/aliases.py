"""Short model aliases (the seed's ``bielik``, ``tinylm``), configurable to hub ids or local directories.

Resolution order: aliases passed in code, then ``MI_CROW_MODEL_ALIASES`` (a JSON object, or the path of a
JSON file holding one), then the built-in table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

ALIASES_ENV = "MI_CROW_MODEL_ALIASES"

DEFAULT_ALIASES: dict[str, str] = {
    "bielik": "speakleash/Bielik-1.5B-v3.0-Instruct",
    "tinylm": "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
}


def _from_env() -> dict[str, str]:
    raw = os.environ.get(ALIASES_ENV, "").strip()
    if not raw:
        return {}
    if not raw.startswith("{"):
        path = Path(raw).expanduser()
        try:
            raw = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"{ALIASES_ENV}={path} is neither inline JSON nor a readable file: {exc}") from exc
    try:
        table = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{ALIASES_ENV} is not valid JSON: {exc}") from exc
    if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in table.items()):
        raise ValueError(f"{ALIASES_ENV} must be a JSON object mapping alias -> model id or directory")
    return table


def alias_table(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {**DEFAULT_ALIASES, **_from_env(), **dict(extra or {})}


def resolve_alias(model_id: str, extra: Mapping[str, str] | None = None) -> str:
    """The hub id or directory an alias stands for; anything that is not an alias comes back unchanged."""
    return alias_table(extra).get(model_id, model_id)
