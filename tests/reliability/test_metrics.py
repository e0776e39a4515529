"""Prometheus metrics: requests by RPC and status, latency histograms, jobs by state, device queue and tokens
harvested, scraped over HTTP from a real server."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import grpc
import pytest

from mi_crow.services.artifacts.server import start_artifact_server
from mi_crow.services.common.config import ServerConfig
from mi_crow.services.common.metrics import serve_metrics
from mi_crow.services.inference.server import start_inference_server
from mi_crow.services.launcher import free_port
from mi_crow.v1 import artifacts_pb2, artifacts_pb2_grpc, common_pb2, inference_pb2, inference_pb2_grpc


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def _value(text: str, prefix: str) -> float:
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    assert lines, f"no sample starting with {prefix!r}"
    return float(lines[0].rsplit(" ", 1)[1])


def test_metrics_are_scraped(tmp_path: Path, redis_server: str, gpt2_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MI_CROW_MODEL_ALIASES", json.dumps({"tiny": str(gpt2_dir)}))
    cfg = ServerConfig(port=0, redis_url=redis_server, artifact_root=tmp_path / "s", queue_name="metrics-q")
    artifacts = start_artifact_server(cfg)
    inference = start_inference_server(cfg)
    port = serve_metrics(free_port())
    assert port
    try:
        with grpc.insecure_channel(artifacts.address) as a, grpc.insecure_channel(inference.address) as i:
            stub = artifacts_pb2_grpc.ArtifactServiceStub(a)
            for _ in range(3):
                stub.ListSaeClasses(artifacts_pb2.ListSaeClassesRequest())
            with pytest.raises(grpc.RpcError):
                stub.GetSae(common_pb2.SaeRef(sae_id="../bad"))
            inf = inference_pb2_grpc.InferenceServiceStub(i)
            inf.LoadModel(inference_pb2.LoadModelRequest(model_id="tiny"), timeout=60)
            request = inference_pb2.StreamActivationsRequest(
                model_id="tiny", layers=["transformer_h_0"], dataset=common_pb2.DatasetSpec(texts=["a b c", "d e"])
            )
            rows = sum(c.shape[0] for c in inf.StreamActivations(request, timeout=60))
        text = _scrape(port)
    finally:
        artifacts.stop(0)
        inference.stop(0)
    assert _value(text, 'mi_crow_requests_total{code="OK",method="ListSaeClasses"}') >= 3
    assert _value(text, 'mi_crow_requests_total{code="INVALID_ARGUMENT",method="GetSae"}') >= 1
    assert _value(text, 'mi_crow_request_seconds_count{method="ListSaeClasses"}') >= 3
    assert _value(text, "mi_crow_tokens_harvested_total") >= rows > 0
    assert 'mi_crow_jobs{state="QUEUED"}' in text and "mi_crow_device_queue_depth" in text
