"""An inference server's entry in the registry: its address, models, device and load, renewed by a heartbeat."""

from __future__ import annotations

import os

from mi_crow.language_model.loading import pick_device
from mi_crow.services.common.config import ServerConfig
from mi_crow.services.common.registry import (
    Registration,
    ServerRecord,
    advertised_address,
    interval_from_env,
    probe_connection,
    server_id_from_env,
)
from mi_crow.services.common.server import RunningServer
from mi_crow.services.inference.service import InferenceServicer


def registry_url_from_env() -> str | None:
    """Only an explicitly configured Redis: without one the server runs unregistered, as before."""
    return os.environ.get("MI_CROW_REDIS_URL") or os.environ.get("REDIS_URL") or None


def register(cfg: ServerConfig, servicer: InferenceServicer, running: RunningServer, url: str) -> Registration:
    """Join the registry now; leave it when ``running`` stops (before in-flight calls drain)."""
    pool = servicer.pool
    try:
        device = str(pick_device(pool.default_device))
    except Exception:  # a misconfigured device fails at load time with a precise error; here it is only a label
        device = str(pool.default_device or "")
    record = ServerRecord(
        server_id=server_id_from_env(running.port),
        address=advertised_address(cfg.host, running.port),
        available_models=sorted(pool.aliases),
        device=device,
    )

    def snapshot(rec: ServerRecord) -> None:
        rec.loaded_models = sorted(pool.loaded())
        rec.queue_depth = pool.gate.waiting
        rec.busy = pool.gate.busy
        rec.serving = running.watch is None or not running.watch.failing

    every, ttl = interval_from_env()
    registration = Registration(probe_connection(url), record, snapshot, every_s=every, ttl_s=ttl)
    registration.start()
    running.on_stop.append(registration.stop)
    return registration
