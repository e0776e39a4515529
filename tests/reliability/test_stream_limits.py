"""Limits: concurrent streams per client; beyond the limit RESOURCE_EXHAUSTED says which limit."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest

from mi_crow.services.common.config import ServerConfig
from mi_crow.services.inference.server import start_inference_server
from mi_crow.services.inference.service import InferenceServicer
from mi_crow.services.inference.streams import StreamLimiter
from mi_crow.v1 import common_pb2, inference_pb2, inference_pb2_grpc


def test_streams_per_client_are_limited(tmp_path: Path, gpt2_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MI_CROW_MODEL_ALIASES", json.dumps({"tiny": str(gpt2_dir)}))
    cfg = ServerConfig(port=0, artifact_root=tmp_path / "store")
    servicer = InferenceServicer(cfg)
    servicer.streams = StreamLimiter(limit=1)
    running = start_inference_server(cfg, servicer)
    request = inference_pb2.StreamActivationsRequest(
        model_id="tiny",
        layers=["transformer_h_0"],
        dataset=common_pb2.DatasetSpec(texts=["the cat sat on the mat"] * 400),
        batch_size=1,
        chunk_rows=1,
    )
    try:
        with grpc.insecure_channel(running.address) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            stub.LoadModel(inference_pb2.LoadModelRequest(model_id="tiny"), timeout=60)
            first = stub.StreamActivations(request, timeout=60)
            next(first)  # the first stream is open and producing
            with pytest.raises(grpc.RpcError) as err:
                next(stub.StreamActivations(request, timeout=60))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit 1" in err.value.details() and "MI_CROW_MAX_STREAMS_PER_CLIENT" in err.value.details()
            first.cancel()
            deadline = time.time() + 10
            while servicer.streams.open_streams() and time.time() < deadline:  # noticed at the next chunk
                time.sleep(0.05)
            assert next(stub.StreamActivations(request, timeout=60)).shape
    finally:
        running.stop(0)
