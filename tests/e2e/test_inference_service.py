"""The inference server end to end: a real gRPC server on loopback, a real tiny GPT-2, the generated stubs."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import torch

from mi_crow.chunk_wire import stream_activations_call
from mi_crow.hooks import HOOK_KINDS, LayerActivationDetector
from mi_crow.language_model import LanguageModel, alias_table
from mi_crow.mechanistic.sae import SaeTrainer, TopKSae
from mi_crow.services.common.config import ServerConfig
from mi_crow.services.common.convert import chunk_to_tensor
from mi_crow.services.inference.server import start_inference_server
from mi_crow.services.inference.service import InferenceServicer
from mi_crow.store import LocalStore
from mi_crow.v1 import common_pb2, inference_pb2, inference_pb2_grpc

PROMPT = "the cat sat on the mat"
TEXTS = [
    "the cat sat on the mat",
    "a red dog runs very fast across the park",
    "blue sky",
    "green grass grows under the warm sun in spring",
    "numbers one two three four",
    "she ate an apple and a pear",
] * 4
LAYERS = ["transformer_h_0", "transformer_h_1_mlp"]


@dataclass
class Server:
    stub: inference_pb2_grpc.InferenceServiceStub
    servicer: InferenceServicer
    lm: LanguageModel  # the same checkpoint loaded in this process, as the reference
    root: Path
    data: Path
    channel: grpc.Channel


@pytest.fixture
def srv(tmp_path: Path, gpt2_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setenv("MI_CROW_MODEL_ALIASES", json.dumps({"tiny": str(gpt2_dir)}))
    data = tmp_path / "data"
    data.mkdir()
    cfg = ServerConfig(port=0, artifact_root=tmp_path / "store", dataset_roots=[data])
    servicer = InferenceServicer(cfg)
    running = start_inference_server(cfg, servicer)
    channel = grpc.insecure_channel(running.address)
    stub = inference_pb2_grpc.InferenceServiceStub(channel)
    stub.LoadModel(inference_pb2.LoadModelRequest(model_id="tiny"))
    lm = LanguageModel("tiny", store=LocalStore(tmp_path / "store"))
    try:
        yield Server(stub, servicer, lm, servicer.store.root, data, channel)
    finally:
        channel.close()
        running.stop(0)


def status(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    return info.value.code(), info.value.details()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def infer_input(prompt: str = PROMPT, **kwargs: object) -> inference_pb2.InferInput:
    return inference_pb2.InferInput(prompt=prompt, **kwargs)


def texts_spec(texts: list[str]) -> common_pb2.DatasetSpec:
    return common_pb2.DatasetSpec(texts=texts)


# -- models, layers, hooks ---------------------------------------------------------------------------


def test_models_layers_and_hooks(srv: Server, gpt2_dir: Path):
    models = {m.model_id: m for m in srv.stub.ListModels(inference_pb2.ListModelsRequest()).models}
    tiny = models["tiny"]
    assert tiny.loaded and tiny.source == str(gpt2_dir) and tiny.device == "cpu" and tiny.dtype == "float32"
    assert set(models) == set(alias_table()) and sum(m.loaded for m in models.values()) == 1  # listed, not loaded
    again = srv.stub.LoadModel(inference_pb2.LoadModelRequest(model_id="tiny", dtype="float32"))
    assert again.loaded and len(srv.servicer.pool.loaded()) == 1  # idempotent
    code, msg = status(lambda: srv.stub.LoadModel(inference_pb2.LoadModelRequest(model_id="tiny", dtype="bfloat16")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "unload it first" in msg

    layers = {
        layer.name: layer for layer in srv.stub.ListLayers(inference_pb2.ListLayersRequest(model_id="tiny")).layers
    }
    assert [info.name for info in srv.lm.layers()] == list(layers)
    block = layers["transformer_h_0"]
    assert block.path == "transformer.h.0" and block.type == "GPT2Block" and block.hidden_size == 64
    assert list(block.output_shape)[-1] == 64
    assert list(srv.stub.ListHooks(inference_pb2.ListHooksRequest()).kinds) == sorted(HOOK_KINDS)

    assert not srv.stub.UnloadModel(inference_pb2.UnloadModelRequest(model_id="tiny")).loaded
    code, msg = status(lambda: srv.stub.Infer(inference_pb2.InferRequest(model_id="tiny", inputs=[infer_input()])))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "call LoadModel first" in msg
    assert srv.stub.LoadModel(inference_pb2.LoadModelRequest(model_id="tiny")).loaded


# -- Infer ---------------------------------------------------------------------------------------------


def test_infer_returns_real_logits_probabilities_tokens_and_activations(srv: Server):
    hooks = [
        inference_pb2.HookSpec(kind="layer_activation_detector", layer="transformer_h_0"),
        inference_pb2.HookSpec(kind="model_input_detector"),
        inference_pb2.HookSpec(kind="model_output_detector"),
    ]
    returns = inference_pb2.ReturnOptions(logits=True, tokens=True, activations=True, probabilities=True)
    response = srv.stub.Infer(
        inference_pb2.InferRequest(model_id="tiny", inputs=[infer_input(hooks=hooks, returns=returns)])
    )
    (out,) = response.outputs

    detector = LayerActivationDetector("transformer_h_0")
    with srv.lm.hooks.attached(detector):
        ref = srv.lm.forwards([PROMPT])
    n = ref.input_ids.shape[1]
    expected_logits = ref.logits[0, -1]
    logits = chunk_to_tensor(out.logits)
    assert logits.shape == expected_logits.shape and torch.allclose(logits, expected_logits, atol=1e-5)
    top = torch.topk(torch.softmax(expected_logits, -1), 10)
    assert [p.token_id for p in out.probabilities] == top.indices.tolist()
    assert [p.probability for p in out.probabilities] == pytest.approx(top.values.tolist(), abs=1e-6)
    assert list(out.token_ids) == ref.input_ids[0].tolist() and len(out.tokens) == n
    assert out.text == "" and out.seconds > 0

    layer, inputs, output = out.hooks
    assert (layer.kind, layer.layer, list(layer.shape)) == ("layer_activation_detector", "transformer_h_0", [1, n, 64])
    acts = chunk_to_tensor(layer.activations)
    assert torch.allclose(acts, detector.activations[0], atol=1e-5)
    assert list(layer.activations.token_ids) == list(out.token_ids)
    assert list(layer.activations.positions) == list(range(n))
    assert list(inputs.shape) == [1, n] and list(output.shape) == [1, n, len(srv.lm.tokenizer)]
    assert not inputs.HasField("activations")  # only layer detectors send tensors


def test_compare_mode_generation_and_neuron_multiplier(srv: Server):
    generation = inference_pb2.GenerationOptions(max_new_tokens=6)
    returns = inference_pb2.ReturnOptions(logits=True, tokens=True)
    boost = inference_pb2.HookSpec(
        kind="neuron_multiplier_controller", layer="transformer.h.1", factors={0: 60.0, 7: -40.0, 33: 25.0}
    )
    plain, boosted = srv.stub.Infer(
        inference_pb2.InferRequest(
            model_id="tiny",
            inputs=[
                infer_input(generation=generation, returns=returns),
                infer_input(generation=generation, returns=returns, hooks=[boost]),
            ],
        )
    ).outputs

    expected = srv.lm.generate([PROMPT], max_new_tokens=6)
    assert plain.text == expected.texts[0]
    n_prompt = len(srv.lm.tokenizer(PROMPT)["input_ids"])
    assert list(plain.token_ids)[n_prompt:] == expected.new_tokens[0]
    assert torch.allclose(chunk_to_tensor(plain.logits), srv.lm.forwards([PROMPT]).logits[0, -1], atol=1e-5)
    assert not torch.allclose(chunk_to_tensor(plain.logits), chunk_to_tensor(boosted.logits), atol=1e-3)
    (multiplier,) = boosted.hooks
    assert multiplier.kind == "neuron_multiplier_controller" and multiplier.layer == "transformer_h_1"
    assert multiplier.shape[-1] == 64
    assert srv.lm.hooks.torch_handle_count() == 0 and srv.servicer.pool.get("tiny").hooks.torch_handle_count() == 0


def test_generate_stream_yields_the_greedy_text_token_by_token(srv: Server):
    generation = inference_pb2.GenerationOptions(max_new_tokens=12)
    events = list(
        srv.stub.GenerateStream(inference_pb2.GenerateRequest(model_id="tiny", prompt=PROMPT, generation=generation))
    )
    assert events[-1].done and all(not e.done for e in events[:-1])
    (unary,) = srv.stub.Infer(
        inference_pb2.InferRequest(
            model_id="tiny",
            inputs=[infer_input(generation=generation, returns=inference_pb2.ReturnOptions(tokens=True))],
        )
    ).outputs
    n_prompt = len(srv.lm.tokenizer(PROMPT)["input_ids"])
    assert [e.token_id for e in events[:-1]] == list(unary.token_ids)[n_prompt:]
    assert "".join(e.text for e in events) == unary.text

    seeded = inference_pb2.GenerationOptions(max_new_tokens=8, do_sample=True, temperature=1.5, seed=7)
    request = inference_pb2.GenerateRequest(model_id="tiny", prompt=PROMPT, generation=seeded)
    first, second = ([e.token_id for e in srv.stub.GenerateStream(request)] for _ in range(2))
    assert first == second  # the same seed samples the same tokens

    long = inference_pb2.GenerateRequest(
        model_id="tiny", prompt=PROMPT, generation=inference_pb2.GenerationOptions(max_new_tokens=110)
    )
    before = srv.servicer.stats.get("generated_tokens")
    stream = srv.stub.GenerateStream(long)
    next(stream)
    stream.cancel()
    wait_until(lambda: not srv.servicer.pool.gate.busy)
    assert srv.servicer.stats.get("generated_tokens") - before < 55  # the model stopped with the client

    nothing = inference_pb2.GenerateRequest(model_id="tiny", prompt=PROMPT)
    assert [(e.done, e.text) for e in srv.stub.GenerateStream(nothing)] == [(True, "")]


def test_concurrent_requests_queue_for_the_device_without_disturbing_each_other(srv: Server):
    # A stream releases the device between batches, so these Infers run in its gaps; every answer must
    # still be exactly what each request gets alone.
    hook = inference_pb2.HookSpec(kind="layer_activation_detector", layer="transformer_h_1")
    returns = inference_pb2.ReturnOptions(logits=True, activations=True)
    request = inference_pb2.InferRequest(model_id="tiny", inputs=[infer_input(hooks=[hook], returns=returns)])
    stream = srv.stub.StreamActivations(
        inference_pb2.StreamActivationsRequest(
            model_id="tiny", layers=["transformer_h_0"], dataset=texts_spec(TEXTS * 3), batch_size=1
        )
    )
    calls = [srv.stub.Infer.future(request) for _ in range(6)]
    chunks = list(stream)
    expected = srv.lm.forwards([PROMPT]).logits[0, -1]
    for call in calls:
        (out,) = call.result(timeout=30).outputs
        assert torch.allclose(chunk_to_tensor(out.logits), expected, atol=1e-5)
        assert chunk_to_tensor(out.hooks[0].activations).shape[0] == len(srv.lm.tokenizer(PROMPT)["input_ids"])
    got = torch.cat([chunk_to_tensor(c) for c in chunks])
    assert torch.allclose(got, reference_rows(srv.lm, TEXTS * 3, "transformer_h_0", 1), atol=1e-5)


# -- activations -------------------------------------------------------------------------------------


def reference_rows(lm: LanguageModel, texts: list[str], layer: str, batch_size: int) -> torch.Tensor:
    rows = []
    for start in range(0, len(texts), batch_size):
        detector = LayerActivationDetector(layer)
        with lm.hooks.attached(detector):
            out = lm.forwards(texts[start : start + batch_size])
        rows.append(detector.activations[out.attention_mask.bool()])
    return torch.cat(rows)


def test_stream_activations_match_in_process_forwards(srv: Server):
    texts = TEXTS[:10]
    request = inference_pb2.StreamActivationsRequest(
        model_id="tiny", layers=LAYERS, dataset=texts_spec(texts), batch_size=4, chunk_rows=7
    )
    chunks = list(srv.stub.StreamActivations(request))  # parsed by protobuf, as any generated client does
    assert [c.sequence for c in chunks] == list(range(len(chunks)))
    received = list(stream_activations_call(srv.channel)(request))  # mi-crow's zero-copy reader
    assert [bytes(c.data) for c in received] == [c.data for c in chunks]
    for mine, theirs in zip(received, chunks, strict=True):
        meta = common_pb2.TensorChunk()
        meta.CopyFrom(theirs)
        meta.ClearField("data")
        assert mine.meta == meta
    assert [c.last for c in chunks] == [False] * (len(chunks) - 1) + [True]

    enc = srv.lm.tokenize(texts)
    mask = enc["attention_mask"].bool()
    for layer in LAYERS:
        mine = [c for c in chunks if c.layer == layer]
        assert all(c.shape[0] <= 7 for c in mine)
        got = torch.cat([chunk_to_tensor(c) for c in mine])
        assert torch.allclose(got, reference_rows(srv.lm, texts, layer, 4), atol=1e-5)
        assert [t for c in mine for t in c.token_ids] == enc["input_ids"][mask].tolist()
        expected_samples = torch.arange(len(texts))[:, None].expand_as(mask)[mask].tolist()
        assert [s for c in mine for s in c.sample_index] == expected_samples
        assert [p for c in mine for p in c.positions] == torch.arange(mask.shape[1]).expand_as(mask)[mask].tolist()

    (srv.data / "corpus.txt").write_text("\n".join(texts[:3]) + "\n")
    from_file = inference_pb2.StreamActivationsRequest(
        model_id="tiny",
        layers=["transformer_h_0"],
        dataset=common_pb2.DatasetSpec(paths=[str(srv.data / "corpus.txt")]),
    )
    got = torch.cat([chunk_to_tensor(c) for c in srv.stub.StreamActivations(from_file)])
    assert torch.allclose(got, reference_rows(srv.lm, texts[:3], "transformer_h_0", 16), atol=1e-5)


def test_cancelled_stream_stops_the_forward_passes(srv: Server):
    n_texts = 400
    request = inference_pb2.StreamActivationsRequest(
        model_id="tiny", layers=["transformer_h_1"], dataset=texts_spec(TEXTS * (n_texts // len(TEXTS) + 1))
    )
    request.dataset.sample_limit = n_texts
    request.batch_size = 1
    stream = srv.stub.StreamActivations(request)
    next(stream)
    stream.cancel()
    wait_until(lambda: srv.servicer.stats.get("streams_stopped") == 1)
    done = srv.servicer.stats.get("stream_batches")
    time.sleep(0.3)
    assert srv.servicer.stats.get("stream_batches") == done < n_texts // 2  # stopped, and long before the end
    assert srv.servicer.pool.gate.waiting == 0
    srv.stub.Infer(inference_pb2.InferRequest(model_id="tiny", inputs=[infer_input()]), timeout=10)  # device free


def test_save_activations_is_idempotent_and_redoes_failed_runs(srv: Server):
    request = inference_pb2.SaveActivationsRequest(
        model_id="tiny", layers=LAYERS, dataset=texts_spec(TEXTS[:8]), batch_size=3, shard_size=16, run_id="run-a"
    )
    first = srv.stub.SaveActivations(request)
    manifest = srv.root / first.manifest_path
    assert manifest.is_file() and first.run_id == "run-a" and first.manifest_path.endswith("run-a/manifest.json")
    n_tokens = int(srv.lm.tokenize(TEXTS[:8])["attention_mask"].sum())
    assert (first.n_tokens, first.n_samples, list(first.layers)) == (n_tokens, 8, LAYERS)
    assert first.n_shards == -(-n_tokens // 16)
    stamp = manifest.stat().st_mtime_ns

    assert srv.stub.SaveActivations(request) == first
    assert manifest.stat().st_mtime_ns == stamp  # returned as stored, not recomputed

    data = json.loads(manifest.read_text())
    data["status"] = "failed"
    manifest.write_text(json.dumps(data))
    redone = srv.stub.SaveActivations(request)
    assert redone == first and json.loads(manifest.read_text())["status"] == "complete"

    fresh = srv.stub.SaveActivations(
        inference_pb2.SaveActivationsRequest(model_id="tiny", layers=LAYERS[:1], dataset=texts_spec(TEXTS[:2]))
    )
    assert fresh.run_id.startswith("run-") and fresh.run_id != "run-a" and fresh.n_samples == 2


# -- SAEs ----------------------------------------------------------------------------------------------


def test_infer_sae_latents_top_texts_and_steering(srv: Server):
    run = srv.stub.SaveActivations(
        inference_pb2.SaveActivationsRequest(model_id="tiny", layers=["transformer_h_0"], dataset=texts_spec(TEXTS * 2))
    )
    trainer = SaeTrainer(
        srv.lm,
        "transformer_h_0",
        TopKSae,
        {"epochs": 2, "batch_size": 64, "k": 4},
        store=LocalStore(srv.root),
        progress=False,
    )
    sae = trainer.train(run.run_id)
    info = srv.stub.LoadSae(common_pb2.SaeRef(model_id="tiny", sae_id=sae.id))
    assert (info.sae_id, info.layer, info.sae_class, info.d_in) == (sae.id, "transformer_h_0", "TopKSae", 64)
    assert json.loads(info.metadata_json)["n_latents"] == info.n_latents == sae.n_latents
    code, _ = status(lambda: srv.stub.LoadSae(common_pb2.SaeRef(model_id="tiny", sae_id="no-such-sae")))
    assert code == grpc.StatusCode.NOT_FOUND

    # Name the prompt's strongest latent in-process; the server reads the dictionary per request.
    concepts = srv.lm.load_concepts(sae.id)
    with torch.inference_mode():
        codes = concepts.sae.encode(srv.lm.forwards([PROMPT], output_hidden_states=True).hidden_states[1][0])
    strongest = int(codes.max(0).values.argmax())
    concepts.name(strongest, "cats")
    concepts.save_dictionary()

    response = srv.stub.InferSae(
        inference_pb2.InferSaeRequest(
            model_id="tiny",
            sae_id=sae.id,
            prompts=[PROMPT, "blue sky"],
            top_k_neurons=3,
            return_token_latents=True,
            save_top_texts=True,
            max_new_tokens=4,
        )
    )
    assert response.sae.sae_id == sae.id
    first = response.outputs[0]
    assert first.prompt == PROMPT and first.text == srv.lm.generate([PROMPT], max_new_tokens=4).texts[0]
    assert first.top_latents[0].latent == strongest and first.top_latents[0].name == "cats"
    assert first.top_latents[0].activation == pytest.approx(float(codes.max()), rel=1e-4)
    acts = [a.activation for a in first.top_latents]
    assert 1 <= len(acts) <= 3 and acts == sorted(acts, reverse=True) and all(a > 0 for a in acts)
    n_prompt = codes.shape[0]
    n_new = len(srv.lm.generate([PROMPT], max_new_tokens=4).new_tokens[0])
    assert [t.position for t in first.token_latents] == list(range(n_prompt + n_new))
    for position in range(n_prompt):
        strongest_here = float(codes[position].max())
        found = first.token_latents[position].latents
        assert found[0].activation == pytest.approx(strongest_here, rel=1e-4) if strongest_here > 0 else not found
    top_texts = srv.root / response.top_texts_path
    assert top_texts.is_file() and json.loads(top_texts.read_text())["sae_id"] == sae.id

    def steered_text(**steer: object) -> str:
        request = inference_pb2.InferSaeRequest(
            model_id="tiny", sae_id=sae.id, prompts=[PROMPT], max_new_tokens=8, **steer
        )
        return srv.stub.InferSae(request).outputs[0].text

    plain = steered_text()
    inline = steered_text(edits={strongest: common_pb2.LatentEdit(scale=200.0)})
    assert inline != plain
    concepts.manipulate(strongest, 200.0)
    concepts.save_config("strong")
    assert steered_text(concept_config="strong") == inline
    code, msg = status(lambda: steered_text(concept_config="missing"))
    assert code == grpc.StatusCode.NOT_FOUND and "strong" in msg
    code, _ = status(lambda: steered_text(edits={10_000: common_pb2.LatentEdit(scale=2.0)}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


# -- bad requests ----------------------------------------------------------------------------------------


def test_bad_requests_get_precise_codes(srv: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    stub = srv.stub

    def infer(*inputs: inference_pb2.InferInput, model: str = "tiny") -> Callable[[], object]:
        return lambda: stub.Infer(inference_pb2.InferRequest(model_id=model, inputs=list(inputs)))

    def stream(layers: list[str], dataset: common_pb2.DatasetSpec) -> Callable[[], object]:
        return lambda: stub.StreamActivations(
            inference_pb2.StreamActivationsRequest(model_id="tiny", layers=layers, dataset=dataset)
        )

    code, msg = status(infer(infer_input(), model="org/not-loaded"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "not loaded" in msg
    for path in (str(tmp_path), "/etc"):
        assert status(lambda p=path: stub.LoadModel(inference_pb2.LoadModelRequest(model_id=p)))[0] == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert status(infer(infer_input(), model=path))[0] == grpc.StatusCode.PERMISSION_DENIED
    assert status(lambda: stub.LoadModel(inference_pb2.LoadModelRequest(model_id="nonsense")))[0] == (
        grpc.StatusCode.NOT_FOUND
    )
    assert status(infer(infer_input(), model="nonsense"))[0] == grpc.StatusCode.NOT_FOUND
    assert status(infer(infer_input(), model=""))[0] == grpc.StatusCode.INVALID_ARGUMENT

    code, msg = status(stream(["transformer_h_9"], texts_spec(["hi there"])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "transformer_h_0" in msg  # a close match
    for empty in (texts_spec(["", "   "]), common_pb2.DatasetSpec()):
        assert status(stream(["transformer_h_0"], empty))[0] == grpc.StatusCode.INVALID_ARGUMENT
    outside = common_pb2.DatasetSpec(paths=[str(tmp_path / "elsewhere.txt")])
    assert status(stream(["transformer_h_0"], outside))[0] == grpc.StatusCode.PERMISSION_DENIED

    code, msg = status(infer(infer_input(), infer_input(), infer_input()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "at most 2" in msg
    bad_hooks = [
        inference_pb2.HookSpec(kind="no_such_hook", layer="transformer_h_0"),
        inference_pb2.HookSpec(kind="layer_activation_detector"),
        inference_pb2.HookSpec(kind="neuron_multiplier_controller", layer="transformer_h_0", factors={64: 2.0}),
    ]
    for hook in bad_hooks:
        assert status(infer(infer_input(hooks=[hook])))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert status(infer(infer_input(prompt="")))[0] == grpc.StatusCode.INVALID_ARGUMENT

    save = inference_pb2.SaveActivationsRequest(
        model_id="tiny", layers=["transformer_h_0"], dataset=texts_spec(["hi"]), run_id="../x"
    )
    assert status(lambda: stub.SaveActivations(save))[0] == grpc.StatusCode.INVALID_ARGUMENT

    many = inference_pb2.InferSaeRequest(model_id="tiny", sae_id="any", prompts=["x"] * 65)
    code, msg = status(lambda: stub.InferSae(many))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "64" in msg

    gate = srv.servicer.pool.gate
    configured, gate.max_queued = gate.max_queued, 0  # reconfigure the real gate: nobody may queue
    try:
        with gate.hold():  # the device is busy
            code, msg = status(infer(infer_input()))
    finally:
        gate.max_queued = configured
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "MI_CROW_MAX_QUEUED" in msg
