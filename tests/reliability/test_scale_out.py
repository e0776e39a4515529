"""Scale-out: two inference servers and two workers as real processes. Both servers register; workers and
clients find a server for a model through the registry (workers have no fixed inference address here);
a SIGKILLed server drops out of the registry and live-stream training and client calls move to the other.
Worker observability rides along: the submitting call's request id in the worker's JSON logs, and job
metrics scraped from each worker's /metrics port."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from mi_crow.client import Client
from mi_crow.services.launcher import LocalCluster
from mi_crow.v1 import artifacts_pb2, artifacts_pb2_grpc, common_pb2, inference_pb2, inference_pb2_grpc

pytestmark = pytest.mark.e2e

TEXTS = [f"the cat number {i} sat on the mat near the river" for i in range(24)]
REQUEST_ID = "scale-out-req-7"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, gpt2_dir: Path) -> Iterator[LocalCluster]:
    env = {
        "MI_CROW_MODEL_ALIASES": json.dumps({"tiny": str(gpt2_dir)}),
        "MI_CROW_REGISTRY_HEARTBEAT_S": "0.5",
        "MI_CROW_REGISTRY_TTL_S": "2",
        "MI_CROW_INFERENCE_ADDRESS": "",  # no fallback: workers must find servers in the registry
    }
    workdir = tmp_path_factory.mktemp("scale-out")
    with LocalCluster(workdir, workers=2, inference=2, worker_metrics=True, extra_env=env) as c:
        yield c


@pytest.fixture(scope="module")
def stubs(
    cluster: LocalCluster,
) -> Iterator[tuple[artifacts_pb2_grpc.ArtifactServiceStub, artifacts_pb2_grpc.JobServiceStub]]:
    assert cluster.artifacts is not None
    with grpc.insecure_channel(cluster.artifacts.address) as ch:
        yield artifacts_pb2_grpc.ArtifactServiceStub(ch), artifacts_pb2_grpc.JobServiceStub(ch)


def _servers(artifacts: artifacts_pb2_grpc.ArtifactServiceStub, model_id: str = "") -> list:  # type: ignore[type-arg]
    req = artifacts_pb2.ListInferenceServersRequest(model_id=model_id)
    return list(artifacts.ListInferenceServers(req, timeout=10).servers)


def _wait_until(predicate, what: str, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, what
        time.sleep(0.1)


def _live_job(epochs: int, **kw: object) -> artifacts_pb2.TrainingRequest:
    stream = artifacts_pb2.LiveSource(dataset=common_pb2.DatasetSpec(texts=TEXTS), batch_size=4)
    return artifacts_pb2.TrainingRequest(
        model_id="tiny", layer="transformer_h_0", epochs=epochs, batch_size=32, k=4, n_latents=64, stream=stream, **kw
    )


def _finish(jobs: artifacts_pb2_grpc.JobServiceStub, job_id: str) -> artifacts_pb2.Job:
    *_, last = jobs.WatchJob(artifacts_pb2.JobRef(job_id=job_id), timeout=300)
    return last


def _log_entries(cluster: LocalCluster, prefix: str) -> list[dict]:  # type: ignore[type-arg]
    entries = []
    for path in sorted((cluster.workdir / "logs").glob(f"{prefix}*.log")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):  # a line that merely starts with "{"
                    entries.append(json.loads(line))
    return entries


def _metric(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def test_both_servers_register_and_clients_find_one_for_a_model(cluster: LocalCluster, stubs):  # type: ignore[no-untyped-def]
    artifacts, _ = stubs
    a, b = cluster.inference_servers
    listed = _servers(artifacts)
    assert sorted(s.address for s in listed) == sorted([a.address, b.address])
    assert len({s.server_id for s in listed}) == 2
    assert all("tiny" in s.available_models and s.serving and s.device == "cpu" for s in listed)
    assert len(_servers(artifacts, "tiny")) == 2 and _servers(artifacts, "not-a-model") == []
    # Load the model on b only: b becomes the best server for it once its next heartbeat reports that.
    with grpc.insecure_channel(b.address) as ch:
        inference_pb2_grpc.InferenceServiceStub(ch).LoadModel(
            inference_pb2.LoadModelRequest(model_id="tiny"), timeout=120
        )
    _wait_until(lambda: _servers(artifacts, "tiny")[0].loaded_models == ["tiny"], "b never reported its model")
    assert _servers(artifacts, "tiny")[0].address == b.address
    with Client.discover(cluster.artifacts.address, "tiny") as client:  # type: ignore[union-attr]
        assert client.inference_servers("tiny")[0].address == b.address
        assert "transformer_h_0" in [layer.name for layer in client.layers("tiny")]  # answered by b: loaded there


def test_live_job_is_discovered_carries_the_request_id_and_is_counted(cluster: LocalCluster, stubs):  # type: ignore[no-untyped-def]
    artifacts, jobs = stubs
    a, b = cluster.inference_servers
    job = jobs.SubmitTraining(_live_job(2), metadata=(("x-request-id", REQUEST_ID),), timeout=30)
    done = _finish(jobs, job.job_id)
    assert done.state == artifacts_pb2.SUCCEEDED, done.error
    # The worker streamed from b, the server with the model loaded: a never had to load it.
    by_address = {s.address: s for s in _servers(artifacts)}
    assert list(by_address[a.address].loaded_models) == [] and list(by_address[b.address].loaded_models) == ["tiny"]
    # The request id of the submitting call is on the worker's JSON log lines for the job.
    tagged = [e for e in _log_entries(cluster, "worker-") if e.get("request_id") == REQUEST_ID]
    assert any(job.job_id in e["msg"] and "started" in e["msg"] for e in tagged), tagged
    assert any(job.job_id in e["msg"] and "SUCCEEDED" in e["msg"] for e in tagged), tagged
    # ... and on the inference server's lines for the calls the worker made on the job's behalf.
    assert any(
        e.get("request_id") == REQUEST_ID and "StreamActivations" in e["msg"]
        for e in _log_entries(cluster, "inference")
    )
    # Each worker has its own /metrics port; together they counted the job.
    texts = []
    for worker in cluster.workers:
        assert worker.metrics_port
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=10) as reply:
            texts.append(reply.read().decode())
    total = "\n".join(texts)
    assert _metric(total, 'mi_crow_worker_jobs_finished_total{kind="training",state="SUCCEEDED"}') >= 1
    assert _metric(total, 'mi_crow_worker_jobs_started_total{kind="training"}') >= 1
    assert _metric(total, 'mi_crow_worker_job_seconds_count{kind="training"}') >= 1
    assert _metric(total, 'mi_crow_worker_vectors_trained_total{kind="training"}') >= 2 * 24  # 2 epochs, >= 1/text
    assert all("mi_crow_worker_queue_depth" in t for t in texts)


def test_a_killed_server_drops_out_and_work_moves_to_the_other(cluster: LocalCluster, stubs):  # type: ignore[no-untyped-def]
    artifacts, jobs = stubs
    a, b = cluster.inference_servers
    with Client.discover(cluster.artifacts.address, "tiny") as client:  # type: ignore[union-attr]
        assert client.layers("tiny")  # on b, the best server for the model
        job = jobs.SubmitTraining(_live_job(60, checkpoint_every=1000), timeout=30)
        _wait_until(lambda: jobs.GetJob(artifacts_pb2.JobRef(job_id=job.job_id)).step > 0, "job never trained")
        b.kill()  # SIGKILL mid-job: no clean deregistration
        done = _finish(jobs, job.job_id)
        assert done.state == artifacts_pb2.SUCCEEDED, done.error
        moved = [e for e in _log_entries(cluster, "worker-") if "moving to another" in e.get("msg", "")]
        assert any(b.address in e["msg"] for e in moved), moved
        # b drops out of the registry once its entry expires; a is left, now with the model loaded.
        _wait_until(lambda: [s.address for s in _servers(artifacts)] == [a.address], "killed server still listed")
        assert list(_servers(artifacts, "tiny")[0].loaded_models) == ["tiny"]
        # The client that was using b: calls fail until it asks the registry again, then go to a.
        with pytest.raises(grpc.RpcError) as err:
            client.layers("tiny")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert client.use_inference_for("tiny") == a.address
        assert "transformer_h_0" in [layer.name for layer in client.layers("tiny")]
    # A new live job after the kill goes to a as well.
    again = _finish(jobs, jobs.SubmitTraining(_live_job(1), timeout=30).job_id)
    assert again.state == artifacts_pb2.SUCCEEDED, again.error
