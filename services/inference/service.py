"""``InferenceService``: the gRPC face of the model pool. Errors are raised; ``@servicer`` maps them."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch

from mi_crow.hooks import HOOK_KINDS, Detector
from mi_crow.language_model import LanguageModel
from mi_crow.mechanistic.steering import Steering
from mi_crow.services.common.config import ServerConfig
from mi_crow.services.common.convert import dataset_from_spec, tensor_to_chunk
from mi_crow.services.common.errors import servicer
from mi_crow.services.inference import limits
from mi_crow.services.inference.activations import save_response, save_run, stream_chunks
from mi_crow.services.inference.evaluation import evaluate
from mi_crow.services.inference.generation import TextDelta, prompt_ids, sampling, stream_tokens
from mi_crow.services.inference.hooks import build_hooks, hook_results
from mi_crow.services.inference.models import ModelPool
from mi_crow.services.inference.sae import DEFAULT_TOP_K, info, run_prompt, save_top_texts, steering
from mi_crow.services.inference.steering import build_steering, comparable
from mi_crow.services.inference.streams import StreamLimiter
from mi_crow.store import LocalStore
from mi_crow.v1 import inference_pb2, inference_pb2_grpc

log = logging.getLogger("mi_crow.services.inference")


class Stats:
    """Work counters, so operators (and tests) can see what the server actually computed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def get(self, key: str) -> int:
        with self._lock:
            return self._counts[key]


def _model_info(model_id: str, source: str, lm: LanguageModel | None) -> inference_pb2.ModelInfo:
    return inference_pb2.ModelInfo(
        model_id=model_id,
        source=lm.source if lm is not None else source,
        loaded=lm is not None,
        device=str(lm.device) if lm is not None else "",
        dtype=str(lm.dtype).removeprefix("torch.") if lm is not None else "",
    )


def _infer_one(lm: LanguageModel, item: inference_pb2.InferInput, steer: Steering) -> inference_pb2.InferOutput:
    """Hooks see the prompt's forward pass; controllers and steering also act on every generation step."""
    start = time.perf_counter()
    options = comparable(sampling(item.generation), item.compare_unsteered)
    ids = prompt_ids(lm, item.prompt, options.max_new_tokens)
    hooks = build_hooks(lm, item.hooks)
    returns = item.returns
    out = inference_pb2.InferOutput()
    with lm.hooks.attached(*hooks):
        with steer.applied(lm):
            forward = lm.forwards([item.prompt])
            last = int(forward.attention_mask[0].sum()) - 1
            logits = forward.logits[0, last].float()
            new_ids: list[int] = []
            if options.max_new_tokens > 0:
                # Detectors keep what they saw on the prompt; during decoding they would see one token at a time.
                with lm.hooks.switched_off(Detector):
                    gen = lm.generate([item.prompt], **options.lm_kwargs())
                out.text, new_ids = gen.texts[0], gen.new_tokens[0]
        if item.compare_unsteered:
            out.seed = options.seed or 0
            if options.max_new_tokens > 0:
                with lm.hooks.switched_off(Detector):
                    plain = lm.generate([item.prompt], **options.lm_kwargs())
                out.unsteered_text = plain.texts[0]
                out.unsteered_token_ids.extend(plain.new_tokens[0])
    if returns.logits:
        out.logits.CopyFrom(tensor_to_chunk(logits, last=True))
    if returns.top_probabilities < 0:
        raise ValueError(f"top_probabilities must not be negative, got {returns.top_probabilities}")
    if returns.probabilities:
        top = torch.topk(torch.softmax(logits, dim=-1), min(returns.top_probabilities or 10, logits.shape[-1]))
        out.probabilities.extend(
            inference_pb2.TokenProbability(token_id=i, token=lm.tokenizer.decode([i]), probability=p)
            for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        )
    if returns.tokens:
        out.token_ids.extend(ids + new_ids)
        out.tokens.extend(lm.tokenizer.decode([t]) for t in ids + new_ids)
    out.hooks.extend(hook_results(hooks, ids, returns.activations))
    out.seconds = time.perf_counter() - start
    return out


