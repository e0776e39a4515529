"""Fault: a worker is SIGKILLed mid-training. The job is noticed, re-queued, resumes on another worker from
its last checkpoint, and publishes one SAE of the same quality as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from redis import Redis

from mi_crow.language_model import LanguageModel
from mi_crow.mechanistic.sae import Sae, SaeTrainer
from mi_crow.mechanistic.sae.metrics import explained_variance
from mi_crow.services.artifacts.jobs import JobStore
from mi_crow.services.launcher import LocalCluster
from mi_crow.store import LocalStore
from mi_crow.v1 import artifacts_pb2, artifacts_pb2_grpc, common_pb2

pytestmark = pytest.mark.e2e

TEXTS = [f"the {a} {b} walked past the {c}" for a in ("red", "old", "tiny") for b in ("cat", "dog") for c in range(30)]
CHECKPOINT_EVERY = 20


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    env = {"MI_CROW_JOB_STALE_S": "6"}
    with LocalCluster(tmp_path_factory.mktemp("faults"), workers=2, inference=False, extra_env=env) as c:
        yield c


def _request(model: LanguageModel, key: str) -> artifacts_pb2.TrainingRequest:
    return artifacts_pb2.TrainingRequest(
        model_id=model.model_id,
        run_id="faults",
        layer="transformer_h_0",
        epochs=25,
        batch_size=16,
        k=4,
        checkpoint_every=CHECKPOINT_EVERY,
        idempotency_key=key,
    )


def _wait(jobs: artifacts_pb2_grpc.JobServiceStub, job_id: str) -> artifacts_pb2.Job:
    return list(jobs.WatchJob(artifacts_pb2.JobRef(job_id=job_id), timeout=300))[-1]


def test_killed_worker_job_resumes_elsewhere_and_publishes_once(cluster: LocalCluster, gpt2_dir: Path):
    model = LanguageModel(str(gpt2_dir), store=cluster.store)
    run = model.save_activations(TEXTS, ["transformer_h_0"], progress=False, run_id="faults")
    assert cluster.artifacts is not None
    with grpc.insecure_channel(cluster.artifacts.address) as channel:
        jobs = artifacts_pb2_grpc.JobServiceStub(channel)
        victim = jobs.SubmitTraining(_request(model, "victim"))
        deadline = time.time() + 120
        while (job := jobs.GetJob(artifacts_pb2.JobRef(job_id=victim.job_id))).step < 3 * CHECKPOINT_EVERY:
            assert time.time() < deadline and job.state in (artifacts_pb2.QUEUED, artifacts_pb2.RUNNING)
            time.sleep(0.1)
        redis = Redis.from_url(cluster.redis_url)
        key = f"mi_crow:job:{victim.job_id}"
        worker_pid, horse_pid = (int(redis.hget(key, f)) for f in (b"worker_pid", b"horse_pid"))
        step_at_kill = jobs.GetJob(artifacts_pb2.JobRef(job_id=victim.job_id)).step
        for pid in (horse_pid, worker_pid):  # the whole worker dies, as on a lost machine
            os.kill(pid, signal.SIGKILL)
        final = _wait(jobs, victim.job_id)
        assert final.state == artifacts_pb2.SUCCEEDED, final.error
        logs = "\n".join(final.logs)
        assert "worker lost" in logs and "attempt 2 resumed from the checkpoint at step" in logs
        resumed_at = int(logs.split("resumed from the checkpoint at step ")[1].split()[0])
        assert step_at_kill - CHECKPOINT_EVERY - 5 <= resumed_at <= step_at_kill  # at most one interval lost
        # Same quality as a run that nobody interrupted (the seed is the same, so nearly the same SAE).
        clean = _wait(jobs, jobs.SubmitTraining(_request(model, "clean")).job_id)
    store = LocalStore(cluster.store)
    x = torch.cat([s["activations"] for s in run.iter_shards("transformer_h_0")])
    evs = []
    for job in (final, clean):
        sae = Sae.load(store.sae_dir(model.model_id, job.sae_id))
        with torch.no_grad():
            evs.append(explained_variance(x, sae(x).x_hat))
    assert abs(evs[0] - evs[1]) <= 0.02, evs
    published = [m for m in store.list_saes(model.model_id) if m["sae_id"] == final.sae_id]
    assert len(published) == 1
    assert not (store.sae_dir(model.model_id, final.sae_id) / "checkpoints" / "last.pt").exists()


def test_a_job_lost_after_publishing_is_not_trained_again(cluster: LocalCluster, gpt2_dir: Path):
    model = LanguageModel(str(gpt2_dir), store=cluster.store)
    model.save_activations(TEXTS[:60], ["transformer_h_0"], progress=False, run_id="published")
    assert cluster.artifacts is not None
    with grpc.insecure_channel(cluster.artifacts.address) as channel:
        jobs = artifacts_pb2_grpc.JobServiceStub(channel)
        request = _request(model, "published-once")
        request.run_id, request.epochs = "published", 2
        done = _wait(jobs, jobs.SubmitTraining(request).job_id)
        assert done.state == artifacts_pb2.SUCCEEDED, done.error
        sae_dir = LocalStore(cluster.store).sae_dir(model.model_id, done.sae_id)
        published = {p.name: p.read_bytes() for p in sae_dir.iterdir() if p.is_file()}
        # As if the worker died after publishing but before SUCCEEDED: RUNNING, heartbeat long gone.
        store = JobStore(Redis.from_url(cluster.redis_url), "mi_crow-training")
        store.update(done.job_id, state="RUNNING", heartbeat_at=time.time() - 100, started_at=time.time() - 100)
        again = _wait(jobs, done.job_id)
    assert again.state == artifacts_pb2.SUCCEEDED, again.error
    logs = "\n".join(again.logs)
    assert "re-queued as attempt 2" in logs and "already published; not training it again" in logs
    assert {p.name: p.read_bytes() for p in sae_dir.iterdir() if p.is_file()} == published  # not rewritten


def test_a_live_job_published_before_every_server_went_away_still_succeeds(cluster: LocalCluster, gpt2_dir: Path):
    # This cluster has no inference server at all: as if every one had gone away after an attempt published.
    model = LanguageModel(str(gpt2_dir), store=cluster.store)
    acts = model.stream_activations(TEXTS[:40], ["transformer_h_0"], batch_size=20)
    rows = torch.cat([batch.activations["transformer_h_0"] for batch in acts])
    SaeTrainer(model, "transformer_h_0", "TopKSae", {"epochs": 1, "batch_size": 16, "k": 4}, progress=False,
               sae_id="live-published").train(rows)  # fmt: skip
    sae_dir = LocalStore(cluster.store).sae_dir(model.model_id, "live-published")
    published = {p.name: p.read_bytes() for p in sae_dir.iterdir() if p.is_file()}
    request = artifacts_pb2.TrainingRequest(
        model_id=model.model_id,
        layer="transformer_h_0",
        sae_id="live-published",
        k=4,
        stream=artifacts_pb2.LiveSource(dataset=common_pb2.DatasetSpec(texts=TEXTS[:40])),
    )
    assert cluster.artifacts is not None
    with grpc.insecure_channel(cluster.artifacts.address) as channel:
        jobs = artifacts_pb2_grpc.JobServiceStub(channel)
        done = _wait(jobs, jobs.SubmitTraining(request).job_id)
    assert done.state == artifacts_pb2.SUCCEEDED, done.error  # it used to fail: no inference server to stream from
    assert "already published; not training it again" in "\n".join(done.logs)
    assert {p.name: p.read_bytes() for p in sae_dir.iterdir() if p.is_file()} == published


def test_a_job_that_keeps_losing_workers_ends_failed_with_the_reason(redis_server: str):
    redis = Redis.from_url(redis_server)
    jobs = JobStore(redis, "faults-test-queue")
    request = artifacts_pb2.TrainingRequest(model_id="m", run_id="r", idempotency_key=f"doomed-{time.time()}")
    job_id, _ = jobs.submit(request, "mi_crow.workers.training.run_training_job")
    now = time.time()
    for attempt in (1, 2, 3):
        assert jobs.attempt(job_id) == attempt
        jobs.update(job_id, state="RUNNING", started_at=now - 100, heartbeat_at=now - 100)
        assert jobs.requeue_lost(now=now, stale_s=10, max_attempts=3) == [job_id]
    job = jobs.get(job_id)
    assert artifacts_pb2.JobState.Name(job.state) == "FAILED"
    assert "worker lost 3 times" in job.error
    assert not jobs.heartbeat(job_id, attempt=1)  # an old attempt learns it was replaced
