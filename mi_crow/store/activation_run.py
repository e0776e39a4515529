"""Writing and reading one activation run: per-layer safetensors shards plus a manifest."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from mi_crow.store.atomic import atomic_write_json, read_json
from mi_crow.store.manifest import LayerRecord, RunManifest, ShardRecord
from mi_crow.store.shards import read_shard, write_shard

MANIFEST = "manifest.json"

# Keys of every shard file. Token ids, positions and sample indices are repeated per layer so that one
# layer's shards stand alone (a worker training on layer A never opens layer B's files).
ACTIVATIONS, TOKEN_IDS, POSITIONS, SAMPLE_INDEX = "activations", "token_ids", "positions", "sample_index"


class IncompleteRunError(RuntimeError):
    """A run that is still being written, or that failed, was opened for reading."""


class ActivationRunWriter:
    """Appends shards to a run; the manifest is rewritten atomically after every shard.

    Thread-safe, so shards may be written from a background thread while the model runs the next batch.
    """

    def __init__(self, run_dir: Path, manifest: RunManifest) -> None:
        self.run_dir = run_dir
        self.manifest = manifest
        self._lock = threading.Lock()
        self._flush()

    @property
    def manifest_path(self) -> Path:
        return self.run_dir / MANIFEST

    def add_shard(
        self,
        layer: str,
        activations: torch.Tensor,
        token_ids: torch.Tensor,
        positions: torch.Tensor,
        sample_index: torch.Tensor,
    ) -> ShardRecord:
        record = self.manifest.layers[layer]
        if activations.ndim != 2 or activations.shape[1] != record.d_model:
            raise ValueError(
                f"layer {layer!r}: expected activations of shape (n, {record.d_model}), got {tuple(activations.shape)}"
            )
        if activations.is_floating_point() and not bool(torch.isfinite(activations).all()):
            raise ValueError(
                f"layer {layer!r}: activations hold NaN or Inf values; refusing to store them (check the model's dtype)"
            )
        n = activations.shape[0]
        if not (token_ids.shape[0] == positions.shape[0] == sample_index.shape[0] == n):
            raise ValueError("activations, token_ids, positions and sample_index must have the same length")
        with self._lock:
            file = f"{layer}/{len(record.shards):05d}.safetensors"
            # Reserve the slot before releasing the lock so concurrent writers of one layer never collide.
            placeholder = ShardRecord(file=file, n_tokens=0, sha256="")
            record.shards.append(placeholder)
        try:
            sha = self._write(file, layer, activations, token_ids, positions, sample_index)
        except BaseException:
            with self._lock:
                record.shards.remove(placeholder)
            raise
        with self._lock:
            placeholder.n_tokens, placeholder.sha256 = n, sha
            self._flush()
        return placeholder

    def _write(
        self,
        file: str,
        layer: str,
        activations: torch.Tensor,
        token_ids: torch.Tensor,
        positions: torch.Tensor,
        sample_index: torch.Tensor,
    ) -> str:
        return write_shard(
            self.run_dir / file,
            {
                ACTIVATIONS: activations,
                TOKEN_IDS: token_ids.to(torch.int32),
                POSITIONS: positions.to(torch.int32),
                SAMPLE_INDEX: sample_index.to(torch.int64),
            },
            metadata={"layer": layer, "run_id": self.manifest.run_id},
        )

    def finish(self, n_samples: int) -> RunManifest:
        with self._lock:
            self.manifest.n_samples = n_samples
            self.manifest.status = "complete"
            self._flush()
        return self.manifest

    def fail(self, error: str) -> None:
        with self._lock:
            self.manifest.status = "failed"
            self.manifest.error = error
            self._flush()

    def _flush(self) -> None:
        self.manifest.updated_at = time.time()
        atomic_write_json(self.manifest_path, self.manifest.to_dict())


class ActivationRun:
    """Read access to a stored run. Iteration streams shard by shard: a run never sits whole in memory."""

    def __init__(self, run_dir: str | Path, *, require_complete: bool = True) -> None:
        self.run_dir = Path(run_dir)
        path = self.run_dir / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"no activation run at {self.run_dir} (missing {MANIFEST})")
        self.manifest = RunManifest.from_dict(read_json(path))
        if require_complete and self.manifest.status != "complete":
            raise IncompleteRunError(
                f"activation run {self.manifest.run_id!r} is {self.manifest.status}"
                + (f" ({self.manifest.error})" if self.manifest.error else "")
                + "; only complete runs can be read"
            )

    @property
    def run_id(self) -> str:
        return self.manifest.run_id

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    @property
    def manifest_path(self) -> Path:
        return self.run_dir / MANIFEST

    @property
    def layers(self) -> list[str]:
        return list(self.manifest.layers)

    @property
    def n_tokens(self) -> int:
        return self.manifest.n_tokens

    @property
    def n_samples(self) -> int:
        return self.manifest.n_samples

    def layer(self, name: str) -> LayerRecord:
        try:
            return self.manifest.layers[name]
        except KeyError:
            raise KeyError(f"run {self.run_id!r} has no layer {name!r}; it has {self.layers}") from None

    def d_model(self, layer: str) -> int:
        return self.layer(layer).d_model

    def read_shard(self, layer: str, index: int) -> dict[str, torch.Tensor]:
        shard = self.layer(layer).shards[index]
        return read_shard(self.run_dir / shard.file, shard.sha256)

    def iter_shards(self, layer: str, order: list[int] | None = None) -> Iterator[dict[str, torch.Tensor]]:
        n = len(self.layer(layer).shards)
        for i in order if order is not None else range(n):
            yield self.read_shard(layer, i)

    def iter_batches(
        self,
        layer: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        buffer_shards: int = 4,
        drop_last: bool = False,
        dtype: torch.dtype | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield ``(batch_size, d_model)`` activation batches.

        With ``shuffle``, shards come in a seeded random order and rows are shuffled within a window of
        ``buffer_shards`` shards: memory stays bounded by that window while batches mix many documents.
        The order depends only on ``seed``, so a resumed training run can skip to where it stopped.
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        n_shards = len(self.layer(layer).shards)
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(n_shards, generator=gen).tolist() if shuffle else list(range(n_shards))
        window = max(1, buffer_shards) if shuffle else 1
        carry: torch.Tensor | None = None
        for start in range(0, n_shards, window):
            chunks = [self.read_shard(layer, i)[ACTIVATIONS] for i in order[start : start + window]]
            if carry is not None:
                chunks.insert(0, carry)
            block = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
            if shuffle:
                block = block[torch.randperm(block.shape[0], generator=gen)]
            if dtype is not None:
                block = block.to(dtype)
            full = (block.shape[0] // batch_size) * batch_size
            if full:
                yield from block[:full].split(batch_size)
            carry = block[full:] if full < block.shape[0] else None
        if carry is not None and not drop_last and carry.shape[0] > 0:
            yield carry
