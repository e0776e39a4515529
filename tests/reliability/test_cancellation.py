"""Clients: a unary call that the caller abandons (deadline or cancel) stops its server-side work. A
SaveActivations whose deadline expires stops harvesting at the next batch, leaves its run marked failed
(never complete), and frees the device for the next caller."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest

from mi_crow.services.launcher import LocalCluster
from mi_crow.v1 import common_pb2, inference_pb2, inference_pb2_grpc

pytestmark = pytest.mark.e2e

TEXTS = [f"sample {i}: the quick brown fox jumps over the lazy dog near the river bank" for i in range(20000)]


def _manifest(store: Path, run_id: str) -> dict | None:
    found = list(store.glob(f"activations/*/{run_id}/manifest.json"))
    return json.loads(found[0].read_text()) if found else None


def _shards(manifest: dict) -> int:
    return sum(len(layer["shards"]) for layer in manifest["layers"].values())


def test_an_expired_save_activations_call_stops_harvesting(tmp_path: Path, gpt2_dir: Path):
    env = {"MI_CROW_MODEL_ALIASES": json.dumps({"tiny": str(gpt2_dir)})}
    with LocalCluster(tmp_path, workers=0, extra_env=env) as cluster:
        assert cluster.inference is not None
        with grpc.insecure_channel(cluster.inference.address) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            stub.LoadModel(inference_pb2.LoadModelRequest(model_id="tiny"), timeout=120)
            request = inference_pb2.SaveActivationsRequest(
                model_id="tiny",
                layers=["transformer_h_0"],
                dataset=common_pb2.DatasetSpec(texts=TEXTS),
                batch_size=4,
                shard_size=128,
                run_id="abandoned",
            )
            with pytest.raises(grpc.RpcError) as caught:
                stub.SaveActivations(request, timeout=2)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

            # The server notices before its next batch and marks the run failed: never complete.
            deadline = time.time() + 60
            manifest = _manifest(cluster.store, "abandoned")
            while (manifest is None or manifest["status"] == "running") and time.time() < deadline:
                time.sleep(0.2)
                manifest = _manifest(cluster.store, "abandoned")
            assert manifest is not None and manifest["status"] == "failed", manifest
            assert "cancelled" in manifest["error"]
            written = _shards(manifest)
            time.sleep(1.0)  # and nothing more is written after it stopped
            after = _manifest(cluster.store, "abandoned")
            assert after is not None and _shards(after) == written and after["status"] == "failed"
            stopped_at = after["n_tokens"]

            # The device is free again: a small harvest goes through at once, and the abandoned run is redone
            # from scratch under the same id when asked again.
            small = inference_pb2.SaveActivationsRequest(
                model_id="tiny",
                layers=["transformer_h_0"],
                dataset=common_pb2.DatasetSpec(texts=TEXTS[:20]),
                run_id="abandoned",
            )
            reply = stub.SaveActivations(small, timeout=60)
            assert reply.run_id == "abandoned"
            final = _manifest(cluster.store, "abandoned")
            assert final is not None and final["status"] == "complete"
            full = final["n_tokens"] / 20 * len(TEXTS)  # all texts are the same length give or take a digit
            assert stopped_at < full / 2, f"the abandoned harvest went on to {stopped_at} of {full:.0f} tokens"
