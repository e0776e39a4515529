"""Security: API keys with scopes on every RPC; health and reflection stay open."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mi_crow.services.artifacts.server import start_artifact_server
from mi_crow.services.common.auth import Scope, load_keys, scope_for
from mi_crow.services.common.config import ServerConfig
from mi_crow.v1 import artifacts_pb2, artifacts_pb2_grpc, common_pb2

KEYS = {"r-key": "read", "w-key": "write", "a-key": "admin"}


@pytest.fixture
def channel(tmp_path: Path, redis_server: str) -> Iterator[grpc.Channel]:
    cfg = ServerConfig(
        port=0, redis_url=redis_server, artifact_root=tmp_path / "store", api_keys=load_keys(json.dumps(KEYS))
    )
    running = start_artifact_server(cfg)
    with grpc.insecure_channel(running.address) as ch:
        yield ch
    running.stop(0)


def _code(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def _as(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def test_scopes_are_enforced_per_rpc(channel: grpc.Channel):
    artifacts = artifacts_pb2_grpc.ArtifactServiceStub(channel)
    jobs = artifacts_pb2_grpc.JobServiceStub(channel)
    list_runs = artifacts_pb2.ListRunsRequest()
    assert _code(lambda: artifacts.ListActivationRuns(list_runs)) == grpc.StatusCode.UNAUTHENTICATED
    assert (
        _code(lambda: artifacts.ListActivationRuns(list_runs, metadata=_as("nope"))) == grpc.StatusCode.UNAUTHENTICATED
    )
    assert list(artifacts.ListActivationRuns(list_runs, metadata=_as("r-key")).runs) == []
    submit = artifacts_pb2.TrainingRequest(model_id="m", run_id="missing")
    assert _code(lambda: jobs.SubmitTraining(submit, metadata=_as("r-key"))) == grpc.StatusCode.PERMISSION_DENIED
    # A write key passes authentication and reaches validation (the run does not exist).
    assert _code(lambda: jobs.SubmitTraining(submit, metadata=_as("w-key"))) == grpc.StatusCode.NOT_FOUND
    ref = common_pb2.SaeRef(model_id="m", sae_id="sae-x")
    assert _code(lambda: artifacts.DeleteSae(ref, metadata=_as("w-key"))) == grpc.StatusCode.PERMISSION_DENIED
    assert _code(lambda: artifacts.DeleteSae(ref, metadata=_as("a-key"))) == grpc.StatusCode.NOT_FOUND
    # Server-streaming RPCs are guarded too.
    watch = jobs.WatchJob(artifacts_pb2.JobRef(job_id="job-x"))
    assert _code(lambda: list(watch)) == grpc.StatusCode.UNAUTHENTICATED
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_scope_table_and_key_file(tmp_path: Path):
    assert scope_for("/mi_crow.v1.ArtifactService/ListSaes") == Scope.READ
    assert scope_for("/mi_crow.v1.JobService/WatchJob") == Scope.READ
    assert scope_for("/mi_crow.v1.JobService/SubmitTraining") == Scope.WRITE
    assert scope_for("/mi_crow.v1.InferenceService/LoadModel") == Scope.ADMIN
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"k": "admin"}))
    assert load_keys(str(path)) == {"k": Scope.ADMIN}
    with pytest.raises(ValueError, match="read, write or admin"):
        load_keys('{"k": "root"}')
