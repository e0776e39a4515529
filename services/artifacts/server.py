"""``mi-crow serve-artifacts``: the metadata/artifact service process (ArtifactService + JobService)."""

from __future__ import annotations

import logging
import os
import threading

from redis import Redis
from redis.exceptions import RedisError

from mi_crow.allocator import tune_for_large_buffers
from mi_crow.services.artifacts.jobs import STALE_S, JobStore
from mi_crow.services.artifacts.service import ArtifactServicer, JobServicer
from mi_crow.services.common.config import ServerConfig
from mi_crow.services.common.metrics import JOBS, serve_metrics
from mi_crow.services.common.redis_conn import connect
from mi_crow.services.common.server import (
    HealthWatch,
    RunningServer,
    announce_and_serve,
    start_configured,
    volume_writable,
)
from mi_crow.v1 import artifacts_pb2, artifacts_pb2_grpc

log = logging.getLogger("mi_crow.services.artifacts")


class Janitor(threading.Thread):
    """Re-queues jobs whose worker died (their heartbeat stopped); several services may run one each."""

    def __init__(self, jobs: JobStore, every_s: float = 2.0, stale_s: float = STALE_S) -> None:
        super().__init__(daemon=True, name="job-janitor")
        self.jobs, self.every_s, self.stale_s = jobs, every_s, stale_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.every_s):
            try:
                for job_id in self.jobs.requeue_lost(stale_s=self.stale_s):
                    log.warning("job %s: worker lost, re-queued or failed", job_id)
            except RedisError as exc:  # Redis restarting: try again next round
                log.warning("janitor: %s", exc)


def _safe_counts(jobs: JobStore) -> dict[str, int]:
    try:
        return jobs.counts()
    except RedisError:
        return {}  # a scrape during a Redis restart reports zeros rather than failing


def start_artifact_server(cfg: ServerConfig) -> RunningServer:
    redis = connect(cfg.redis_url)
    jobs = JobStore(redis, cfg.queue_name)
    janitor = Janitor(jobs, stale_s=float(os.environ.get("MI_CROW_JOB_STALE_S", STALE_S)))
    janitor.start()
    for state in ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"):
        JOBS.labels(state).set_function(lambda state=state: float(_safe_counts(jobs).get(state, 0)))
    cfg.artifact_root.mkdir(parents=True, exist_ok=True)
    names = artifacts_pb2.DESCRIPTOR.services_by_name
    running = start_configured(
        cfg,
        [
            (
                artifacts_pb2_grpc.add_ArtifactServiceServicer_to_server,
                ArtifactServicer(cfg, redis),
                names["ArtifactService"].full_name,
            ),
            (
                artifacts_pb2_grpc.add_JobServiceServicer_to_server,
                JobServicer(cfg, jobs),
                names["JobService"].full_name,
            ),
        ],
    )
    # The health probe gets its own connection without retries: it must notice an outage, not ride it out.
    probe = Redis.from_url(cfg.redis_url, socket_connect_timeout=1, socket_timeout=1)
    HealthWatch(running, {"redis": probe.ping, "artifact volume": volume_writable(cfg.artifact_root)}).start()
    return running


def main(cfg: ServerConfig) -> None:
    tune_for_large_buffers()
    running = start_artifact_server(cfg)
    mode = "API key required for deletes" if cfg.admin_key else "open mode (no API key configured)"
    log.warning("artifact service on %s:%d, store %s, %s", cfg.host, running.port, cfg.artifact_root, mode)
    serve_metrics(host=cfg.host)
    announce_and_serve("artifacts", cfg, running)
