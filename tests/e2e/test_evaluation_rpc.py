"""EvaluateSae and the training job's evaluate phase against a real local cluster: redis-server, the artifact
service, the inference server and one RQ worker, each its own process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from mi_crow.language_model import LanguageModel
from mi_crow.mechanistic.evaluation import EvalReport, evaluate_sae
from mi_crow.mechanistic.sae import Sae, SaeTrainer, TopKSae
from mi_crow.services.launcher import LocalCluster
from mi_crow.v1 import artifacts_pb2, artifacts_pb2_grpc, common_pb2, inference_pb2, inference_pb2_grpc

TRAIN = [f"the cat number {i} sat on the mat near the river" for i in range(30)] + [
    f"blue sky and green grass on day {i}" for i in range(30)
]
HELD_OUT = [
    "a red dog runs very fast across the park",
    "she ate an apple and a pear",
    "numbers one two three four",
    "green grass grows under the warm sun in spring",
] * 2
LAYER = "transformer_h_0"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, gpt2_dir: Path) -> Iterator[LocalCluster]:
    env = {"MI_CROW_MODEL_ALIASES": json.dumps({"tiny": str(gpt2_dir)})}
    with LocalCluster(tmp_path_factory.mktemp("eval-cluster"), workers=1, extra_env=env) as c:
        yield c


@pytest.fixture(scope="module")
def stubs(cluster: LocalCluster):  # type: ignore[no-untyped-def]
    assert cluster.artifacts and cluster.inference
    a = grpc.insecure_channel(cluster.artifacts.address)
    i = grpc.insecure_channel(cluster.inference.address, options=[("grpc.max_receive_message_length", 16 << 20)])
    inference = inference_pb2_grpc.InferenceServiceStub(i)
    inference.LoadModel(inference_pb2.LoadModelRequest(model_id="tiny"), timeout=120)
    yield inference, artifacts_pb2_grpc.ArtifactServiceStub(a), artifacts_pb2_grpc.JobServiceStub(a)
    a.close()
    i.close()


@pytest.fixture(scope="module")
def lm(cluster: LocalCluster, gpt2_dir: Path) -> LanguageModel:
    return LanguageModel("tiny", aliases={"tiny": str(gpt2_dir)}, store=cluster.store)


@pytest.fixture(scope="module")
def sae_id(lm: LanguageModel) -> str:
    run = lm.save_activations(TRAIN, [LAYER], progress=False, run_id="run-lib")
    trainer = SaeTrainer(lm, LAYER, TopKSae, {"epochs": 2, "batch_size": 64, "k": 4}, progress=False)
    return trainer.train(run).id or ""


def _code(call) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def _request(sae_id: str, **kw: object) -> inference_pb2.EvaluateSaeRequest:
    base: dict[str, object] = {"model_id": "tiny", "sae_id": sae_id, "dataset": common_pb2.DatasetSpec(texts=HELD_OUT)}
    base.update(kw)
    return inference_pb2.EvaluateSaeRequest(**base)


def test_evaluate_sae_matches_the_library_and_is_stored(stubs, lm, sae_id, cluster):  # type: ignore[no-untyped-def]
    inference, artifacts, _ = stubs
    reply = inference.EvaluateSae(_request(sae_id, downstream=True, batch_size=3), timeout=300)
    ev = reply.evaluation
    sae = Sae.load(cluster.store / Path(reply.eval_path).parent)
    local = evaluate_sae(lm, sae, HELD_OUT, progress=False)
    assert ev.has_downstream and ev.layer == LAYER and ev.source == "texts" and ev.texts == len(HELD_OUT)
    assert ev.tokens == local.tokens and ev.downstream_tokens == local.downstream_tokens
    assert ev.explained_variance == pytest.approx(local.explained_variance, abs=1e-5)
    assert ev.ce_recovered == pytest.approx(local.ce_recovered, abs=1e-4)
    assert ev.kl_sae == pytest.approx(local.kl_sae, abs=1e-5) and ev.kl_zero > 0
    assert list(ev.histogram_counts) == local.histogram_counts
    assert sum(ev.histogram_counts) + ev.dead_latents == len(ev.latent_density) == sae.n_latents
    stored = EvalReport.load(cluster.store / Path(reply.eval_path).parent)
    assert stored.tokens == ev.tokens and reply.sae.evaluation.tokens == ev.tokens

    info = artifacts.GetSae(common_pb2.SaeRef(model_id="tiny", sae_id=sae_id))
    assert info.HasField("evaluation") and info.evaluation.ce_recovered == pytest.approx(ev.ce_recovered)
    listed = {s.sae_id: s for s in artifacts.ListSaes(artifacts_pb2.ListSaesRequest(model_id="tiny")).saes}
    assert listed[sae_id].evaluation.tokens == ev.tokens

    recon_only = inference.EvaluateSae(_request(sae_id, max_tokens=10), timeout=300).evaluation
    assert not recon_only.has_downstream and recon_only.tokens == 10 and recon_only.ce_clean == 0


def test_evaluate_sae_bad_inputs(stubs, lm, sae_id, cluster):  # type: ignore[no-untyped-def]
    inference, _, _ = stubs
    narrow = TopKSae(32, 64, k=4)
    narrow.sae_id, narrow.layer, narrow.model_id = "sae-narrow", LAYER, "tiny"
    narrow.save(lm.store.sae_dir("tiny", "sae-narrow"))
    cases = [
        (_request(""), grpc.StatusCode.INVALID_ARGUMENT, "sae_id"),
        (_request("no-such-sae"), grpc.StatusCode.NOT_FOUND, "no-such-sae"),
        (_request(sae_id, model_id="nope"), grpc.StatusCode.NOT_FOUND, "unknown model"),
        (_request(sae_id, layer="transformer_h_1"), grpc.StatusCode.FAILED_PRECONDITION, "trained on layer"),
        (_request("sae-narrow"), grpc.StatusCode.FAILED_PRECONDITION, "width"),
        (_request(sae_id, dataset=common_pb2.DatasetSpec()), grpc.StatusCode.INVALID_ARGUMENT, "dataset"),
        (_request(sae_id, max_tokens=-1), grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
        (_request(sae_id, max_tokens=(1 << 20) + 1), grpc.StatusCode.RESOURCE_EXHAUSTED, "max_tokens"),
        (_request(sae_id, batch_size=65), grpc.StatusCode.RESOURCE_EXHAUSTED, "batch_size"),
    ]
    for request, code, words in cases:
        got, details = _code(lambda request=request: inference.EvaluateSae(request, timeout=60))
        assert (got, words in details) == (code, True), (request, details)


def test_training_job_evaluates_before_it_succeeds(stubs, lm, cluster):  # type: ignore[no-untyped-def]
    _, artifacts, jobs = stubs
    run = lm.save_activations(TRAIN, [LAYER], progress=False, run_id="run-job", shard_size=120)
    shards = run.layer(LAYER).shards
    assert len(shards) >= 4
    base = {"model_id": "tiny", "run_id": run.run_id, "layer": LAYER, "epochs": 2, "batch_size": 64, "k": 4}
    bad = artifacts_pb2.EvaluationOptions(enabled=True, holdout_fraction=1.5)
    code, _ = _code(lambda: jobs.SubmitTraining(artifacts_pb2.TrainingRequest(**base, evaluation=bad)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    many = artifacts_pb2.EvaluationOptions(texts=["x"] * 65)
    code, _ = _code(lambda: jobs.SubmitTraining(artifacts_pb2.TrainingRequest(**base, evaluation=many)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED

    options = artifacts_pb2.EvaluationOptions(texts=HELD_OUT, holdout_fraction=0.25)
    job = jobs.SubmitTraining(artifacts_pb2.TrainingRequest(**base, evaluation=options))
    updates = list(jobs.WatchJob(artifacts_pb2.JobRef(job_id=job.job_id), timeout=300))
    final = updates[-1]
    assert artifacts_pb2.JobState.Name(final.state) == "SUCCEEDED", (final.error, list(final.logs))
    assert final.phase == "evaluate" and any(u.phase == "train" for u in updates)
    assert "eval_explained_variance" in final.metrics and "eval_ce_recovered" in final.metrics
    held = shards[-round(len(shards) * 0.25) :]
    info = artifacts.GetSae(common_pb2.SaeRef(model_id="tiny", sae_id=job.sae_id))
    ev = info.evaluation
    assert ev.has_downstream and "held-out shards" in ev.source
    assert ev.tokens == sum(s.n_tokens for s in held) and ev.texts == 0
    assert ev.downstream_texts == len(HELD_OUT) and ev.kl_zero > 0
    trained_on = json.loads(info.metadata_json)["training"]["epochs"][-1]["tokens"]
    assert trained_on == run.n_tokens - ev.tokens  # the held-out shards never reached the trainer
    assert EvalReport.load(cluster.store / Path(final.sae_path).parent).tokens == ev.tokens


def test_client_and_cli_evaluate(stubs, sae_id, cluster):  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from mi_crow.cli_client import app
    from mi_crow.client import Client

    assert cluster.inference and cluster.artifacts
    with Client(cluster.artifacts.address, cluster.inference.address) as client:
        reply = client.evaluate_sae("tiny", sae_id, HELD_OUT[:2], max_tokens=12)
        assert reply.evaluation.tokens == 12 and client.get_sae("tiny", sae_id).evaluation.tokens == 12
    args = ["evaluate", "tiny", sae_id, "--text", HELD_OUT[0], "--no-downstream", "--max-tokens", "5"]
    result = CliRunner().invoke(app, [*args, "--inference", cluster.inference.address])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output[result.output.index("{") :])
    assert printed["tokens"] == "5" and not printed.get("has_downstream")  # int64 prints as a JSON string


def test_live_streamed_job_evaluates_through_the_server(stubs):  # type: ignore[no-untyped-def]
    _, artifacts, jobs = stubs
    request = artifacts_pb2.TrainingRequest(
        model_id="tiny",
        layer=LAYER,
        epochs=1,
        batch_size=64,
        k=4,
        stream=artifacts_pb2.LiveSource(dataset=common_pb2.DatasetSpec(texts=TRAIN), batch_size=16),
        evaluation=artifacts_pb2.EvaluationOptions(texts=HELD_OUT[:4], max_tokens=40),
    )
    job = jobs.SubmitTraining(request)
    final = list(jobs.WatchJob(artifacts_pb2.JobRef(job_id=job.job_id), timeout=300))[-1]
    assert artifacts_pb2.JobState.Name(final.state) == "SUCCEEDED", (final.error, list(final.logs))
    ev = artifacts.GetSae(common_pb2.SaeRef(model_id="tiny", sae_id=job.sae_id)).evaluation
    assert ev.source == "texts" and ev.has_downstream and ev.tokens == 40 and ev.texts > 0
    assert final.metrics["eval_ce_recovered"] == pytest.approx(ev.ce_recovered)
