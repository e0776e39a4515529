"""Dashboards as a cluster job: SubmitDashboard runs on a real RQ worker, GetDashboard returns what it stored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from mi_crow.client import Client, dataset_spec
from mi_crow.hooks import LayerActivationDetector
from mi_crow.language_model import LanguageModel
from mi_crow.mechanistic.dashboards import build_dashboard
from mi_crow.mechanistic.sae import SaeTrainer, TopKSae
from mi_crow.services.launcher import LocalCluster
from mi_crow.v1 import artifacts_pb2

LAYER = "transformer_h_1"
TEXTS = [f"the cat number {i} sat on the mat near the river" for i in range(10)] + [
    f"blue sky and green grass on day {i}" for i in range(10)
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("cluster"), workers=1, inference=False) as c:
        yield c


@pytest.fixture(scope="module")
def client(cluster: LocalCluster) -> Iterator[Client]:
    assert cluster.artifacts is not None
    with Client(cluster.artifacts.address, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def trained(cluster: LocalCluster, gpt2_dir: Path) -> tuple[LanguageModel, TopKSae]:
    lm = LanguageModel(str(gpt2_dir), store=cluster.store)
    detector = LayerActivationDetector(LAYER)
    enc = lm.tokenize(TEXTS)
    with lm.hooks.attached(detector), torch.inference_mode():
        lm.model(**enc, use_cache=False)
    assert detector.activations is not None
    acts = detector.activations[enc["attention_mask"].bool()].clone()
    hyper = {"epochs": 2, "batch_size": 32, "k": 4, "n_latents": 32}
    return lm, SaeTrainer(lm, LAYER, TopKSae, hyper, progress=False, sae_id="sae-dash").train(acts)


def _code(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def test_dashboard_job_builds_what_get_dashboard_returns(client, trained):
    lm, sae = trained
    assert _code(lambda: client.dashboard(sae.id)) == grpc.StatusCode.NOT_FOUND  # not built yet
    spec = dataset_spec(TEXTS)
    job = client.submit_dashboard(sae.id, spec, top_k=3, max_latents=8, batch_size=8)
    assert job.kind == "dashboard" and job.state == artifacts_pb2.QUEUED and job.sae_id == sae.id
    assert job.dashboard_request.model_id == lm.model_id  # filled in from the SAE
    again = client.submit_dashboard(sae.id, spec, top_k=3, max_latents=8, batch_size=8)
    assert again.job_id == job.job_id  # the whole request is the idempotency key
    final = client.wait(job.job_id, timeout=300)
    assert artifacts_pb2.JobState.Name(final.state) == "SUCCEEDED", final.error
    assert final.progress == 1.0 and final.metrics["latents"] == 8 and final.dashboard_path.endswith("dashboard.json")
    assert any("stored" in line for line in final.logs)

    stored = client.dashboard_response(sae.id)
    assert stored.sae.model_id == lm.model_id and stored.path == final.dashboard_path
    data = json.loads(stored.dashboard_json)
    assert data["sae_id"] == sae.id and data["n_texts"] == len(TEXTS) and len(data["latents"]) == 8
    assert all(0 < len(card["top_examples"]) <= 3 for card in data["latents"])
    assert stored.html.startswith("<!DOCTYPE html>") and sae.id in stored.html
    # The worker's build equals the library's on the same texts and SAE.
    local = build_dashboard(lm, sae, TEXTS, top_k=3, max_latents=8, batch_size=8, progress=False)
    assert [c["latent"] for c in data["latents"]] == list(local.latents)
    for card in data["latents"]:
        mine = local[card["latent"]]
        assert card["n_fired"] == mine.n_fired
        top = card["top_examples"][0]
        assert (top["sample"], top["position"]) == (mine.top_examples[0].sample, mine.top_examples[0].position)
        assert top["activation"] == pytest.approx(mine.top_examples[0].activation, rel=1e-4)
    assert client.dashboard(sae.id, lm.model_id)["n_tokens"] == local.n_tokens


def test_bad_dashboard_requests_get_precise_codes(client, trained):
    _, sae = trained
    spec = dataset_spec(TEXTS)
    assert _code(lambda: client.submit_dashboard("", spec)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: client.submit_dashboard("sae-unknown", spec)) == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: client.submit_dashboard("../etc", spec)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: client.submit_dashboard(sae.id, spec, top_k=1000)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: client.submit_dashboard(sae.id, spec, max_latents=-1)) == grpc.StatusCode.INVALID_ARGUMENT
    no_data = artifacts_pb2.DashboardRequest(sae_id=sae.id)
    assert _code(lambda: client.jobs.SubmitDashboard(no_data, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
    outside = dataset_spec(paths=["/etc/passwd"])
    assert _code(lambda: client.submit_dashboard(sae.id, outside)) == grpc.StatusCode.PERMISSION_DENIED
    assert _code(lambda: client.dashboard("sae-unknown")) == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: client.dashboard("")) == grpc.StatusCode.INVALID_ARGUMENT


def test_a_failing_dashboard_job_says_why(client, trained):
    _, sae = trained
    job = client.submit_dashboard(sae.id, dataset_spec(TEXTS), model_id="/nonexistent/model-dir")
    final = client.wait(job.job_id, timeout=120)
    assert artifacts_pb2.JobState.Name(final.state) == "FAILED"
    assert "does not exist" in final.error
