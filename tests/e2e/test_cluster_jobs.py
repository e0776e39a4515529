"""The artifact/job service and RQ workers as real processes: redis-server, the service, two workers."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mi_crow.language_model import LanguageModel
from mi_crow.services.launcher import LocalCluster
from mi_crow.v1 import artifacts_pb2, artifacts_pb2_grpc, common_pb2

ADMIN_KEY = "test-admin-key"
TEXTS = [f"the cat number {i} sat on the mat near the river" for i in range(40)] + [
    f"blue sky and green grass on day {i}" for i in range(40)
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    workdir = tmp_path_factory.mktemp("cluster")
    with LocalCluster(workdir, workers=2, inference=False, extra_env={"MI_CROW_ADMIN_KEY": ADMIN_KEY}) as c:
        yield c


@pytest.fixture(scope="module")
def model(cluster: LocalCluster, gpt2_dir: Path) -> LanguageModel:
    return LanguageModel(str(gpt2_dir), store=cluster.store)


@pytest.fixture(scope="module")
def run_id(model: LanguageModel) -> str:
    return model.save_activations(TEXTS, ["transformer_h_0"], shard_size=200, progress=False, run_id="run-a").run_id


@pytest.fixture(scope="module")
def channel(cluster: LocalCluster) -> Iterator[grpc.Channel]:
    assert cluster.artifacts is not None
    with grpc.insecure_channel(cluster.artifacts.address) as ch:
        yield ch


@pytest.fixture
def jobs(channel: grpc.Channel) -> artifacts_pb2_grpc.JobServiceStub:
    return artifacts_pb2_grpc.JobServiceStub(channel)


@pytest.fixture
def artifacts(channel: grpc.Channel) -> artifacts_pb2_grpc.ArtifactServiceStub:
    return artifacts_pb2_grpc.ArtifactServiceStub(channel)


def _request(model: LanguageModel, run_id: str, **kw: object) -> artifacts_pb2.TrainingRequest:
    base = {
        "model_id": model.model_id,
        "run_id": run_id,
        "layer": "transformer_h_0",
        "epochs": 3,
        "batch_size": 64,
        "k": 4,
    }
    base.update(kw)
    return artifacts_pb2.TrainingRequest(**base)


def _watch(jobs: artifacts_pb2_grpc.JobServiceStub, job_id: str, timeout: float = 120) -> list[artifacts_pb2.Job]:
    return list(jobs.WatchJob(artifacts_pb2.JobRef(job_id=job_id), timeout=timeout))


def _code(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def test_train_and_watch_to_completion(jobs, artifacts, model, run_id):
    job = jobs.SubmitTraining(_request(model, run_id))
    assert job.state == artifacts_pb2.QUEUED and job.sae_id
    updates = _watch(jobs, job.job_id)
    states = [artifacts_pb2.JobState.Name(u.state) for u in updates]
    assert states[-1] == "SUCCEEDED", updates[-1].error
    assert "RUNNING" in states or len(updates) >= 1
    final = jobs.GetJob(artifacts_pb2.JobRef(job_id=job.job_id))
    assert final.progress == 1.0 and final.step > 0 and final.total_steps == final.step
    assert final.metrics["explained_variance"] > 0.3
    assert any("published SAE" in line for line in final.logs)
    assert final.sae_path.endswith("sae.json")
    saes = artifacts.ListSaes(artifacts_pb2.ListSaesRequest(model_id=model.model_id)).saes
    assert job.sae_id in [s.sae_id for s in saes]
    info = artifacts.GetSae(common_pb2.SaeRef(model_id=model.model_id, sae_id=job.sae_id))
    meta = json.loads(info.metadata_json)
    assert info.sae_class == "TopKSae" and info.layer == "transformer_h_0" and meta["training"]["epochs"]


def test_same_idempotency_key_same_job(jobs, model, run_id):
    a = jobs.SubmitTraining(_request(model, run_id, idempotency_key="key-1", epochs=1))
    b = jobs.SubmitTraining(_request(model, run_id, idempotency_key="key-1", epochs=1))
    assert a.job_id == b.job_id
    c = jobs.SubmitTraining(_request(model, run_id, epochs=1, k=2))
    d = jobs.SubmitTraining(_request(model, run_id, epochs=1, k=3))  # the seed ignored k: same old job
    assert c.job_id != d.job_id
    e = jobs.SubmitTraining(_request(model, run_id, epochs=1, k=3))
    assert e.job_id == d.job_id  # no key: the whole request is the key
    for job_id in (a.job_id, c.job_id, d.job_id):
        assert artifacts_pb2.JobState.Name(_watch(jobs, job_id)[-1].state) == "SUCCEEDED"


def test_cancel_a_running_job(jobs, artifacts, model, run_id):
    job = jobs.SubmitTraining(_request(model, run_id, epochs=5000, batch_size=16))
    deadline = time.time() + 60
    while jobs.GetJob(artifacts_pb2.JobRef(job_id=job.job_id)).state != artifacts_pb2.RUNNING:
        assert time.time() < deadline, "job never started"
        time.sleep(0.2)
    started = time.time()
    cancelled = jobs.CancelJob(artifacts_pb2.JobRef(job_id=job.job_id))
    assert cancelled.state == artifacts_pb2.CANCELLED
    time.sleep(2.0)
    after = jobs.GetJob(artifacts_pb2.JobRef(job_id=job.job_id))
    assert after.state == artifacts_pb2.CANCELLED and after.finished_at - started < 5
    step = after.step
    time.sleep(1.5)
    assert jobs.GetJob(artifacts_pb2.JobRef(job_id=job.job_id)).step == step  # no longer training
    saes = [s.sae_id for s in artifacts.ListSaes(artifacts_pb2.ListSaesRequest()).saes]
    assert job.sae_id not in saes


def test_job_survives_artifact_service_restart(cluster, jobs, channel, model, run_id):
    job = jobs.SubmitTraining(_request(model, run_id, epochs=1, idempotency_key="restart"))
    cluster.restart_artifacts()
    with grpc.insecure_channel(cluster.artifacts.address) as ch:
        again = artifacts_pb2_grpc.JobServiceStub(ch)
        seen = again.GetJob(artifacts_pb2.JobRef(job_id=job.job_id), timeout=10)
        assert seen.job_id == job.job_id and seen.request.run_id == run_id
        assert artifacts_pb2.JobState.Name(_watch(again, job.job_id)[-1].state) == "SUCCEEDED"
        metrics = again.GetMetrics(artifacts_pb2.GetMetricsRequest())
        assert metrics.total >= 1 and metrics.succeeded >= 1


def test_bad_training_requests_get_precise_codes(jobs, model, run_id):
    nf = grpc.StatusCode.NOT_FOUND
    inv = grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: jobs.SubmitTraining(_request(model, "no-such-run"))) == nf
    assert _code(lambda: jobs.SubmitTraining(_request(model, "../escape"))) == inv
    assert _code(lambda: jobs.SubmitTraining(_request(model, run_id, sae_class="NoSae"))) == inv
    assert _code(lambda: jobs.SubmitTraining(_request(model, run_id, layer="transformer_h_9"))) == nf
    assert _code(lambda: jobs.SubmitTraining(_request(model, run_id, hyperparams_json="{bad"))) == inv
    assert _code(lambda: jobs.SubmitTraining(_request(model, run_id, hyperparams_json='{"epochz": 1}'))) == inv
    assert _code(lambda: jobs.SubmitTraining(_request(model, run_id, epochs=-1))) == inv
    assert _code(lambda: jobs.GetJob(artifacts_pb2.JobRef(job_id="job-missing"))) == nf
    assert _code(lambda: jobs.CancelJob(artifacts_pb2.JobRef(job_id="job-missing"))) == nf


def test_incomplete_run_cannot_be_trained(cluster, jobs, model):
    from mi_crow.store import LocalStore

    writer = LocalStore(cluster.store).create_run(model.model_id, {"transformer_h_0": (64, "float32")}, run_id="half")
    writer.fail("killed")
    code = _code(lambda: jobs.SubmitTraining(_request(model, "half")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION


def test_runs_concepts_and_deletes(artifacts, jobs, model, run_id):
    runs = artifacts.ListActivationRuns(artifacts_pb2.ListRunsRequest(model_id=model.model_id)).runs
    run = next(r for r in runs if r.run_id == run_id)
    assert run.status == "complete" and run.layers[0].d_model == model.hidden_size("transformer_h_0")
    size = artifacts.GetLayerSize(
        artifacts_pb2.LayerSizeRequest(model_id=model.model_id, run_id=run_id, layer="transformer_h_0")
    )
    assert size.d_model == run.layers[0].d_model
    assert "TopKSae" in artifacts.ListSaeClasses(artifacts_pb2.ListSaeClassesRequest()).names
    job = jobs.SubmitTraining(_request(model, run_id, epochs=1, idempotency_key="concepts"))
    assert artifacts_pb2.JobState.Name(_watch(jobs, job.job_id)[-1].state) == "SUCCEEDED"
    ref = common_pb2.SaeRef(model_id=model.model_id, sae_id=job.sae_id)
    loaded = artifacts.LoadConcepts(
        artifacts_pb2.LoadConceptsRequest(sae=ref, content=b"latent,name\n1,cats\n", format="csv")
    )
    assert [(c.latent, c.name) for c in loaded.concepts] == [(1, "cats")]
    bad = artifacts_pb2.LoadConceptsRequest(sae=ref, content=json.dumps({"99999": "far"}).encode(), format="json")
    with pytest.raises(grpc.RpcError) as err:
        artifacts.LoadConcepts(bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "99999" in err.value.details()
    edits = {2: common_pb2.LatentEdit(scale=1.5, bias=0.1)}
    preview = artifacts.PreviewConcepts(artifacts_pb2.ManipulateConceptsRequest(sae=ref, edits=edits))
    assert preview.path == "" and preview.edits[2].scale == 1.5
    saved = artifacts.ManipulateConcepts(artifacts_pb2.ManipulateConceptsRequest(sae=ref, edits=edits, name="strong"))
    assert saved.path.endswith("configs/strong.json")
    assert artifacts.ListConceptConfigs(ref).names == ["strong"]
    assert "dictionary.json" in artifacts.ListConcepts(ref).files
    nan = {0: common_pb2.LatentEdit(scale=float("nan"))}
    assert _code(lambda: artifacts.ManipulateConcepts(artifacts_pb2.ManipulateConceptsRequest(sae=ref, edits=nan))) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    # Deletes need the admin key: none -> UNAUTHENTICATED, wrong -> PERMISSION_DENIED.
    assert _code(lambda: artifacts.DeleteSae(ref)) == grpc.StatusCode.UNAUTHENTICATED
    wrong = (("authorization", "Bearer nope"),)
    assert _code(lambda: artifacts.DeleteSae(ref, metadata=wrong)) == grpc.StatusCode.PERMISSION_DENIED
    ok = (("authorization", f"Bearer {ADMIN_KEY}"),)
    assert artifacts.DeleteSae(ref, metadata=ok).deleted
    assert _code(lambda: artifacts.GetSae(ref)) == grpc.StatusCode.NOT_FOUND
    other = model.save_activations(TEXTS[:4], ["transformer_h_0"], progress=False, run_id="run-to-delete").run_id
    run_ref = common_pb2.RunRef(model_id=model.model_id, run_id=other)
    assert artifacts.DeleteActivationRun(run_ref, metadata=ok).deleted
    assert _code(lambda: artifacts.GetActivationRun(run_ref)) == grpc.StatusCode.NOT_FOUND
    info = artifacts.GetStoreInfo(artifacts_pb2.GetStoreInfoRequest())
    assert info.runs_per_model[model.model_id] >= 1


def test_health_and_reflection(channel):
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service="mi_crow.v1.JobService"))
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"mi_crow.v1.ArtifactService", "mi_crow.v1.JobService"} <= names
