"""Fault: the inference server is SIGKILLed during a save-activations run. The run is never shown as complete;
asking again with the same run id on a new server finishes it."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import grpc
import pytest

from mi_crow.services.launcher import LocalCluster
from mi_crow.v1 import artifacts_pb2, artifacts_pb2_grpc, common_pb2, inference_pb2, inference_pb2_grpc

pytestmark = pytest.mark.e2e

TEXTS = [f"sample {i}: the quick brown fox jumps over the lazy dog near the river bank" for i in range(3000)]


def test_killed_harvest_is_never_complete_and_a_rerun_finishes_it(tmp_path: Path, gpt2_dir: Path):
    env = {"MI_CROW_MODEL_ALIASES": json.dumps({"tiny": str(gpt2_dir)})}
    with LocalCluster(tmp_path, workers=0, extra_env=env) as cluster:
        assert cluster.inference and cluster.artifacts
        request = inference_pb2.SaveActivationsRequest(
            model_id="tiny",
            layers=["transformer_h_0"],
            dataset=common_pb2.DatasetSpec(texts=TEXTS),
            batch_size=8,
            shard_size=256,
            run_id="crash-run",
        )
        errors: list[grpc.RpcError] = []

        def harvest() -> None:
            with grpc.insecure_channel(cluster.inference.address) as ch:  # type: ignore[union-attr]
                stub = inference_pb2_grpc.InferenceServiceStub(ch)
                stub.LoadModel(inference_pb2.LoadModelRequest(model_id="tiny"), timeout=60)
                try:
                    stub.SaveActivations(request, timeout=300)
                except grpc.RpcError as exc:
                    errors.append(exc)

        thread = threading.Thread(target=harvest)
        thread.start()
        manifest = cluster.store / "activations"
        deadline = time.time() + 120
        while not list(manifest.glob("*/crash-run/transformer_h_0/00001.safetensors")):
            assert time.time() < deadline, "harvest never wrote a second shard"
            time.sleep(0.05)
        cluster.restart_inference(kill=True)
        thread.join(60)
        assert errors and errors[0].code() == grpc.StatusCode.UNAVAILABLE
        with grpc.insecure_channel(cluster.artifacts.address) as ch:
            artifacts = artifacts_pb2_grpc.ArtifactServiceStub(ch)
            ref = common_pb2.RunRef(model_id="tiny", run_id="crash-run")
            assert artifacts.GetActivationRun(ref).status == "running"  # partial: never listed as complete
            runs = artifacts.ListActivationRuns(artifacts_pb2.ListRunsRequest(model_id="tiny")).runs
            assert [r.status for r in runs if r.run_id == "crash-run"] == ["running"]
            with grpc.insecure_channel(cluster.inference.address) as ich:
                stub = inference_pb2_grpc.InferenceServiceStub(ich)
                stub.LoadModel(inference_pb2.LoadModelRequest(model_id="tiny"), timeout=60)
                done = stub.SaveActivations(request, timeout=600)
            assert done.n_samples == len(TEXTS)
            info = artifacts.GetActivationRun(ref)
            assert info.status == "complete" and info.n_samples == len(TEXTS)
            assert sum(layer.n_tokens for layer in info.layers) == done.n_tokens
