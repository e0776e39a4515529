"""Harvesting for requests: activations streamed as TensorChunks, or saved as an idempotent stored run."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from mi_crow.chunk_wire import encode_chunk
from mi_crow.chunks import iter_row_slices, rows_per_chunk
from mi_crow.datasets import TextDataset
from mi_crow.language_model import LanguageModel
from mi_crow.language_model.harvest import HarvestBatch, default_dtype, iter_harvest
from mi_crow.services.common.metrics import TOKENS_HARVESTED
from mi_crow.services.inference.gate import DeviceGate
from mi_crow.store import ActivationRun, LocalStore
from mi_crow.store.activation_run import MANIFEST
from mi_crow.v1 import inference_pb2


def _harvest_one(
    lm: LanguageModel, texts: list[str], layers: list[str], max_length: int | None, dtype: object
) -> HarvestBatch:
    # One generator per batch, closed at once: the capture hooks (which end forwards early) are then only
    # attached while this request holds the device, never while another request runs the same model.
    with contextlib.closing(iter_harvest(lm, [texts], layers, max_length=max_length, dtype=dtype)) as harvest:
        return next(harvest)


def _encoded_with_last_flag(pieces: Iterator[dict[str, Any]]) -> Iterator[bytes]:
    """Encode each chunk once the next exists, so the final one can say so."""
    held = None
    for piece in pieces:
        if held is not None:
            yield encode_chunk(**held)
        held = piece
    if held is not None:
        yield encode_chunk(**held, last=True)


def stream_chunks(
    lm: LanguageModel,
    texts: TextDataset,
    layers: Sequence[str],
    *,
    gate: DeviceGate,
    is_active: Callable[[], bool],
    batch_size: int,
    chunk_rows: int = 0,
    max_length: int | None = None,
    on_batch: Callable[[], None] = lambda: None,
) -> Iterator[bytes]:
    """Rows of every layer as encoded TensorChunks, batch by batch, holding the device only for each forward.

    Stops before the next forward once ``is_active`` turns false (the caller cancelled or went away).
    """
    if chunk_rows < 0:
        raise ValueError(f"chunk_rows must not be negative, got {chunk_rows}")
    names = list(dict.fromkeys(lm.resolve_layer(name) for name in layers))
    if not names:
        raise ValueError("no layers given to stream")
    dtype = default_dtype(lm, None)

    def pieces() -> Iterator[dict[str, Any]]:
        sequence = n_samples = 0
        for batch in texts.batches(batch_size):
            if not is_active():
                return
            with gate.hold(is_active):
                hb = _harvest_one(lm, batch, names, max_length, dtype)
            on_batch()
            TOKENS_HARVESTED.inc(hb.token_ids.shape[0])
            sample_index = hb.sample_index + n_samples
            for name in names:
                acts = hb.activations[name]
                rows = chunk_rows or rows_per_chunk(acts.shape[1], acts.element_size())
                for part, columns in iter_row_slices(
                    acts, rows=rows, token_ids=hb.token_ids, positions=hb.positions, sample_index=sample_index
                ):
                    yield {"tensor": part, "layer": name, "sequence": sequence, **columns}
                    sequence += 1
            n_samples += hb.n_samples

    yield from _encoded_with_last_flag(pieces())


def save_run(
    lm: LanguageModel,
    store: LocalStore,
    texts: TextDataset,
    layers: Sequence[str],
    *,
    run_id: str | None,
    batch_size: int,
    shard_size: int | None,
    max_length: int | None,
    is_active: Callable[[], bool] | None = None,
) -> ActivationRun:
    """A complete run named ``run_id`` is returned as it is; a failed or abandoned one is redone.

    The caller holds the device gate for the whole harvest: its capture hooks stay attached throughout.
    """
    if run_id:
        run_dir = store.run_dir(lm.model_id, run_id)  # validates the id (no '..', no separators)
        if (run_dir / MANIFEST).is_file():
            existing = store.open_run(lm.model_id, run_id, require_complete=False)
            if existing.manifest.status == "complete":
                return existing
            store.delete_run(lm.model_id, run_id)
    kwargs = {"shard_size": shard_size} if shard_size else {}
    run = lm.save_activations(
        texts,
        layers,
        batch_size=batch_size,
        run_id=run_id or None,
        max_length=max_length,
        store=store,
        progress=False,
        should_continue=is_active,
        **kwargs,
    )
    TOKENS_HARVESTED.inc(run.n_tokens)
    return run


def save_response(run: ActivationRun, store: LocalStore) -> inference_pb2.SaveActivationsResponse:
    manifest = run.manifest
    return inference_pb2.SaveActivationsResponse(
        run_id=manifest.run_id,
        manifest_path=str(run.manifest_path.relative_to(store.root)),
        n_tokens=manifest.n_tokens,
        n_samples=manifest.n_samples,
        layers=list(manifest.layers),
        n_shards=max((len(layer.shards) for layer in manifest.layers.values()), default=0),
    )
