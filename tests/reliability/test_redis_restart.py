"""Fault: Redis restarts (append-only file on). Jobs, runs and SAEs are all still there afterwards, and the
services and workers reconnect by themselves."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from mi_crow.language_model import LanguageModel
from mi_crow.services.launcher import LocalCluster
from mi_crow.v1 import artifacts_pb2, artifacts_pb2_grpc

pytestmark = pytest.mark.e2e


def _finish(jobs: artifacts_pb2_grpc.JobServiceStub, job_id: str) -> artifacts_pb2.Job:
    deadline = time.time() + 180
    while True:
        try:
            job = jobs.GetJob(artifacts_pb2.JobRef(job_id=job_id), timeout=10)
            if job.state in (artifacts_pb2.SUCCEEDED, artifacts_pb2.FAILED, artifacts_pb2.CANCELLED):
                return job
        except grpc.RpcError as exc:  # Redis may still be coming back
            assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL), exc
        assert time.time() < deadline, "job did not finish"
        time.sleep(0.3)


def test_everything_survives_a_redis_restart(tmp_path: Path, gpt2_dir: Path):
    with LocalCluster(tmp_path, workers=1, inference=False) as cluster:
        assert cluster.redis is not None and cluster.artifacts is not None
        model = LanguageModel(str(gpt2_dir), store=cluster.store)
        texts = [f"a quiet fox number {i} crossed the road" for i in range(30)]
        model.save_activations(texts, ["transformer_h_0"], progress=False, run_id="before")
        request = artifacts_pb2.TrainingRequest(
            model_id=model.model_id, run_id="before", layer="transformer_h_0", epochs=2, batch_size=32, k=4
        )
        with grpc.insecure_channel(cluster.artifacts.address) as channel:
            jobs = artifacts_pb2_grpc.JobServiceStub(channel)
            artifacts = artifacts_pb2_grpc.ArtifactServiceStub(channel)
            done = _finish(jobs, jobs.SubmitTraining(request).job_id)
            assert done.state == artifacts_pb2.SUCCEEDED, done.error
            # Queue a job while no worker can take it, then restart Redis under everyone.
            cluster.workers[0].stop()
            queued = jobs.SubmitTraining(artifacts_pb2.TrainingRequest(**{**_fields(request), "k": 3}))
            cluster.redis.restart()
            after = jobs.GetJob(artifacts_pb2.JobRef(job_id=done.job_id), timeout=30)
            assert after.state == artifacts_pb2.SUCCEEDED and after.sae_id == done.sae_id
            assert jobs.GetJob(artifacts_pb2.JobRef(job_id=queued.job_id)).state == artifacts_pb2.QUEUED
            assert done.sae_id in [s.sae_id for s in artifacts.ListSaes(artifacts_pb2.ListSaesRequest()).saes]
            assert "before" in [r.run_id for r in artifacts.ListActivationRuns(artifacts_pb2.ListRunsRequest()).runs]
            # A worker started now finds the job queued before the restart.
            cluster.add_worker()
            resumed = _finish(jobs, queued.job_id)
            assert resumed.state == artifacts_pb2.SUCCEEDED, resumed.error
            # And the running worker survives another restart: it keeps taking jobs.
            cluster.redis.restart()
            third = jobs.SubmitTraining(artifacts_pb2.TrainingRequest(**{**_fields(request), "k": 2}))
            assert _finish(jobs, third.job_id).state == artifacts_pb2.SUCCEEDED


def _fields(message: artifacts_pb2.TrainingRequest) -> dict:
    return {f.name: v for f, v in message.ListFields()}
