"""Structured logs: every call has a request id (the client's or a fresh one), returned to the caller and
stamped on the JSON log lines written while the call ran."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import grpc
import pytest

from mi_crow.services.artifacts.server import start_artifact_server
from mi_crow.services.common.config import ServerConfig
from mi_crow.services.common.logs import REQUEST_ID, JsonFormatter
from mi_crow.v1 import artifacts_pb2, artifacts_pb2_grpc, common_pb2


def test_request_id_round_trip_and_json_lines(tmp_path: Path, redis_server: str, caplog: pytest.LogCaptureFixture):
    running = start_artifact_server(ServerConfig(port=0, redis_url=redis_server, artifact_root=tmp_path / "s"))
    try:
        with grpc.insecure_channel(running.address) as channel, caplog.at_level(logging.INFO):
            stub = artifacts_pb2_grpc.ArtifactServiceStub(channel)
            _, call = stub.ListSaes.with_call(artifacts_pb2.ListSaesRequest(), metadata=(("x-request-id", "req-42"),))
            assert ("x-request-id", "req-42") in call.trailing_metadata()
            _, call = stub.ListSaes.with_call(artifacts_pb2.ListSaesRequest())
            fresh = dict(call.trailing_metadata())["x-request-id"]
            assert fresh and fresh != "req-42"
            with pytest.raises(grpc.RpcError) as err:
                stub.GetSae(common_pb2.SaeRef(sae_id="../x"), metadata=(("x-request-id", "req-43"),))
            assert dict(err.value.trailing_metadata())["x-request-id"] == "req-43"
    finally:
        running.stop(0)
    done = [r for r in caplog.records if r.name == "mi_crow.services.calls" and "ListSaes done" in r.getMessage()]
    assert len(done) == 2
    line = json.loads(JsonFormatter().format(done[0]))
    assert line["request_id"] == "req-42" and line["level"] == "INFO" and "ListSaes" in line["msg"]
    # Lines written by code running inside a call pick the id up from the context.
    token = REQUEST_ID.set("req-99")
    try:
        inner = json.loads(JsonFormatter().format(logging.makeLogRecord({"msg": "inside", "levelname": "INFO"})))
    finally:
        REQUEST_ID.reset(token)
    assert inner["request_id"] == "req-99"
