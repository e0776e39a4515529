"""``mi-crow serve-inference``: the model-inference server process."""

from __future__ import annotations

import logging

from mi_crow.allocator import tune_for_large_buffers
from mi_crow.chunk_wire import encoded_or_message
from mi_crow.services.common.config import ServerConfig
from mi_crow.services.common.encoded_responses import with_response_serializers
from mi_crow.services.common.metrics import DEVICE_BUSY, DEVICE_QUEUE, gpu_memory_gauge, serve_metrics
from mi_crow.services.common.server import (
    HealthWatch,
    RunningServer,
    announce_and_serve,
    start_configured,
    volume_writable,
)
from mi_crow.services.inference.registration import register, registry_url_from_env
from mi_crow.services.inference.service import InferenceServicer
from mi_crow.v1 import inference_pb2, inference_pb2_grpc

log = logging.getLogger("mi_crow.services.inference")


def start_inference_server(
    cfg: ServerConfig, servicer: InferenceServicer | None = None, registry_url: str | None = None
) -> RunningServer:
    """Start serving ``cfg``; pass ``servicer`` to keep a handle on its pool and counters (tests, embedding).

    With ``registry_url`` (a Redis URL) the server registers itself for discovery while it runs.
    """
    servicer = servicer or InferenceServicer(cfg)
    gate = servicer.pool.gate
    DEVICE_QUEUE.set_function(lambda: float(gate.waiting))
    DEVICE_BUSY.set_function(lambda: float(gate.busy))
    gpu_memory_gauge()
    name = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
    # StreamActivations yields chunks it encoded itself (one copy of each payload instead of three).
    add = with_response_serializers(
        inference_pb2_grpc.add_InferenceServiceServicer_to_server, {"StreamActivations": encoded_or_message}
    )
    running = start_configured(cfg, [(add, servicer, name)])
    cfg.artifact_root.mkdir(parents=True, exist_ok=True)
    HealthWatch(running, {"artifact volume": volume_writable(cfg.artifact_root)}).start()
    if registry_url:
        register(cfg, servicer, running, registry_url)
    return running


def main(cfg: ServerConfig) -> None:
    tune_for_large_buffers()
    servicer = InferenceServicer(cfg)
    running = start_inference_server(cfg, servicer, registry_url_from_env())
    aliases = ", ".join(sorted(servicer.pool.aliases)) or "none"
    log.warning("inference service on %s:%d, store %s, aliases: %s", cfg.host, running.port, cfg.artifact_root, aliases)
    serve_metrics(host=cfg.host)
    announce_and_serve("inference", cfg, running)
