"""A whole cluster with mutual TLS and scoped API keys switched on: the calls inside it (a worker streaming
live activations from the inference server, then evaluating downstream through it) present credentials
like any outside client, and the health probe speaks TLS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from mi_crow.client import Client, tls_credentials
from mi_crow.services.common.outbound import channel_credentials
from mi_crow.services.launcher import LocalCluster
from mi_crow.v1 import artifacts_pb2, common_pb2

TEXTS = [f"the cat number {i} sat on the mat near the river" for i in range(24)]
KEYS = {"k-ops": "admin", "k-worker": "write"}


def _health(address: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mi_crow.cli", "health", address], env=env, capture_output=True, text=True, timeout=60
    )


def test_live_training_and_evaluation_inside_a_secured_cluster(tmp_path: Path, pki: Path, gpt2_dir: Path):
    env = {
        "MI_CROW_MODEL_ALIASES": json.dumps({"tiny": str(gpt2_dir)}),
        # servers: TLS only, client certificates required, keys required
        "MI_CROW_API_KEYS": json.dumps(KEYS),
        "MI_CROW_TLS_CERT": str(pki / "server.crt"),
        "MI_CROW_TLS_KEY": str(pki / "server.key"),
        "MI_CROW_TLS_CLIENT_CA": str(pki / "ca.crt"),
        # what the worker presents when it calls the inference server: a write key, which may not LoadModel
        "MI_CROW_API_KEY": "k-worker",
        "MI_CROW_TLS_CA": str(pki / "ca.crt"),
        "MI_CROW_TLS_CLIENT_CERT": str(pki / "client.crt"),
        "MI_CROW_TLS_CLIENT_KEY": str(pki / "client.key"),
    }
    creds = tls_credentials(pki / "ca.crt", pki / "client.crt", pki / "client.key")
    with LocalCluster(tmp_path / "cluster", workers=1, extra_env=env) as cluster:
        assert cluster.artifacts and cluster.inference and cluster.workers
        artifacts, inference = cluster.artifacts.address, cluster.inference.address
        with Client(artifacts, inference, api_key="k-worker", tls=creds, timeout=120) as worker_like:
            with pytest.raises(grpc.RpcError) as err:
                worker_like.load_model("tiny")
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with Client(artifacts, inference, api_key="k-ops", tls=creds, timeout=120) as ops:
            ops.load_model("tiny")  # an operator loads the model; the worker then only streams from it
            request = artifacts_pb2.TrainingRequest(
                model_id="tiny",
                layer="transformer_h_0",
                epochs=1,
                batch_size=64,
                k=4,
                stream=artifacts_pb2.LiveSource(dataset=common_pb2.DatasetSpec(texts=TEXTS), batch_size=8),
                evaluation=artifacts_pb2.EvaluationOptions(texts=TEXTS[:4], max_tokens=32),
            )
            job = ops.jobs.SubmitTraining(request, **ops._kw())
            final = ops.wait(job.job_id, timeout=300)
            assert artifacts_pb2.JobState.Name(final.state) == "SUCCEEDED", (final.error, list(final.logs))
            ev = ops.get_sae("tiny", job.sae_id).evaluation
        assert ev.has_downstream and ev.tokens == 32  # EvaluateSae reached the server over mTLS with the key
        worker_log = (cluster.workdir / "logs" / "worker-0.log").read_text()
        assert "may not load models" in worker_log and "k-worker" not in worker_log  # keys are never logged

        # The health probe speaks TLS when told to, and a plaintext probe of a TLS server fails.
        probe_env = {**os.environ, **{k: v for k, v in env.items() if k.startswith("MI_CROW_TLS_")}}
        for name in ("MI_CROW_TLS_CERT", "MI_CROW_TLS_KEY", "MI_CROW_TLS_CLIENT_CA"):
            probe_env.pop(name)
        for address in (artifacts, inference):
            ok = _health(address, probe_env)
            assert ok.returncode == 0 and "SERVING" in ok.stdout, ok.stdout + ok.stderr
        plain_env = {k: v for k, v in probe_env.items() if not k.startswith("MI_CROW_TLS_")}
        assert _health(artifacts, plain_env).returncode == 1


def test_half_configured_client_tls_is_refused(pki: Path):
    with pytest.raises(ValueError, match="both MI_CROW_TLS_CLIENT_CERT"):
        channel_credentials({"MI_CROW_TLS_CA": str(pki / "ca.crt"), "MI_CROW_TLS_CLIENT_CERT": "x"})
    with pytest.raises(ValueError, match="needs MI_CROW_TLS_CA"):
        channel_credentials({"MI_CROW_TLS_CLIENT_CERT": "x", "MI_CROW_TLS_CLIENT_KEY": "y"})
    assert channel_credentials({}) is None
    assert channel_credentials({"MI_CROW_TLS_CA": str(pki / "ca.crt")}) is not None