@servicer
class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, cfg: ServerConfig, pool: ModelPool | None = None) -> None:
        self.cfg = cfg
        self.store = LocalStore(cfg.artifact_root)
        self.pool = pool or ModelPool(self.store)
        self.dataset_roots = [Path(root).expanduser().resolve() for root in cfg.dataset_roots]
        self.stats = Stats()
        self.streams = StreamLimiter()

    # -- models --------------------------------------------------------------------------------------
    def ListModels(self, request, context):
        loaded = self.pool.loaded()
        models = [_model_info(alias, src, loaded.get(alias)) for alias, src in sorted(self.pool.aliases.items())]
        models += [
            _model_info(mid, lm.source, lm) for mid, lm in sorted(loaded.items()) if mid not in self.pool.aliases
        ]
        return inference_pb2.ListModelsResponse(models=models)

    def LoadModel(self, request, context):
        lm = self.pool.load(request.model_id, dtype=request.dtype or None, device=request.device or None)
        log.info("model %s loaded from %s on %s", request.model_id, lm.source, lm.device)
        return _model_info(request.model_id, lm.source, lm)

    def UnloadModel(self, request, context):
        source = self.pool.source(request.model_id)
        if self.pool.unload(request.model_id):
            log.info("model %s unloaded", request.model_id)
        return _model_info(request.model_id, source, None)

    def ListLayers(self, request, context):
        lm = self.pool.get(request.model_id)
        with self.pool.gate.hold(context.is_active):
            layers = lm.layers()  # the first call probes shapes with a forward pass
        return inference_pb2.ListLayersResponse(
            layers=[
                inference_pb2.LayerInfo(
                    name=layer.name,
                    path=layer.path,
                    type=layer.type,
                    output_shape=list(layer.output_shape or ()),
                    hidden_size=layer.hidden_size or 0,
                )
                for layer in layers
            ]
        )

    def ListHooks(self, request, context):
        return inference_pb2.ListHooksResponse(kinds=sorted(HOOK_KINDS))

    # -- running -------------------------------------------------------------------------------------
    def Infer(self, request, context):
        limits.check_inputs(len(request.inputs))
        lm = self.pool.get(request.model_id)
        # Both inputs of compare mode run back to back on the device, so nothing changes in between.
        with self.pool.gate.hold(context.is_active):
            outputs = [
                _infer_one(lm, item, build_steering(self.pool, request.model_id, item.steering))
                for item in request.inputs
            ]
        response = inference_pb2.InferResponse(outputs=outputs)
        limits.check_response_bytes(
            response.ByteSize(), "the response", "ask for fewer activations, or stream them with StreamActivations"
        )
        return response

    def GenerateStream(self, request, context) -> Iterator[inference_pb2.GenerateEvent]:
        lm = self.pool.get(request.model_id)
        options = comparable(sampling(request.generation), request.compare_unsteered)
        decoder = TextDelta(lm)
        done = inference_pb2.GenerateEvent(done=True)
        # The device stays held between tokens: the KV cache of this generation lives on it. The tokenizer is
        # used only under the gate too: a fast tokenizer shared by threads fails with "Already borrowed".
        # Holding it also keeps other requests off the model while the steering hooks are on it.
        with self.streams.open(context), self.pool.gate.hold(context.is_active):
            prompt_ids(lm, request.prompt, options.max_new_tokens)
            steer = build_steering(self.pool, request.model_id, request.steering)
            if options.max_new_tokens > 0:
                with steer.applied(lm):
                    for token in stream_tokens(lm, request.prompt, options, context.is_active):
                        self.stats.add("generated_tokens")
                        yield inference_pb2.GenerateEvent(token_id=token, text=decoder.push(token))
            done.text = decoder.flush()
            if request.compare_unsteered:
                done.seed = options.seed or 0
                if options.max_new_tokens > 0:
                    plain = list(stream_tokens(lm, request.prompt, options, context.is_active))
                    done.unsteered_token_ids.extend(plain)
                    done.unsteered_text = lm.tokenizer.decode(plain, skip_special_tokens=True)
        yield done

    def StreamActivations(self, request, context) -> Iterator[bytes]:  # serialized TensorChunks (server.py)
        lm = self.pool.get(request.model_id)
        texts = dataset_from_spec(request.dataset, self.dataset_roots)
        if request.max_length < 0:
            raise ValueError(f"max_length must not be negative, got {request.max_length}")
        with self.streams.open(context):
            self.stats.add("streams_started")
            finished = False
            try:
                yield from stream_chunks(
                    lm,
                    texts,
                    list(request.layers),
                    gate=self.pool.gate,
                    is_active=context.is_active,
                    batch_size=limits.batch_size(request.batch_size),
                    chunk_rows=request.chunk_rows,
                    max_length=request.max_length or None,
                    on_batch=lambda: self.stats.add("stream_batches"),
                )
                finished = context.is_active()
            finally:
                self.stats.add("streams_finished" if finished else "streams_stopped")

    def SaveActivations(self, request, context):
        lm = self.pool.get(request.model_id)
        texts = dataset_from_spec(request.dataset, self.dataset_roots)
        if not request.layers:
            raise ValueError("no layers given to harvest")
        if request.max_length < 0:
            raise ValueError(f"max_length must not be negative, got {request.max_length}")
        batch_size = limits.batch_size(request.batch_size)
        with self.pool.gate.hold(context.is_active):
            run = save_run(
                lm,
                self.store,
                texts,
                list(request.layers),
                run_id=request.run_id or None,
                batch_size=batch_size,
                shard_size=request.shard_size or None,
                max_length=request.max_length or None,
                is_active=context.is_active,  # a cancelled or expired call stops the forward passes
            )
        return save_response(run, self.store)

    # -- SAEs ----------------------------------------------------------------------------------------
    def LoadSae(self, request, context):
        with self.pool.gate.hold(context.is_active):
            concepts = self.pool.concepts(request.model_id, request.sae_id)
        return info(concepts)

    def InferSae(self, request, context):
        limits.check_texts(len(request.prompts))
        options = sampling(inference_pb2.GenerationOptions(max_new_tokens=request.max_new_tokens))
        top_k = request.top_k_neurons or DEFAULT_TOP_K
        if top_k < 0:
            raise ValueError(f"top_k_neurons must not be negative, got {top_k}")
        response = inference_pb2.InferSaeResponse()
        with self.pool.gate.hold(context.is_active):
            concepts = self.pool.concepts(request.model_id, request.sae_id)
            steer = steering(concepts, request)
            for prompt in request.prompts:
                response.outputs.append(
                    run_prompt(
                        concepts,
                        prompt,
                        top_k=top_k,
                        token_latents=request.return_token_latents,
                        max_new_tokens=options.max_new_tokens,
                        steer=steer,
                    )
                )
            if request.save_top_texts:
                response.top_texts_path = save_top_texts(concepts, request.prompts, self.store.root)
        response.sae.CopyFrom(info(concepts))
        limits.check_response_bytes(response.ByteSize(), "the response", "send fewer prompts per request")
        return response

    def EvaluateSae(self, request, context):
        texts = dataset_from_spec(request.dataset, self.dataset_roots)
        response = evaluate(self.pool, request, texts, context.is_active)
        self.stats.add("evaluations")
        return response
