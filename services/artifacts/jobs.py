"""Training jobs: state in Redis hashes (the record survives any service restart), work on an RQ queue.

Keys (prefix ``mi_crow:``): ``job:<id>`` hash, ``job:<id>:logs`` capped list, ``jobs`` sorted set by
creation time, ``idem:<key>`` -> job id. The RQ job carries only the job id and attempt number, never
request content.

A running attempt writes a heartbeat into the job hash. When it stops (the worker died), ``requeue_lost``
starts attempt n+1 under a new RQ id; it resumes from the last checkpoint on the shared volume. Attempt
numbers fence old attempts: one that wakes up after being replaced stops at its next step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format
from redis import Redis
from rq import Queue
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job as RqJob

from mi_crow.services.common.logs import REQUEST_ID
from mi_crow.store import new_id
from mi_crow.v1 import artifacts_pb2

PREFIX = "mi_crow:"
MAX_LOG_LINES = 200
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}
JOB_TIMEOUT_S = 24 * 3600  # RQ's default 180 s would kill any real training
MAX_ATTEMPTS = 3  # a job whose workers keep dying ends FAILED after this many attempts
HEARTBEAT_S = 2.0  # how often a running attempt reports that it is alive
STALE_S = 15.0  # no heartbeat for this long: the attempt's worker is gone


def idempotency_key(request: artifacts_pb2.TrainingRequest) -> str:
    """The caller's key, or a digest of every field of the request (k and sizes included)."""
    if request.idempotency_key:
        return request.idempotency_key
    body = json_format.MessageToJson(request, sort_keys=True, preserving_proto_field_name=True)
    return "auto-" + hashlib.sha256(body.encode()).hexdigest()[:32]


MAX_LAYERS_PER_JOB = 32


def layer_sae_ids(sae_id: str, layers: Sequence[str]) -> list[str]:
    """The ids of a multi-layer job's SAEs: one per layer, in the request's order."""
    return [f"{sae_id}.{layer}" for layer in layers]


