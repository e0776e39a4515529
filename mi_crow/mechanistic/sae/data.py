"""Where training batches come from: a stored run (streamed), a tensor, or a live iterable of chunks."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

from mi_crow.store import ActivationRun, LocalStore


class BatchSource(Protocol):
    d_model: int
    n_tokens: int | None  # tokens per epoch, when known up front
    description: dict[str, Any]

    def batches(self, epoch: int, batch_size: int, seed: int, shuffle: bool) -> Iterator[torch.Tensor]: ...


class RunSource:
    def __init__(self, run: ActivationRun, layer: str, buffer_shards: int = 4) -> None:
        self.run, self.layer, self.buffer_shards = run, layer, buffer_shards
        self.d_model = run.d_model(layer)
        self.n_tokens = run.layer(layer).n_tokens
        self.description = {"kind": "run", "run_id": run.run_id, "layer": layer, "model_id": run.model_id}

    def batches(self, epoch: int, batch_size: int, seed: int, shuffle: bool) -> Iterator[torch.Tensor]:
        return self.run.iter_batches(
            self.layer, batch_size, shuffle=shuffle, seed=seed + epoch, buffer_shards=self.buffer_shards
        )


class TensorSource:
    def __init__(self, data: torch.Tensor) -> None:
        if data.ndim != 2:
            raise ValueError(f"activations tensor must be (n_tokens, d_model), got shape {tuple(data.shape)}")
        self.data = data
        self.d_model = data.shape[1]
        self.n_tokens = data.shape[0]
        self.description = {"kind": "tensor", "n_tokens": self.n_tokens}

    def batches(self, epoch: int, batch_size: int, seed: int, shuffle: bool) -> Iterator[torch.Tensor]:
        if shuffle:
            order = torch.randperm(self.n_tokens, generator=torch.Generator().manual_seed(seed + epoch))
            yield from (self.data[idx] for idx in order.split(batch_size))
        else:
            yield from self.data.split(batch_size)


class StreamSource:
    """Chunks of ``(n, d)`` activations from an iterable (e.g. a live gRPC stream), rebatched.

    Give a callable returning a fresh iterable to train several epochs; a one-shot iterator allows one.
    Rows are used in arrival order (a live stream already mixes documents; shuffle it upstream if needed).
    """

    def __init__(
        self, chunks: Iterable[torch.Tensor] | Callable[[], Iterable[torch.Tensor]], d_model: int | None = None
    ):
        self._factory = chunks if callable(chunks) and not hasattr(chunks, "__iter__") else None
        self._once = None if self._factory else chunks
        self._used = False
        self._peeked: torch.Tensor | None = None
        if d_model is None:
            it = iter(self._open())
            first = next(it, None)
            if first is None:
                raise ValueError("the activation stream is empty")
            d_model = first.shape[-1]
            self._peeked, self._rest = first, it
        self.d_model = int(d_model)
        self.n_tokens = None
        self.description = {"kind": "stream"}

    def _open(self) -> Iterable[torch.Tensor]:
        if self._factory is not None:
            return self._factory()
        if self._used:
            raise ValueError("a one-shot activation iterator can be trained for one epoch only; pass a callable")
        self._used = True
        return self._once  # type: ignore[return-value]

    def batches(self, epoch: int, batch_size: int, seed: int, shuffle: bool) -> Iterator[torch.Tensor]:
        if self._peeked is not None:
            chunks: Iterable[torch.Tensor] = _chain(self._peeked, self._rest)
            self._peeked = None
        else:
            chunks = self._open()
        carry: torch.Tensor | None = None
        for chunk in chunks:
            chunk = chunk.reshape(-1, self.d_model)
            block = chunk if carry is None else torch.cat([carry, chunk])
            full = (block.shape[0] // batch_size) * batch_size
            if full:
                yield from block[:full].split(batch_size)
            carry = block[full:]
        if carry is not None and carry.shape[0]:
            yield carry


def _chain(first: torch.Tensor, rest: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    yield first
    yield from rest


def resolve_source(activations: Any, layer: str | None, store: LocalStore, buffer_shards: int = 4) -> BatchSource:
    """Accept an ActivationRun, a run id, a manifest path or run directory, a tensor, or an iterable."""
    if isinstance(activations, str | Path):
        path = Path(activations)
        if path.name == "manifest.json" or path.is_dir():
            activations = ActivationRun(path.parent if path.name == "manifest.json" else path)
        else:
            activations = store.find_run(str(activations))
    if isinstance(activations, ActivationRun):
        if layer is None:
            if len(activations.layers) != 1:
                raise ValueError(f"run {activations.run_id!r} has layers {activations.layers}; say which to train on")
            layer = activations.layers[0]
        return RunSource(activations, layer, buffer_shards)
    if isinstance(activations, torch.Tensor):
        return TensorSource(activations)
    if callable(activations) or isinstance(activations, Iterable):
        return StreamSource(activations)
    raise TypeError(
        f"cannot train on {type(activations).__name__}; pass an ActivationRun, run id, manifest path, "
        "(n, d) tensor or an iterable of tensors"
    )
