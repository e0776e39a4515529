"""Prometheus metrics and request-id logging of worker jobs.

RQ runs every job in a forked work horse that exits afterwards, so metrics counted there would die with
it. The horse instead writes small JSON events into a pipe the worker process opened before forking; a
thread in the worker applies them to the metrics its /metrics endpoint serves
(MI_CROW_WORKER_METRICS_PORT; 0 or unset: none). Jobs run without a worker (tests, embedding) count
directly in their own process.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from mi_crow.services.common.logs import REQUEST_ID

log = logging.getLogger("mi_crow.workers")

METRICS_PORT_ENV = "MI_CROW_WORKER_METRICS_PORT"

STARTED = Counter("mi_crow_worker_jobs_started_total", "Job attempts this worker started, by kind", ["kind"])
FINISHED = Counter(
    "mi_crow_worker_jobs_finished_total",
    "Job attempts this worker finished, by kind and final state (SUCCEEDED, FAILED, CANCELLED, SUPERSEDED)",
    ["kind", "state"],
)
FAILED = Counter("mi_crow_worker_jobs_failed_total", "Job attempts that ended FAILED or raised, by kind", ["kind"])
SECONDS = Histogram(
    "mi_crow_worker_job_seconds",
    "Wall time of a job attempt, by kind",
    ["kind"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 12 * 3600),
)
VECTORS = Counter("mi_crow_worker_vectors_trained_total", "Activation vectors (tokens) trained on, by kind", ["kind"])
QUEUE_DEPTH = Gauge("mi_crow_worker_queue_depth", "Jobs waiting in the queues this worker takes jobs from")
_gpu: dict[str, Gauge] = {}  # created on the first report from a job that holds a GPU

_events_fd: int | None = None  # write end of the pipe to the worker process, inherited by forked horses
_worker_pid = 0


def _gpu_gauge(name: str, doc: str) -> Gauge:
    if name not in _gpu:
        _gpu[name] = Gauge(name, doc)
    return _gpu[name]


def _apply(event: dict[str, Any]) -> None:
    kind = str(event.get("kind", "unknown"))
    what = event.get("event")
    if what == "started":
        STARTED.labels(kind).inc()
    elif what == "finished":
        state = str(event.get("state", "FAILED"))
        FINISHED.labels(kind, state).inc()
        SECONDS.labels(kind).observe(float(event.get("seconds", 0.0)))
        if state == "FAILED":
            FAILED.labels(kind).inc()
    elif what == "vectors":
        VECTORS.labels(kind).inc(float(event.get("n", 0)))
    elif what == "gpu":
        _gpu_gauge("mi_crow_worker_gpu_memory_bytes", "CUDA memory allocated by the running job").set(
            float(event.get("bytes", 0))
        )
        if "peak" in event:
            _gpu_gauge("mi_crow_worker_gpu_peak_memory_bytes", "Peak CUDA memory of the latest job").set(
                float(event["peak"])
            )


def emit(event: dict[str, Any]) -> None:
    """Count ``event`` in the worker process (through the pipe from a horse), or here without one."""
    if _events_fd is not None and os.getpid() != _worker_pid:
        # Under PIPE_BUF bytes, so one write is atomic even with several horses.
        os.write(_events_fd, (json.dumps(event) + "\n").encode())
    else:
        _apply(event)


def vectors_trained(kind: str, n: float) -> None:
    if n:
        emit({"event": "vectors", "kind": kind, "n": n})


def start_event_reader() -> None:
    """In the worker process, before any horse is forked: open the pipe and apply what horses send."""
    global _events_fd, _worker_pid
    read_fd, _events_fd = os.pipe()
    _worker_pid = os.getpid()

    def read() -> None:
        with os.fdopen(read_fd, "rb") as pipe:
            for line in pipe:
                try:
                    _apply(json.loads(line))
                except (ValueError, TypeError) as exc:
                    log.warning("bad metrics event %r: %s", line[:200], exc)

    threading.Thread(target=read, daemon=True, name="job-metrics").start()


class _GpuSampler(threading.Thread):
    """Reports the job's CUDA memory every few seconds, and its peak at the end (GPU jobs only)."""

    def __init__(self, kind: str, every_s: float = 2.0) -> None:
        super().__init__(daemon=True, name="gpu-memory")
        self.kind, self.every_s = kind, every_s
        self.stopped = threading.Event()

    def run(self) -> None:
        import torch

        while not self.stopped.wait(self.every_s):
            if torch.cuda.is_initialized():
                emit({"event": "gpu", "kind": self.kind, "bytes": torch.cuda.memory_allocated()})

    def finish(self) -> None:
        import torch

        self.stopped.set()
        if torch.cuda.is_initialized():
            emit(
                {
                    "event": "gpu",
                    "kind": self.kind,
                    "bytes": torch.cuda.memory_allocated(),
                    "peak": torch.cuda.max_memory_allocated(),
                }
            )


def observed(kind: str, request_id_of: Callable[[str], str]) -> Callable[[Callable[..., str]], Callable[..., str]]:
    """Count a job function's attempts by kind and outcome, and stamp its log lines with the request id
    of the call that submitted the job (``request_id_of(job_id)``)."""

    def wrap(func: Callable[..., str]) -> Callable[..., str]:
        @functools.wraps(func)
        def run(job_id: str, *args: Any, **kwargs: Any) -> str:
            try:
                request_id = request_id_of(job_id)
            except Exception as exc:  # the job's own code reports an unreachable Redis properly
                log.warning("job %s: no request id (%s)", job_id, exc)
                request_id = ""
            token = REQUEST_ID.set(request_id)
            emit({"event": "started", "kind": kind})
            log.info("job %s (%s) started", job_id, kind)
            sampler = _GpuSampler(kind)
            sampler.start()
            start, state = time.perf_counter(), "FAILED"
            try:
                state = str(func(job_id, *args, **kwargs))
                return state
            finally:
                seconds = time.perf_counter() - start
                sampler.finish()
                emit({"event": "finished", "kind": kind, "state": state, "seconds": seconds})
                log.info("job %s (%s) ended %s after %.1f s", job_id, kind, state, seconds)
                REQUEST_ID.reset(token)

        return run

    return wrap
