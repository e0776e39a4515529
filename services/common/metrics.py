"""Prometheus metrics of every mi-crow process, served on a documented port (MI_CROW_METRICS_PORT).

Ports used by docker-compose and `mi-crow up`: artifacts 9101, inference 9102 (0 or unset: no endpoint).
Workers serve theirs on MI_CROW_WORKER_METRICS_PORT (compose: 9103 in each worker container; on one host
each worker needs its own port), metrics defined in mi_crow.workers.telemetry.
"""

from __future__ import annotations

import logging
import os

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("mi_crow.services.metrics")

REQUESTS = Counter("mi_crow_requests_total", "RPCs served, by method and final status", ["method", "code"])
LATENCY = Histogram(
    "mi_crow_request_seconds",
    "RPC wall time, by method",
    ["method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
TOKENS_HARVESTED = Counter("mi_crow_tokens_harvested_total", "Real tokens whose activations were harvested")
DEVICE_QUEUE = Gauge("mi_crow_device_queue_depth", "Requests waiting for the inference device")
DEVICE_BUSY = Gauge("mi_crow_device_busy", "1 while a request computes on the inference device")
JOBS = Gauge("mi_crow_jobs", "Training jobs by state", ["state"])


def gpu_memory_gauge() -> None:
    """Allocated CUDA memory, on processes that hold a GPU."""
    import torch

    if torch.cuda.is_available():
        gauge = Gauge("mi_crow_gpu_memory_bytes", "CUDA memory allocated by this process")
        gauge.set_function(lambda: float(torch.cuda.memory_allocated()))


def serve_metrics(port: int | None = None, host: str = "127.0.0.1") -> int | None:
    """Start the /metrics endpoint; returns its port (None when disabled)."""
    port = int(os.environ.get("MI_CROW_METRICS_PORT", "0")) if port is None else port
    if not port:
        return None
    server, _ = start_http_server(port, addr=host)
    bound = server.server_port
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return bound
