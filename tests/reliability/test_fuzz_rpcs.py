"""Hostile input: every RPC of every service driven with random, malformed messages (hypothesis) and with raw
garbage bytes. Every call ends with a deliberate status (never INTERNAL/UNKNOWN for a well-formed message), the
servers stay up, and a failed call leaves the artifact root and Redis exactly as they were."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis

from mi_crow.services.artifacts.server import start_artifact_server
from mi_crow.services.common.config import ServerConfig
from mi_crow.services.inference.server import start_inference_server
from mi_crow.v1 import artifacts_pb2, inference_pb2

pytestmark = pytest.mark.e2e

DELIBERATE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.DEADLINE_EXCEEDED,  # a request that asks for a lot of (bounded) work
}
NAMES = ["", "tiny", "transformer_h_0", "../etc", "a/b", "run-1", "sae-1", "job-1", "default", "x" * 200, "é\x00"]
LIKELY = {
    "model_id": ["tiny"],
    "layer": ["transformer_h_0", "transformer_h_1"],
    "layers": ["transformer_h_0"],
    "texts": ["the cat sat on the mat", "hello world"],
    "prompts": ["the cat sat on the mat", "hello world"],
    "prompt": ["the cat sat"],
    "kind": ["layer_activation_detector", "neuron_multiplier_controller", "model_output_detector"],
    "sae_class": ["TopKSae", "L1Sae"],
}
# Calls that create state on success, or hold the device for long, are fuzzed more lightly.
SLOW = {"SaveActivations", "StreamActivations", "GenerateStream", "Infer", "InferSae", "LoadSae"}


def _field(field: FieldDescriptor, depth: int) -> st.SearchStrategy:
    t = field.type
    if t == FieldDescriptor.TYPE_MESSAGE:
        if field.message_type.GetOptions().map_entry:
            key = _field(field.message_type.fields_by_name["key"], depth)
            value = _field(field.message_type.fields_by_name["value"], depth)
            return st.dictionaries(key, value, max_size=3)
        inner = _message(field.message_type, depth + 1)
    elif t == FieldDescriptor.TYPE_STRING:
        # Valid-looking values half the time, so calls get past the first check and into real work.
        likely = LIKELY.get(field.name, [])
        inner = (
            st.one_of(st.sampled_from(likely), st.sampled_from(NAMES), st.text(max_size=40))
            if likely
            else st.one_of(st.sampled_from(NAMES), st.text(max_size=40))
        )
    elif t == FieldDescriptor.TYPE_BYTES:
        inner = st.one_of(st.binary(max_size=64), st.just(b'{"0": "a"}'), st.just(b"latent,name\n0,a\n"))
    elif t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        inner = st.floats(allow_nan=True, allow_infinity=True, width=32 if t == FieldDescriptor.TYPE_FLOAT else 64)
    elif t == FieldDescriptor.TYPE_BOOL:
        inner = st.booleans()
    elif t == FieldDescriptor.TYPE_ENUM:
        inner = st.sampled_from([v.number for v in field.enum_type.values])
    elif t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64):
        inner = st.integers(0, 2**31)
    else:
        inner = st.one_of(st.integers(-3, 70), st.integers(-(2**31), 2**31 - 1))
    return st.lists(inner, max_size=3) if field.is_repeated else inner


def _message(descriptor, depth: int = 0) -> st.SearchStrategy:  # type: ignore[no-untyped-def]
    if depth > 2:
        return st.just({})
    return st.fixed_dictionaries({}, optional={f.name: _field(f, depth) for f in descriptor.fields})


def _build(cls, data: dict):  # type: ignore[no-untyped-def]
    message = cls()
    for name, value in data.items():
        field = message.DESCRIPTOR.fields_by_name[name]
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            target = getattr(message, name)
            value_field = field.message_type.fields_by_name["value"]
            for k, v in value.items():
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    target[k].CopyFrom(_build(target[k].__class__, v))
                else:
                    target[k] = v
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            sub_cls = getattr(message, name).__class__ if not field.is_repeated else None
            if field.is_repeated:
                for item in value:
                    getattr(message, name).add().CopyFrom(_build(getattr(message, name).add().__class__, item))
            else:
                getattr(message, name).CopyFrom(_build(sub_cls, value))
        elif field.is_repeated:
            getattr(message, name).extend(value)
        else:
            setattr(message, name, value)
    return message


def _snapshot(root: Path, redis: Redis) -> tuple:
    files = sorted(
        (str(p.relative_to(root)), p.stat().st_size)
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".health-")  # the health watch's transient probe file
    )
    keys = sorted(k for k in redis.keys("mi_crow:*") if not k.startswith(b"mi_crow:requeue"))
    return files, keys


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, gpt2_dir: Path, redis_server: str) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("fuzz")
    old = os.environ.get("MI_CROW_MODEL_ALIASES")
    os.environ["MI_CROW_MODEL_ALIASES"] = json.dumps({"tiny": str(gpt2_dir)})
    cfg = ServerConfig(port=0, redis_url=redis_server, artifact_root=root / "store", queue_name="fuzz-queue")
    artifacts = start_artifact_server(cfg)
    inference = start_inference_server(cfg)
    try:
        with grpc.insecure_channel(inference.address) as ch:
            ch.unary_unary(
                "/mi_crow.v1.InferenceService/LoadModel",
                request_serializer=inference_pb2.LoadModelRequest.SerializeToString,
                response_deserializer=inference_pb2.ModelInfo.FromString,
            )(inference_pb2.LoadModelRequest(model_id="tiny"), timeout=60)
        yield {
            "artifacts": artifacts,
            "inference": inference,
            "root": cfg.artifact_root,
            "redis": Redis.from_url(redis_server),
        }
    finally:
        artifacts.stop(0)
        inference.stop(0)
        if old is None:
            os.environ.pop("MI_CROW_MODEL_ALIASES", None)
        else:
            os.environ["MI_CROW_MODEL_ALIASES"] = old


LOAD = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].methods_by_name["LoadModel"]


def _methods() -> list[tuple[str, str, object]]:
    out = []
    for module, server in ((artifacts_pb2, "artifacts"), (inference_pb2, "inference")):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                out.append((server, f"/{service.full_name}/{method.name}", method))
    return out


def _call(channel: grpc.Channel, path: str, method, request: bytes) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    kind = channel.unary_stream if method.server_streaming else channel.unary_unary
    call = kind(path, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    try:
        result = call(request, timeout=20)
        if method.server_streaming:
            for _ in zip(range(3), result, strict=False):  # a few messages, then hang up
                pass
            result.cancel()
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()


@pytest.mark.parametrize(
    "server,path,method", _methods(), ids=lambda v: v.rsplit("/", 1)[-1] if isinstance(v, str) else ""
)
def test_random_messages_get_deliberate_statuses(servers: dict, server: str, path: str, method) -> None:  # type: ignore[no-untyped-def]
    from google.protobuf import message_factory

    request_cls = message_factory.GetMessageClass(method.input_type)
    n = 6 if method.name in SLOW else 25

    @settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)
    @given(_message(method.input_type))
    def run(data: dict) -> None:
        request = _build(request_cls, data)
        with grpc.insecure_channel(servers[server].address) as channel:
            before = _snapshot(servers["root"], servers["redis"])
            code = _call(channel, path, method, request.SerializeToString())
            assert code in DELIBERATE, f"{method.name}({request}) -> {code}"
            if code != grpc.StatusCode.OK:
                assert _snapshot(servers["root"], servers["redis"]) == before, f"{method.name} failed but changed state"

    with grpc.insecure_channel(servers["inference"].address) as channel:  # an earlier UnloadModel may have run
        _call(
            channel,
            "/mi_crow.v1.InferenceService/LoadModel",
            LOAD,
            inference_pb2.LoadModelRequest(model_id="tiny").SerializeToString(),
        )
    run()
    for name in ("artifacts", "inference"):
        with grpc.insecure_channel(servers[name].address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)
@given(st.sampled_from(_methods()), st.binary(min_size=1, max_size=256))
def test_garbage_bytes_never_take_a_server_down(servers: dict, target, payload: bytes) -> None:  # type: ignore[no-untyped-def]
    server, path, method = target
    with grpc.insecure_channel(servers[server].address) as channel:
        code = _call(channel, path, method, payload)
        assert isinstance(code, grpc.StatusCode)  # any status, but an answer
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
