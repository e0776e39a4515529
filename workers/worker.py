"""``mi-crow worker``: one RQ worker process taking training jobs from Redis, one at a time."""

from __future__ import annotations

import logging
import os

from rq import Worker

from mi_crow.services.common.config import ServerConfig
from mi_crow.services.common.redis_conn import connect

log = logging.getLogger("mi_crow.workers")


def run_worker(cfg: ServerConfig, *, burst: bool = False, name: str | None = None) -> None:
    # The job function reads these in the work horse; CUDA is only touched inside a job (forked horses).
    os.environ["MI_CROW_STORE"] = str(cfg.artifact_root)
    os.environ["MI_CROW_REDIS_URL"] = cfg.redis_url
    os.environ["MI_CROW_QUEUE"] = cfg.queue_name
    # Import the job code (torch included) once in the parent: every forked work horse then starts warm.
    # No CUDA context is created by importing, so forking stays safe on GPU hosts.
    import mi_crow.workers.training  # noqa: F401

    redis = connect(cfg.redis_url)
    worker = Worker([cfg.queue_name], connection=redis, name=name, worker_ttl=30, maintenance_interval=15)
    log.info("worker %s on %s (queue %s)", worker.name, cfg.redis_url, cfg.queue_name)
    print(f"mi-crow worker {worker.name} ready", flush=True)
    worker.work(burst=burst, logging_level="WARNING", with_scheduler=True)
