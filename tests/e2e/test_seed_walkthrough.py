"""The seed's SAE API walk-through, call by call, through the generated stubs against a real local cluster:
redis-server, the artifact service, the inference server and two RQ workers, each its own process."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mi_crow.chunks import chunk_to_tensor
from mi_crow.services.launcher import LocalCluster
from mi_crow.v1 import artifacts_pb2, artifacts_pb2_grpc, common_pb2, inference_pb2, inference_pb2_grpc

ADMIN = "walkthrough-key"
TEXTS = [
    f"{a} {b} walked to the {c} and saw a {d}"
    for a in ("anna", "ben", "clara", "david")
    for b in ("slowly", "quickly", "happily")
    for c in ("park", "river", "market", "school")
    for d in ("cat", "dog", "red bird")
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, gpt2_dir: Path) -> Iterator[LocalCluster]:
    work = tmp_path_factory.mktemp("walkthrough")
    data = work / "data"
    data.mkdir()
    (data / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    from datasets import Dataset

    Dataset.from_dict({"text": TEXTS[:60]}).save_to_disk(str(data / "hf"))
    env = {
        "MI_CROW_MODEL_ALIASES": json.dumps({"tiny": str(gpt2_dir)}),
        "MI_CROW_DATASET_ROOTS": str(data),
        "MI_CROW_ADMIN_KEY": ADMIN,
    }
    with LocalCluster(work, workers=2, extra_env=env) as c:
        yield c


@pytest.fixture(scope="module")
def stubs(cluster: LocalCluster):  # type: ignore[no-untyped-def]
    assert cluster.artifacts and cluster.inference
    a = grpc.insecure_channel(cluster.artifacts.address)
    i = grpc.insecure_channel(cluster.inference.address, options=[("grpc.max_receive_message_length", 16 << 20)])
    yield (
        inference_pb2_grpc.InferenceServiceStub(i),
        artifacts_pb2_grpc.ArtifactServiceStub(a),
        artifacts_pb2_grpc.JobServiceStub(a),
    )
    a.close()
    i.close()


def _state(job: artifacts_pb2.Job) -> str:
    return artifacts_pb2.JobState.Name(job.state)


def _finish(jobs, job_id: str) -> artifacts_pb2.Job:  # type: ignore[no-untyped-def]
    updates = list(jobs.WatchJob(artifacts_pb2.JobRef(job_id=job_id), timeout=300))
    return updates[-1]


def test_seed_sae_api_walkthrough(cluster: LocalCluster, stubs):  # type: ignore[no-untyped-def]
    inference, artifacts, jobs = stubs
    data = cluster.workdir / "data"
    # Load a model.
    info = inference.LoadModel(inference_pb2.LoadModelRequest(model_id="tiny"), timeout=120)
    assert info.loaded
    # Save activations from a local file dataset and from a local HF dataset directory.
    file_run = inference.SaveActivations(
        inference_pb2.SaveActivationsRequest(
            model_id="tiny",
            layers=["transformer_h_0"],
            dataset=common_pb2.DatasetSpec(paths=[str(data / "texts.txt")]),
            batch_size=16,
            shard_size=512,
            run_id="file-run",
        ),
        timeout=300,
    )
    assert file_run.n_samples == len(TEXTS) and file_run.n_tokens > 0 and file_run.n_shards >= 2
    hf_run = inference.SaveActivations(
        inference_pb2.SaveActivationsRequest(
            model_id="tiny",
            layers=["transformer_h_0"],
            dataset=common_pb2.DatasetSpec(paths=[str(data / "hf")], sample_limit=40),
        ),
        timeout=300,
    )
    assert hf_run.n_samples == 40
    # List runs.
    runs = {r.run_id: r for r in artifacts.ListActivationRuns(artifacts_pb2.ListRunsRequest(model_id="tiny")).runs}
    assert {"file-run", hf_run.run_id} <= set(runs) and runs["file-run"].status == "complete"
    size = artifacts.GetLayerSize(
        artifacts_pb2.LayerSizeRequest(model_id="tiny", run_id="file-run", layer="transformer_h_0")
    )
    # Train (TopK) and watch to completion; status with SAE id, paths, progress and logs.
    train = artifacts_pb2.TrainingRequest(
        model_id="tiny", run_id="file-run", layer="transformer_h_0", sae_class="TopKSae", epochs=6, batch_size=64, k=4
    )
    job = jobs.SubmitTraining(train)
    done = _finish(jobs, job.job_id)
    assert _state(done) == "SUCCEEDED", done.error
    status = jobs.GetJob(artifacts_pb2.JobRef(job_id=job.job_id))
    assert status.sae_id == job.sae_id and status.sae_path.endswith(f"{job.sae_id}/sae.json")
    assert status.progress == 1.0 and any("published" in line for line in status.logs)
    # Cancel a second job mid-training.
    long = jobs.SubmitTraining(
        artifacts_pb2.TrainingRequest(model_id="tiny", run_id="file-run", epochs=10000, batch_size=8)
    )
    deadline = time.time() + 60
    while _state(jobs.GetJob(artifacts_pb2.JobRef(job_id=long.job_id))) != "RUNNING":
        assert time.time() < deadline
        time.sleep(0.2)
    assert _state(jobs.CancelJob(artifacts_pb2.JobRef(job_id=long.job_id))) == "CANCELLED"
    # Load the SAE; list SAEs.
    sae_ref = common_pb2.SaeRef(model_id="tiny", sae_id=job.sae_id)
    sae = inference.LoadSae(sae_ref)
    assert sae.d_in == size.d_model and sae.layer == "transformer_h_0"
    assert job.sae_id in [s.sae_id for s in artifacts.ListSaes(artifacts_pb2.ListSaesRequest(model_id="tiny")).saes]
    # Infer with top texts, top-k neurons and per-token latents.
    out = inference.InferSae(
        inference_pb2.InferSaeRequest(
            model_id="tiny",
            sae_id=job.sae_id,
            prompts=TEXTS[:3],
            top_k_neurons=5,
            return_token_latents=True,
            save_top_texts=True,
        ),
        timeout=120,
    )
    assert len(out.outputs) == 3 and 0 < len(out.outputs[0].top_latents) <= 5
    assert out.outputs[0].token_latents and out.top_texts_path.endswith("top_texts.json")
    strongest = out.outputs[0].top_latents[0].latent
    # Concepts: load, list, manipulate, preview, list configs.
    csv = f"latent,name\n{strongest},walkers\n".encode()
    loaded = artifacts.LoadConcepts(artifacts_pb2.LoadConceptsRequest(sae=sae_ref, content=csv, format="csv"))
    assert loaded.concepts[0].name == "walkers"
    assert "top_texts.json" in artifacts.ListConcepts(sae_ref).files
    # A bias adds the latent's direction even where it does not fire (e.g. on generated tokens).
    edits = {strongest: common_pb2.LatentEdit(scale=300.0, bias=50.0)}
    preview = artifacts.PreviewConcepts(artifacts_pb2.ManipulateConceptsRequest(sae=sae_ref, edits=edits))
    assert preview.edits[strongest].scale == 300.0 and not preview.path
    artifacts.ManipulateConcepts(artifacts_pb2.ManipulateConceptsRequest(sae=sae_ref, edits=edits, name="push"))
    assert "push" in artifacts.ListConceptConfigs(sae_ref).names
    # Generation under the config differs from generation without it.
    base = inference_pb2.InferSaeRequest(model_id="tiny", sae_id=job.sae_id, prompts=[TEXTS[0]], max_new_tokens=12)
    plain = inference.InferSae(base, timeout=120).outputs[0].text
    steered_req = inference_pb2.InferSaeRequest()
    steered_req.CopyFrom(base)
    steered_req.concept_config = "push"
    steered = inference.InferSae(steered_req, timeout=120).outputs[0].text
    assert steered != plain
    named = inference.InferSae(base, timeout=120).outputs[0].top_latents
    assert any(latent.name == "walkers" for latent in named)
    # Delete a run and an SAE: refused without the API key.
    run_ref = common_pb2.RunRef(model_id="tiny", run_id=hf_run.run_id)
    with pytest.raises(grpc.RpcError) as err:
        artifacts.DeleteActivationRun(run_ref)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    key = (("authorization", f"Bearer {ADMIN}"),)
    assert artifacts.DeleteActivationRun(run_ref, metadata=key).deleted
    assert artifacts.DeleteSae(sae_ref, metadata=key).deleted
    # Health and metrics.
    for address in (cluster.artifacts.address, cluster.inference.address):  # type: ignore[union-attr]
        with grpc.insecure_channel(address) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    metrics = jobs.GetMetrics(artifacts_pb2.GetMetricsRequest())
    assert metrics.succeeded >= 1 and metrics.cancelled >= 1 and metrics.total >= 2


def test_live_stream_training_matches_training_from_the_saved_run(cluster: LocalCluster, stubs):  # type: ignore[no-untyped-def]
    inference, _, jobs = stubs
    inference.LoadModel(inference_pb2.LoadModelRequest(model_id="tiny"), timeout=120)
    saved = inference.SaveActivations(
        inference_pb2.SaveActivationsRequest(
            model_id="tiny", layers=["transformer_h_1"], dataset=common_pb2.DatasetSpec(texts=TEXTS), run_id="ev-run"
        ),
        timeout=300,
    )
    common = {"model_id": "tiny", "layer": "transformer_h_1", "epochs": 8, "batch_size": 64, "k": 8, "n_latents": 256}
    from_run = jobs.SubmitTraining(artifacts_pb2.TrainingRequest(run_id=saved.run_id, **common))
    live = jobs.SubmitTraining(
        artifacts_pb2.TrainingRequest(
            stream=artifacts_pb2.LiveSource(dataset=common_pb2.DatasetSpec(texts=TEXTS), batch_size=16), **common
        )
    )
    a, b = _finish(jobs, from_run.job_id), _finish(jobs, live.job_id)
    assert _state(a) == "SUCCEEDED" and _state(b) == "SUCCEEDED", (a.error, b.error)
    # Judge both SAEs on the same activations: the saved run's.
    from mi_crow.mechanistic.sae import Sae
    from mi_crow.mechanistic.sae.metrics import explained_variance
    from mi_crow.store import LocalStore

    store = LocalStore(cluster.store)
    x = torch.cat([s["activations"] for s in store.open_run("tiny", saved.run_id).iter_shards("transformer_h_1")])
    evs = []
    for job in (a, b):
        sae = Sae.load(store.sae_dir("tiny", job.sae_id))
        with torch.no_grad():
            evs.append(explained_variance(x, sae(x).x_hat))
    assert evs[0] > 0.5
    assert abs(evs[0] - evs[1]) <= 0.02, evs


def test_one_job_trains_an_sae_per_layer_from_one_live_stream(cluster: LocalCluster, stubs):  # type: ignore[no-untyped-def]
    inference, artifacts, jobs = stubs
    layers = ["transformer_h_0", "transformer_h_1"]
    live = artifacts_pb2.LiveSource(dataset=common_pb2.DatasetSpec(texts=TEXTS), batch_size=16)
    common = {"model_id": "tiny", "epochs": 6, "batch_size": 64, "k": 8, "n_latents": 256, "stream": live}
    job = jobs.SubmitTraining(artifacts_pb2.TrainingRequest(layers=layers, sae_id="per-layer", **common))
    assert list(job.sae_ids) == ["per-layer.transformer_h_0", "per-layer.transformer_h_1"]
    done = _finish(jobs, job.job_id)
    assert _state(done) == "SUCCEEDED", done.error
    assert done.progress == 1.0 and done.step > 0 and "transformer_h_1.explained_variance" in done.metrics
    from mi_crow.mechanistic.sae import Sae
    from mi_crow.mechanistic.sae.metrics import explained_variance

    request = inference_pb2.StreamActivationsRequest(model_id="tiny", layers=layers, dataset=live.dataset)
    rows: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}
    for chunk in inference.StreamActivations(request, timeout=120):
        rows[chunk.layer].append(chunk_to_tensor(chunk))
    listed = {s.sae_id for s in artifacts.ListSaes(artifacts_pb2.ListSaesRequest(model_id="tiny")).saes}
    for sae_id, path, layer in zip(done.sae_ids, done.sae_paths, layers, strict=True):
        assert sae_id in listed and path.endswith(f"{sae_id}/sae.json")
        sae = Sae.load(cluster.store / path.removesuffix("/sae.json"))
        assert sae.layer == layer
        x = torch.cat(rows[layer])
        with torch.no_grad():
            assert explained_variance(x, sae(x).x_hat) > 0.5, layer
    # What cannot work is refused at submission, with the reason.
    bad = {
        "no stream": {"layers": layers, "run_id": "ev-run", "model_id": "tiny"},
        "layer and layers": {"layers": layers, "layer": "transformer_h_0", **common},
        "a layer twice": {"layers": ["transformer_h_0", "transformer_h_0"], **common},
        "one layer": {"layers": ["transformer_h_0"], **common},
        "evaluation": {"layers": layers, "evaluation": artifacts_pb2.EvaluationOptions(enabled=True), **common},
        "a layer no id can hold": {"layers": ["transformer_h_0", "a/b"], **common},
    }
    for case, fields in bad.items():
        with pytest.raises(grpc.RpcError) as err:
            jobs.SubmitTraining(artifacts_pb2.TrainingRequest(**fields))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case


def test_python_client_drives_the_cluster(cluster: LocalCluster):
    from mi_crow.client import Client, dataset_spec

    assert cluster.artifacts and cluster.inference
    with Client(cluster.artifacts.address, cluster.inference.address, api_key=ADMIN) as client:
        assert client.load_model("tiny").loaded
        assert "transformer_h_0" in [layer.name for layer in client.layers("tiny")]
        saved = client.save_activations("tiny", ["transformer_h_0"], dataset_spec(TEXTS[:20]), run_id="client-run")
        streamed = [
            rows for _, rows, _ in client.stream_activations("tiny", ["transformer_h_0"], dataset_spec(TEXTS[:20]))
        ]
        assert sum(r.shape[0] for r in streamed) == saved.n_tokens
        assert saved.run_id in [r.run_id for r in client.list_runs("tiny")]
        job = client.train(
            "tiny", saved.run_id, "transformer_h_0", epochs=2, batch_size=32, k=4, hyperparams={"seed": 3}
        )
        final = client.wait(job.job_id)
        assert _state(final) == "SUCCEEDED" and json.loads(final.request.hyperparams_json) == {"seed": 3}
        assert job.sae_id in [s.sae_id for s in client.list_saes("tiny")]
        out = client.infer_sae("tiny", job.sae_id, [TEXTS[0]], edits={0: {"scale": 2.0, "bias": 0.5}}, top_k_neurons=3)
        assert len(out.outputs[0].top_latents) <= 3
        assert client.manipulate("tiny", job.sae_id, {1: 1.5}).edits[1].scale == 1.5
        assert client.job(job.job_id).sae_id == job.sae_id
        assert client.metrics().succeeded >= 1
        both = client.train_live(
            "tiny", ["transformer_h_0", "transformer_h_1"], dataset_spec(TEXTS[:40]), epochs=1, k=4
        )
        assert _state(client.wait(both.job_id)) == "SUCCEEDED" and len(client.job(both.job_id).sae_paths) == 2
        assert client.delete_sae("tiny", job.sae_id) and client.delete_run("tiny", saved.run_id)
        with pytest.raises(grpc.RpcError) as err:
            client.cancel("job-does-not-exist")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_cli_client_mirrors_the_seed_curl_examples(cluster: LocalCluster, tmp_path: Path):
    from typer.testing import CliRunner

    from mi_crow.cli import app

    assert cluster.artifacts and cluster.inference
    env = {
        "MI_CROW_ARTIFACTS_ADDRESS": cluster.artifacts.address,
        "MI_CROW_INFERENCE_ADDRESS": cluster.inference.address,
        "MI_CROW_API_KEY": ADMIN,
    }
    runner = CliRunner(env=env)

    def run(*args: str) -> str:
        result = runner.invoke(app, ["client", *args])
        assert result.exit_code == 0, (args, result.output, result.exception)
        return result.stdout

    assert json.loads(run("load-model", "tiny"))["loaded"]
    assert "transformer_h_0" in run("layers", "tiny")
    texts = [a for t in TEXTS[:12] for a in ("--text", t)]
    saved = json.loads(run("save-activations", "tiny", "-l", "transformer_h_0", *texts, "--run-id", "cli-run"))
    assert saved["run_id"] == "cli-run" and int(saved["n_tokens"]) > 0
    assert "cli-run" in run("runs", "--model-id", "tiny")
    out = run("train", "tiny", "cli-run", "-l", "transformer_h_0", "--epochs", "2", "--batch-size", "32", "--k", "4")
    job = json.loads(out[out.index("{") :])
    assert job["state"] == "SUCCEEDED"
    sae_id = job["sae_id"]
    assert json.loads(run("status", job["job_id"]))["sae_id"] == sae_id
    assert sae_id in run("saes", "--model-id", "tiny")
    inferred = json.loads(run("infer", "tiny", sae_id, TEXTS[0], "--top-k-neurons", "3", "--token-latents"))
    assert inferred["outputs"][0]["token_latents"]
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"0": "first"}))
    assert json.loads(run("load-concepts", "tiny", sae_id, str(names)))["concepts"][0]["name"] == "first"
    assert json.loads(run("concepts", "tiny", sae_id))["concepts"][0].get("latent", 0) == 0
    assert json.loads(run("preview", "tiny", sae_id, "1=2.0,0.5"))["edits"]["1"]["bias"] == 0.5
    assert json.loads(run("manipulate", "tiny", sae_id, "1=2.0", "--name", "cli"))["path"].endswith("cli.json")
    assert "cli" in json.loads(run("configs", "tiny", sae_id))["names"]
    assert json.loads(run("metrics"))["succeeded"]
    assert json.loads(run("delete-sae", "tiny", sae_id)) == {"deleted": True}
    bad = runner.invoke(app, ["client", "cancel", "job-nope"])
    assert bad.exit_code != 0 and "NOT_FOUND" in str(bad.exception)
    bad_edit = runner.invoke(app, ["client", "preview", "tiny", sae_id, "x=1"])
    assert bad_edit.exit_code != 0
