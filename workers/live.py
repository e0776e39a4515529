"""Activations streamed live from the inference server, as a re-startable source for the trainer."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import torch

from mi_crow.chunks import chunk_to_tensor
from mi_crow.v1 import artifacts_pb2, inference_pb2, inference_pb2_grpc

STREAM_TIMEOUT_S = 6 * 3600


def live_source(
    address: str, model_id: str, layer: str, source: artifacts_pb2.LiveSource
) -> Callable[[], Iterator[torch.Tensor]]:
    """A factory opening a fresh StreamActivations call per epoch (the trainer calls it once per pass)."""
    if not address:
        raise ValueError("this worker has no inference server configured (MI_CROW_INFERENCE_ADDRESS) for live training")

    def chunks() -> Iterator[torch.Tensor]:
        with grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 16 << 20)]) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            stub.LoadModel(inference_pb2.LoadModelRequest(model_id=model_id), timeout=600)
            request = inference_pb2.StreamActivationsRequest(
                model_id=model_id,
                layers=[layer],
                dataset=source.dataset,
                batch_size=source.batch_size or 16,
                max_length=source.max_length,
            )
            for chunk in stub.StreamActivations(request, timeout=STREAM_TIMEOUT_S):
                yield chunk_to_tensor(chunk)

    return chunks
