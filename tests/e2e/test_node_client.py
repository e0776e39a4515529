"""A Node.js client generated at run time from protos/ (@grpc/grpc-js + @grpc/proto-loader) runs a whole
workflow against a live local cluster; its decoded activations match the server's own numbers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from mi_crow.client import Client, dataset_spec
from mi_crow.services.launcher import LocalCluster

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "examples" / "clients" / "node"
TEXTS = [f"the {c} cat number {i} sat on the mat" for c in ("red", "grey") for i in range(12)]


def test_node_client_runs_the_workflow(tmp_path: Path, gpt2_dir: Path):
    node = shutil.which("node")
    assert node, "Node.js is needed for the cross-language client test (Debian package nodejs)"
    assert (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir(), (
        "run ./dev.sh setup (npm ci in examples/clients/node)"
    )
    env = {"MI_CROW_MODEL_ALIASES": json.dumps({"tiny": str(gpt2_dir)})}
    with LocalCluster(tmp_path, workers=1, extra_env=env) as cluster:
        assert cluster.artifacts and cluster.inference
        run = subprocess.run(
            [node, str(NODE_DIR / "client.mjs")],
            env={
                **os.environ,
                "MI_CROW_ARTIFACTS_ADDRESS": cluster.artifacts.address,
                "MI_CROW_INFERENCE_ADDRESS": cluster.inference.address,
                "TEXTS": json.dumps(TEXTS),
            },
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr
        summary = json.loads(run.stdout.strip().splitlines()[-1])
        with Client(cluster.artifacts.address, cluster.inference.address) as client:
            rows = [r for _, r, _ in client.stream_activations("tiny", ["transformer_h_0"], dataset_spec(TEXTS))]
        ours = torch.cat(rows)
    acts = summary["activations"]
    assert acts["last"] and acts["chunks"] >= 1
    assert (acts["rows"], acts["width"]) == tuple(ours.shape)
    assert acts["sum"] == pytest.approx(float(ours.double().sum()), rel=1e-4, abs=1e-3)
    assert summary["run"]["n_tokens"] == ours.shape[0]
    assert summary["job"]["state"] == "SUCCEEDED" and summary["job"]["states"][-1] == "SUCCEEDED"
    assert summary["config"]["name"] == "from-node" and summary["config"]["scale"] == 2.0
    assert summary["config"]["path"].endswith("configs/from-node.json")
