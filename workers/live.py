"""Activations streamed live from an inference server, as a re-startable source for the trainer.

The server is found in the registry (the best one for the job's model: serving, model loaded, least
loaded), else MI_CROW_INFERENCE_ADDRESS. If it goes away mid-stream, the pass continues on the next one,
skipping the rows already delivered: every server streams the same texts in the same order.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence

import grpc
import torch

from mi_crow.chunk_wire import stream_activations_call
from mi_crow.chunks import chunk_to_tensor
from mi_crow.services.common.outbound import call_metadata, open_channel
from mi_crow.services.common.registry import probe_connection, rank_addresses
from mi_crow.v1 import artifacts_pb2, inference_pb2, inference_pb2_grpc

log = logging.getLogger("mi_crow.workers")

STREAM_TIMEOUT_S = 6 * 3600
MAX_FAILOVERS = 5  # per pass: a server that keeps failing is a problem to report, not to retry forever
# A server that is gone (UNAVAILABLE), full (RESOURCE_EXHAUSTED) or shutting down (CANCELLED): try another.
FAILOVER_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED}

Finder = Callable[[], list[str]]
Metadata = tuple[tuple[str, str], ...]


def discovered(model_id: str) -> Finder:
    """Addresses to try for ``model_id``, best first, asked afresh on every (re)connect."""
    fallback = os.environ.get("MI_CROW_INFERENCE_ADDRESS", "")
    url = os.environ.get("MI_CROW_REDIS_URL", "")
    redis = probe_connection(url) if url else None
    return lambda: rank_addresses(redis, model_id, fallback)


def ensure_loaded(stub: inference_pb2_grpc.InferenceServiceStub, model_id: str, metadata: Metadata) -> None:
    """Ask the server to load the model (a no-op when loaded).

    LoadModel needs admin scope; a worker holding a lesser key can still use a model an operator loaded,
    so a refusal here is left for the real call to report if the model is in fact missing.
    """
    try:
        stub.LoadModel(inference_pb2.LoadModelRequest(model_id=model_id), timeout=600, metadata=metadata)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.PERMISSION_DENIED:
            raise
        log.info("this worker's key may not load models; using %r as the server has it", model_id)


def _stream(
    address: str, model_id: str, request: inference_pb2.StreamActivationsRequest, skip: int
) -> Iterator[tuple[str, torch.Tensor]]:
    """One StreamActivations call, as (server's layer name, rows); the first ``skip`` rows were delivered
    by an earlier server (a server sends the same chunks in the same order for the same request)."""
    metadata = call_metadata()
    with open_channel(address, [("grpc.max_receive_message_length", 16 << 20)]) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        ensure_loaded(stub, model_id, metadata)
        call = stream_activations_call(channel)  # payloads stay in the received bytes
        for chunk in call(request, timeout=STREAM_TIMEOUT_S, metadata=metadata):
            rows = chunk_to_tensor(chunk)
            if skip >= rows.shape[0]:
                skip -= rows.shape[0]
                continue
            yield chunk.layer, rows[skip:] if skip else rows
            skip = 0


def live_layers_source(
    address: str | Finder, model_id: str, layers: Sequence[str], source: artifacts_pb2.LiveSource
) -> Callable[[], Iterator[tuple[str, torch.Tensor]]]:
    """A factory opening a fresh stream of every layer in ``layers`` per epoch, yielding (layer, rows).

    Layers are named as asked: the server streams its own (stable) names in the order asked, so the
    first distinct name it sends is ``layers[0]``, and so on. ``address`` is one server, or a finder giving
    the servers to try, best first. Servers are looked up only when a stream opens: a retried job whose
    SAEs were already published needs none.
    """
    finder: Finder = address if callable(address) else (lambda: [address] if address else [])
    request = inference_pb2.StreamActivationsRequest(
        model_id=model_id,
        layers=list(layers),
        dataset=source.dataset,
        batch_size=source.batch_size or 16,
        max_length=source.max_length,
    )

    def pieces() -> Iterator[tuple[str, torch.Tensor]]:
        delivered, failures, failed = 0, 0, set()
        asked: dict[str, str] = {}  # the server's name of a layer -> the name it was asked for by
        while True:
            candidates = finder()
            if not candidates and not failed:
                raise ValueError(
                    "no inference server for live training: none registered for this model and "
                    "MI_CROW_INFERENCE_ADDRESS is not set on this worker"
                )
            # Once every server has failed, start over: one may have come back on the same address.
            address = next((a for a in candidates if a not in failed), candidates[0] if candidates else "")
            if not address:
                raise ValueError(f"no inference server left for {model_id!r} (failed: {sorted(failed)})")
            try:
                for served, rows in _stream(address, model_id, request, delivered):
                    if served not in asked:
                        if len(asked) == len(layers):
                            raise ValueError(f"the server streamed layer {served!r}, which is none of {list(layers)}")
                        asked[served] = layers[len(asked)]
                    delivered += rows.shape[0]
                    yield asked[served], rows
                return
            except grpc.RpcError as exc:
                if exc.code() not in FAILOVER_CODES or failures >= MAX_FAILOVERS:
                    raise
                failures += 1
                failed.add(address)
                log.warning(
                    "inference server %s failed (%s) after %d rows; moving to another", address, exc.code().name,
                    delivered,
                )  # fmt: skip
                time.sleep(min(0.5 * failures, 3.0))

    return pieces


def live_source(
    address: str | Finder, model_id: str, layer: str, source: artifacts_pb2.LiveSource
) -> Callable[[], Iterator[torch.Tensor]]:
    """``live_layers_source`` of one layer: a factory of fresh row streams, one per epoch."""
    pieces = live_layers_source(address, model_id, [layer], source)
    return lambda: (rows for _, rows in pieces())