class JobStore:
    def __init__(self, redis: Redis, queue_name: str) -> None:
        self.redis = redis
        self.queue = Queue(queue_name, connection=redis)

    def _key(self, job_id: str) -> str:
        return f"{PREFIX}job:{job_id}"

    # -- submit / read -------------------------------------------------------------------------------
    def submit(self, request: artifacts_pb2.TrainingRequest, func: str) -> tuple[str, bool]:
        """Create and enqueue a job; returns (job id, created). The same idempotency key gives the same job."""
        key = idempotency_key(request)  # before the sae id is filled in: the same request, the same key
        req = artifacts_pb2.TrainingRequest()
        req.CopyFrom(request)
        if not req.sae_id:
            req.sae_id = new_id("sae")  # fixed now, so a retried job resumes into the same directory
        return self._create(req, key, "", "request", {}, func, "queued")

    def submit_dashboard(self, request: artifacts_pb2.DashboardRequest, func: str) -> tuple[str, bool]:
        """Create and enqueue a dashboard job (Job.kind "dashboard"); idempotent like ``submit``."""
        req = artifacts_pb2.DashboardRequest()
        req.CopyFrom(request)
        # Its own key space: a training job's key never answers a dashboard request.
        log = f"dashboard of SAE {req.sae_id} queued"
        key = idempotency_key(req)
        return self._create(req, key, "dashboard:", "dashboard_request", {"kind": "dashboard"}, func, log)

    def _create(
        self, req: Any, key: str, key_space: str, field: str, extra: dict[str, str], func: str, log: str
    ) -> tuple[str, bool]:
        """Store ``req`` (serialized into ``field``) as a new job under ``key`` and enqueue it."""
        job_id = f"job-{uuid.uuid4().hex[:16]}"
        if not self.redis.set(f"{PREFIX}idem:{key_space}{key}", job_id, nx=True):
            return self.redis.get(f"{PREFIX}idem:{key_space}{key}").decode(), False
        req.idempotency_key = key
        now = time.time()
        self.redis.hset(
            self._key(job_id),
            mapping={
                "state": "QUEUED",
                field: req.SerializeToString(),
                **extra,
                "sae_id": req.sae_id,
                "created_at": now,
                "progress": 0.0,
                "step": 0,
                "total_steps": 0,
                "metrics": "{}",
                "func": func,
                "request_id": REQUEST_ID.get(),  # the submitting call's, so the worker's logs carry it too
            },
        )
        self.redis.zadd(f"{PREFIX}jobs", {job_id: now})
        self.log(job_id, f"{log} on {self.queue.name}")
        self._enqueue(job_id, func, attempt=1)
        return job_id, True

    def _enqueue(self, job_id: str, func: str, attempt: int) -> None:
        rq_id = f"{job_id}-a{attempt}"
        self.update(job_id, attempt=attempt, rq_id=rq_id, heartbeat_at=0)
        # No RQ Retry: a lost attempt is detected by our heartbeat and re-queued as a new, fenced attempt.
        self.queue.enqueue(func, job_id, attempt, job_id=rq_id, job_timeout=JOB_TIMEOUT_S, result_ttl=86400)

    def attempt(self, job_id: str) -> int:
        return int(self.redis.hget(self._key(job_id), "attempt") or 0)

    def request_id(self, job_id: str) -> str:
        """The x-request-id of the call that submitted the job ("" when none was recorded)."""
        return (self.redis.hget(self._key(job_id), "request_id") or b"").decode()

    def heartbeat(self, job_id: str, attempt: int) -> bool:
        """Record that ``attempt`` is alive; False if a newer attempt has replaced it (it must stop)."""
        if self.attempt(job_id) != attempt:
            return False
        self.update(job_id, heartbeat_at=time.time())
        return True

    def requeue_lost(
        self, now: float | None = None, stale_s: float = STALE_S, max_attempts: int = MAX_ATTEMPTS
    ) -> list[str]:
        """Re-queue RUNNING jobs whose heartbeat stopped; fail those that used up their attempts."""
        now = now or time.time()
        moved = []
        for job_id in (i.decode() for i in self.redis.zrange(f"{PREFIX}jobs", 0, -1)):
            fields = self.redis.hmget(self._key(job_id), "state", "heartbeat_at", "started_at", "attempt", "func")
            state, beat, started, attempt, func = (f.decode() if f is not None else "" for f in fields)
            if state != "RUNNING":
                continue
            last = max(float(beat or 0), float(started or 0))
            if now - last < stale_s:
                continue
            # One janitor wins per lost attempt, however many artifact services run.
            if not self.redis.set(f"{PREFIX}requeue:{job_id}:{attempt}", 1, nx=True, ex=3600):
                continue
            n = int(attempt or 1)
            if n >= max_attempts:
                reason = f"worker lost {n} times (no heartbeat for {now - last:.0f}s); giving up"
                self.update(job_id, state="FAILED", error=reason, finished_at=now)
                self.log(job_id, reason)
            else:
                self.log(job_id, f"worker lost (no heartbeat for {now - last:.0f}s); re-queued as attempt {n + 1}")
                self.update(job_id, state="QUEUED")
                self._enqueue(job_id, func, attempt=n + 1)
            moved.append(job_id)
        return moved

    def exists(self, job_id: str) -> bool:
        return bool(self.redis.exists(self._key(job_id)))

    def get(self, job_id: str) -> artifacts_pb2.Job:
        raw = self.redis.hgetall(self._key(job_id))
        if not raw:
            raise FileNotFoundError(f"no job {job_id!r}")
        h = {k.decode(): v for k, v in raw.items()}
        request = artifacts_pb2.TrainingRequest()
        request.ParseFromString(h.get("request", b""))
        logs = [line.decode() for line in self.redis.lrange(f"{self._key(job_id)}:logs", 0, -1)]
        job = artifacts_pb2.Job(
            job_id=job_id,
            state=artifacts_pb2.JobState.Value(h["state"].decode()),
            progress=float(h.get("progress", 0)),
            step=int(h.get("step", 0)),
            total_steps=int(h.get("total_steps", 0)),
            metrics={k: float(v) for k, v in json.loads(h.get("metrics", b"{}")).items()},
            logs=logs,
            error=h.get("error", b"").decode(),
            sae_id=h.get("sae_id", b"").decode(),
            sae_path=h.get("sae_path", b"").decode(),
            request=request,
            created_at=float(h.get("created_at", 0)),
            started_at=float(h.get("started_at", 0)),
            finished_at=float(h.get("finished_at", 0)),
            phase=h.get("phase", b"").decode(),
            sae_ids=layer_sae_ids(request.sae_id, request.layers),
            sae_paths=json.loads(h.get("sae_paths", b"[]")),
        )
        job.kind = h.get("kind", b"training").decode()
        if job.kind == "dashboard":
            job.dashboard_request.ParseFromString(h.get("dashboard_request", b""))
            job.dashboard_path = h.get("dashboard_path", b"").decode()
        return job

    def state(self, job_id: str) -> str:
        value = self.redis.hget(self._key(job_id), "state")
        if value is None:
            raise FileNotFoundError(f"no job {job_id!r}")
        return value.decode()

    def list(self, state: str | None = None) -> list[artifacts_pb2.Job]:
        ids = [i.decode() for i in self.redis.zrange(f"{PREFIX}jobs", 0, -1)]
        jobs = [self.get(i) for i in ids if self.exists(i)]
        if state:
            jobs = [j for j in jobs if artifacts_pb2.JobState.Name(j.state) == state]
        return jobs

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"], 0)
        for job_id in (i.decode() for i in self.redis.zrange(f"{PREFIX}jobs", 0, -1)):
            state = self.redis.hget(self._key(job_id), "state")
            if state is not None:
                counts[state.decode()] = counts.get(state.decode(), 0) + 1
        return counts

    # -- updates (from workers) ----------------------------------------------------------------------
    def log(self, job_id: str, line: str) -> None:
        key = f"{self._key(job_id)}:logs"
        stamp = time.strftime("%H:%M:%S")
        pipe = self.redis.pipeline()
        pipe.rpush(key, f"{stamp} {line}")
        pipe.ltrim(key, -MAX_LOG_LINES, -1)
        pipe.execute()

    def update(self, job_id: str, **fields: Any) -> None:
        mapping = {k: (json.dumps(v) if isinstance(v, dict | list) else v) for k, v in fields.items()}
        self.redis.hset(self._key(job_id), mapping=mapping)

    def cancel_requested(self, job_id: str) -> bool:
        return self.redis.hget(self._key(job_id), "cancel_requested") == b"1"

    # -- cancel --------------------------------------------------------------------------------------
    def cancel(self, job_id: str) -> None:
        state = self.state(job_id)
        if state in TERMINAL:
            return
        self.update(job_id, cancel_requested=1)
        rq_id = (self.redis.hget(self._key(job_id), "rq_id") or job_id.encode()).decode()
        try:
            rq_job = RqJob.fetch(rq_id, connection=self.redis)
        except NoSuchJobError:
            rq_job = None
        if rq_job is not None:
            if rq_job.get_status() == "started":
                # Kills the work horse within about half a second; RQ does not retry a stopped job.
                with contextlib.suppress(InvalidJobOperation):
                    send_stop_job_command(self.redis, rq_id)
            else:
                rq_job.cancel()
        self.update(job_id, state="CANCELLED", finished_at=time.time())
        self.log(job_id, "cancelled by request")
