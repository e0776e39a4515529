"""``mi-crow worker``: one RQ worker process taking training jobs from Redis, one at a time."""

from __future__ import annotations

import logging
import os

from redis.exceptions import RedisError
from rq import Worker

from mi_crow.allocator import tune_for_large_buffers
from mi_crow.services.common.config import ServerConfig
from mi_crow.services.common.logs import configure as configure_logs
from mi_crow.services.common.metrics import serve_metrics
from mi_crow.services.common.redis_conn import connect
from mi_crow.workers import telemetry

log = logging.getLogger("mi_crow.workers")


def _queue_depth(worker: Worker) -> float:
    try:
        return float(sum(queue.count for queue in worker.queues))
    except RedisError:
        return float("nan")  # a scrape during a Redis restart says "unknown", not "empty"


def serve_worker_metrics(worker: Worker, host: str) -> int | None:
    """/metrics on MI_CROW_WORKER_METRICS_PORT (0 or unset: none); job metrics arrive from the work horses.

    Each worker needs its own port on a shared host; containers (``--scale worker=N``) may all use one.
    """
    telemetry.start_event_reader()
    telemetry.QUEUE_DEPTH.set_function(lambda: _queue_depth(worker))
    return serve_metrics(int(os.environ.get(telemetry.METRICS_PORT_ENV, "0") or 0), host=host)


def run_worker(cfg: ServerConfig, *, burst: bool = False, name: str | None = None) -> None:
    # The job function reads these in the work horse; CUDA is only touched inside a job (forked horses).
    tune_for_large_buffers()  # inherited by every forked work horse
    os.environ["MI_CROW_STORE"] = str(cfg.artifact_root)
    os.environ["MI_CROW_REDIS_URL"] = cfg.redis_url
    os.environ["MI_CROW_QUEUE"] = cfg.queue_name
    # Import the job code (torch included) once in the parent: every forked work horse then starts warm.
    # No CUDA context is created by importing, so forking stays safe on GPU hosts.
    import mi_crow.workers.training  # noqa: F401

    configure_logs()  # JSON lines; a job's lines carry the request id of the call that submitted it
    redis = connect(cfg.redis_url)
    worker = Worker([cfg.queue_name], connection=redis, name=name, worker_ttl=30, maintenance_interval=15)
    log.info("worker %s on %s (queue %s)", worker.name, cfg.redis_url, cfg.queue_name)
    serve_worker_metrics(worker, cfg.host)
    print(f"mi-crow worker {worker.name} ready", flush=True)
    worker.work(burst=burst, logging_level="WARNING", with_scheduler=True)
