"""Safetensors shards with a sha256 kept in the manifest, checked on every read."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from mi_crow.store.atomic import atomic_write_bytes


class CorruptShardError(RuntimeError):
    """A shard whose bytes do not match the checksum recorded when it was written."""


def write_shard(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """Write tensors atomically as one safetensors file; return the sha256 of the bytes written."""
    data = st_save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def read_shard(path: str | Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a shard, verifying its checksum first so corrupt bytes never reach a caller."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise CorruptShardError(f"shard {path} is missing") from exc
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256:
            raise CorruptShardError(
                f"shard {path} is corrupt or truncated: sha256 {actual[:16]}… does not match the manifest's "
                f"{expected_sha256[:16]}… ({len(data)} bytes on disk); re-harvest this run"
            )
    try:
        return st_load(data)
    except (SafetensorError, ValueError) as exc:
        raise CorruptShardError(f"shard {path} is not a readable safetensors file: {exc}") from exc
