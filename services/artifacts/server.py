"""``mi-crow serve-artifacts``: the metadata/artifact service process (ArtifactService + JobService)."""

from __future__ import annotations

import logging

from redis import Redis

from mi_crow.services.artifacts.jobs import JobStore
from mi_crow.services.artifacts.service import ArtifactServicer, JobServicer
from mi_crow.services.common.config import ServerConfig
from mi_crow.services.common.server import RunningServer, serve_until_signal, start_server
from mi_crow.v1 import artifacts_pb2, artifacts_pb2_grpc

log = logging.getLogger("mi_crow.services.artifacts")


def start_artifact_server(cfg: ServerConfig) -> RunningServer:
    redis = Redis.from_url(cfg.redis_url)
    jobs = JobStore(redis, cfg.queue_name)
    cfg.artifact_root.mkdir(parents=True, exist_ok=True)
    names = artifacts_pb2.DESCRIPTOR.services_by_name
    return start_server(
        [
            (
                artifacts_pb2_grpc.add_ArtifactServiceServicer_to_server,
                ArtifactServicer(cfg),
                names["ArtifactService"].full_name,
            ),
            (
                artifacts_pb2_grpc.add_JobServiceServicer_to_server,
                JobServicer(cfg, jobs),
                names["JobService"].full_name,
            ),
        ],
        host=cfg.host,
        port=cfg.port,
        max_workers=cfg.max_workers,
    )


def main(cfg: ServerConfig) -> None:
    running = start_artifact_server(cfg)
    mode = "API key required for deletes" if cfg.admin_key else "open mode (no API key configured)"
    log.warning("artifact service on %s:%d, store %s, %s", cfg.host, running.port, cfg.artifact_root, mode)
    print(f"mi-crow artifacts listening on {cfg.host}:{running.port}", flush=True)
    serve_until_signal(running, cfg.grace_seconds)
