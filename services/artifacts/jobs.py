"""Training jobs: state in Redis hashes (the record survives any service restart), work on an RQ queue.

Keys (prefix ``mi_crow:``): ``job:<id>`` hash, ``job:<id>:logs`` capped list, ``jobs`` sorted set by
creation time, ``idem:<key>`` -> job id. The RQ job carries only the job id, never request content.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import uuid
from typing import Any

from google.protobuf import json_format
from redis import Redis
from rq import Queue, Retry
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job as RqJob

from mi_crow.store import new_id
from mi_crow.v1 import artifacts_pb2

PREFIX = "mi_crow:"
MAX_LOG_LINES = 200
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}
JOB_TIMEOUT_S = 24 * 3600  # RQ's default 180 s would kill any real training
RETRIES = 2  # a job whose worker dies is re-run (from its checkpoint) at most this often


def idempotency_key(request: artifacts_pb2.TrainingRequest) -> str:
    """The caller's key, or a digest of every field of the request (k and sizes included)."""
    if request.idempotency_key:
        return request.idempotency_key
    body = json_format.MessageToJson(request, sort_keys=True, preserving_proto_field_name=True)
    return "auto-" + hashlib.sha256(body.encode()).hexdigest()[:32]


class JobStore:
    def __init__(self, redis: Redis, queue_name: str) -> None:
        self.redis = redis
        self.queue = Queue(queue_name, connection=redis)

    def _key(self, job_id: str) -> str:
        return f"{PREFIX}job:{job_id}"

    # -- submit / read -------------------------------------------------------------------------------
    def submit(self, request: artifacts_pb2.TrainingRequest, func: str) -> tuple[str, bool]:
        """Create and enqueue a job; returns (job id, created). The same idempotency key gives the same job."""
        key = idempotency_key(request)
        job_id = f"job-{uuid.uuid4().hex[:16]}"
        if not self.redis.set(f"{PREFIX}idem:{key}", job_id, nx=True):
            return self.redis.get(f"{PREFIX}idem:{key}").decode(), False
        req = artifacts_pb2.TrainingRequest()
        req.CopyFrom(request)
        req.idempotency_key = key
        if not req.sae_id:
            req.sae_id = new_id("sae")  # fixed now, so a retried job resumes into the same directory
        now = time.time()
        self.redis.hset(
            self._key(job_id),
            mapping={
                "state": "QUEUED",
                "request": req.SerializeToString(),
                "sae_id": req.sae_id,
                "created_at": now,
                "progress": 0.0,
                "step": 0,
                "total_steps": 0,
                "metrics": "{}",
            },
        )
        self.redis.zadd(f"{PREFIX}jobs", {job_id: now})
        self.log(job_id, f"queued on {self.queue.name}")
        self.queue.enqueue(
            func, job_id, job_id=job_id, job_timeout=JOB_TIMEOUT_S, retry=Retry(max=RETRIES), result_ttl=86400
        )
        return job_id, True

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
        return artifacts_pb2.Job(
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
        )

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
        mapping = {k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in fields.items()}
        self.redis.hset(self._key(job_id), mapping=mapping)

    def cancel_requested(self, job_id: str) -> bool:
        return self.redis.hget(self._key(job_id), "cancel_requested") == b"1"

    # -- cancel --------------------------------------------------------------------------------------
    def cancel(self, job_id: str) -> None:
        state = self.state(job_id)
        if state in TERMINAL:
            return
        self.update(job_id, cancel_requested=1)
        try:
            rq_job = RqJob.fetch(job_id, connection=self.redis)
        except NoSuchJobError:
            rq_job = None
        if rq_job is not None:
            if rq_job.get_status() == "started":
                # Kills the work horse within about half a second; RQ does not retry a stopped job.
                with contextlib.suppress(InvalidJobOperation):
                    send_stop_job_command(self.redis, job_id)
            else:
                rq_job.cancel()
        self.update(job_id, state="CANCELLED", finished_at=time.time())
        self.log(job_id, "cancelled by request")
