"""Steering through the inference server: GenerateStream and Infer with SAE edits, compared with unsteered runs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import torch
from typer.testing import CliRunner

from mi_crow.cli_client import app
from mi_crow.client import Client, steering_edit
from mi_crow.language_model import LanguageModel
from mi_crow.mechanistic.sae import Sae, TopKSae
from mi_crow.mechanistic.steering import Steering, generate_compare
from mi_crow.services.common.config import ServerConfig
from mi_crow.services.common.convert import chunk_to_tensor
from mi_crow.services.inference.server import start_inference_server
from mi_crow.services.inference.service import InferenceServicer
from mi_crow.store import LocalStore
from mi_crow.v1 import inference_pb2, inference_pb2_grpc

PROMPT = "the cat sat on the mat"
SAMPLED = {"max_new_tokens": 8, "do_sample": True, "temperature": 1.0}


@dataclass
class Server:
    address: str
    stub: inference_pb2_grpc.InferenceServiceStub
    client: Client
    servicer: InferenceServicer
    lm: LanguageModel  # the same checkpoint in this process, as the reference
    saes: dict[str, Sae]  # sae_id -> the stored SAE, loaded here


def _store_random_sae(store: LocalStore, sae_id: str, layer: str, seed: int) -> Sae:
    torch.manual_seed(seed)
    sae = TopKSae(64, 96, k=8)
    with torch.no_grad():
        sae.input_scale.fill_(0.37)
    sae.sae_id, sae.layer, sae.model_id = sae_id, layer, "tiny"
    sae.save(store.sae_dir("tiny", sae_id))
    return Sae.load(store.sae_dir("tiny", sae_id))


@pytest.fixture
def srv(tmp_path: Path, gpt2_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setenv("MI_CROW_MODEL_ALIASES", json.dumps({"tiny": str(gpt2_dir)}))
    cfg = ServerConfig(port=0, artifact_root=tmp_path / "store", dataset_roots=[])
    servicer = InferenceServicer(cfg)
    saes = {
        "sae-h0": _store_random_sae(servicer.store, "sae-h0", "transformer_h_0", 0),
        "sae-h1": _store_random_sae(servicer.store, "sae-h1", "transformer_h_1", 1),
    }
    running = start_inference_server(cfg, servicer)
    channel = grpc.insecure_channel(running.address)
    stub = inference_pb2_grpc.InferenceServiceStub(channel)
    stub.LoadModel(inference_pb2.LoadModelRequest(model_id="tiny"))
    client = Client(inference=running.address)
    try:
        yield Server(running.address, stub, client, servicer, LanguageModel("tiny", store=servicer.store), saes)
    finally:
        client.close()
        channel.close()
        running.stop(0)


def status(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    return info.value.code(), info.value.details()


def stream(srv: Server, **kwargs: object) -> tuple[list[int], inference_pb2.GenerateEvent]:
    events = list(srv.stub.GenerateStream(inference_pb2.GenerateRequest(model_id="tiny", prompt=PROMPT, **kwargs)))
    assert events[-1].done and not any(e.done for e in events[:-1])
    return [e.token_id for e in events[:-1]], events[-1]


def test_generate_stream_steered_and_unsteered_match_the_library(srv: Server):
    edits = [steering_edit("sae-h0", 5, "add", 150.0), steering_edit("sae-h1", 7, "scale", 30.0)]
    reference = generate_compare(
        srv.lm, [PROMPT], Steering().add(srv.saes["sae-h0"], 5, 150.0).scale(srv.saes["sae-h1"], 7, 30.0),
        seed=11, **SAMPLED,
    )[0]  # fmt: skip
    assert reference.changed  # strong steering changes what is sampled
    options = inference_pb2.GenerationOptions(seed=11, **SAMPLED)
    tokens, done = stream(srv, generation=options, steering=edits, compare_unsteered=True)
    assert tokens == reference.steered_tokens
    assert list(done.unsteered_token_ids) == reference.unsteered_tokens and done.unsteered_text == reference.unsteered
    assert done.seed == 11
    # Without compare the done event carries nothing new: what existing clients see is unchanged.
    tokens_only, plain_done = stream(srv, generation=options, steering=edits)
    assert tokens_only == tokens and not plain_done.unsteered_token_ids and plain_done.seed == 0
    # No edits: both continuations are the same; unseeded sampling gets one drawn seed for both.
    tokens, done = stream(srv, generation=inference_pb2.GenerationOptions(**SAMPLED), compare_unsteered=True)
    assert done.seed > 0 and tokens == list(done.unsteered_token_ids) and tokens
    again, _ = stream(srv, generation=inference_pb2.GenerationOptions(seed=done.seed, **SAMPLED))
    assert again == tokens  # the reported seed reproduces the run
    assert srv.servicer.pool.get("tiny").hooks.torch_handle_count() == 0


def test_client_and_infer_carry_steering_and_the_unsteered_text(srv: Server):
    steered, unsteered, seed = srv.client.generate_compare(
        "tiny", PROMPT, [("sae-h0", 5, "add", 150.0)], max_new_tokens=8, do_sample=True, seed=3
    )
    reference = generate_compare(srv.lm, [PROMPT], Steering().add(srv.saes["sae-h0"], 5, 150.0), seed=3, **SAMPLED)
    assert (steered, unsteered, seed) == (reference[0].steered, reference[0].unsteered, 3)

    ablate = steering_edit("sae-h0", 5, "ablate")
    item = inference_pb2.InferInput(
        prompt=PROMPT,
        generation=inference_pb2.GenerationOptions(max_new_tokens=6),
        returns=inference_pb2.ReturnOptions(logits=True),
        steering=[ablate],
        compare_unsteered=True,
    )
    out = srv.stub.Infer(inference_pb2.InferRequest(model_id="tiny", inputs=[item])).outputs[0]
    with Steering().ablate(srv.saes["sae-h0"], 5).applied(srv.lm):
        expected = srv.lm.generate([PROMPT], max_new_tokens=6)
        logits = srv.lm.forwards([PROMPT]).logits[0, -1]
    assert out.text == expected.texts[0]
    assert out.unsteered_text == srv.lm.generate([PROMPT], max_new_tokens=6).texts[0] and out.seed == 0
    assert list(out.unsteered_token_ids) == srv.lm.generate([PROMPT], max_new_tokens=6).new_tokens[0]
    assert torch.allclose(chunk_to_tensor(out.logits), logits, atol=1e-5)  # the forward pass is steered too


def test_bad_edits_get_precise_statuses(srv: Server):
    def gen(*edits: inference_pb2.SteeringEdit) -> Callable[[], object]:
        options = inference_pb2.GenerationOptions(max_new_tokens=4)
        return lambda: srv.stub.GenerateStream(
            inference_pb2.GenerateRequest(model_id="tiny", prompt=PROMPT, generation=options, steering=list(edits))
        )

    def infer(*edits: inference_pb2.SteeringEdit) -> Callable[[], object]:
        item = inference_pb2.InferInput(prompt=PROMPT, steering=list(edits))
        return lambda: srv.stub.Infer(inference_pb2.InferRequest(model_id="tiny", inputs=[item]))

    cases = [
        (steering_edit("no-such-sae", 0), grpc.StatusCode.NOT_FOUND, "no SAE 'no-such-sae'"),
        (steering_edit("", 0), grpc.StatusCode.INVALID_ARGUMENT, "sae_id is required"),
        (steering_edit("sae-h0", 96), grpc.StatusCode.INVALID_ARGUMENT, "latent 96 out of range 0..95"),
        (steering_edit("sae-h0", -3), grpc.StatusCode.INVALID_ARGUMENT, "latent -3 out of range"),
        (steering_edit("sae-h0", 1, "add", float("nan")), grpc.StatusCode.INVALID_ARGUMENT, "not a finite number"),
        (inference_pb2.SteeringEdit(sae_id="sae-h0", latent=1), grpc.StatusCode.INVALID_ARGUMENT, "set mode"),
        (steering_edit("sae-h0", 1, layer="transformer_h_1"), grpc.StatusCode.INVALID_ARGUMENT, "reads layer"),
        (steering_edit("sae-h0", 1, layer="no_such_layer"), grpc.StatusCode.INVALID_ARGUMENT, "unknown layer"),
    ]
    for edit, code, words in cases:
        for call in (gen(edit), infer(edit)):
            got, msg = status(call)
            assert got == code and words in msg, (edit, got, msg)
    got, msg = status(gen(steering_edit("sae-h0", 1, "scale", 2.0), steering_edit("sae-h0", 1, "ablate")))
    assert got == grpc.StatusCode.INVALID_ARGUMENT and "already edited" in msg
    got, msg = status(gen(*[steering_edit("sae-h0", i % 96, "add", 1.0) for i in range(65)]))
    assert got == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit is 64" in msg
    assert srv.servicer.pool.get("tiny").hooks.torch_handle_count() == 0
    with pytest.raises(ValueError, match="unknown steering mode"):
        steering_edit("sae-h0", 1, "boost")


def test_cli_generate_prints_steered_and_unsteered(srv: Server):
    args = ["generate", "tiny", PROMPT, "--max-new-tokens", "8", "--sample", "--seed", "3", "--inference", srv.address]
    res = CliRunner().invoke(app, [*args, "--steer", "sae-h0:5:add:150", "--compare"])
    assert res.exit_code == 0, res.output
    reference = generate_compare(srv.lm, [PROMPT], Steering().add(srv.saes["sae-h0"], 5, 150.0), seed=3, **SAMPLED)[0]
    expected = f"--- steered ---\n{reference.steered}\n--- unsteered (seed 3) ---\n{reference.unsteered}\n"
    assert res.output == expected
    bad = CliRunner().invoke(app, [*args, "--steer", "sae-h0:5:add"])
    assert bad.exit_code != 0 and "SAE:LATENT" in bad.output
