"""The inference-server registry: servers register with a heartbeat and leave on stop; a server that stops
beating expires; readers get the best server for a model first; the artifact service lists them over gRPC."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest
import redis

from mi_crow.client import Client
from mi_crow.services.artifacts.server import start_artifact_server
from mi_crow.services.common.config import ServerConfig
from mi_crow.services.common.registry import (
    PREFIX,
    Registration,
    ServerRecord,
    advertised_address,
    interval_from_env,
    list_servers,
    rank_addresses,
)
from mi_crow.services.inference.server import start_inference_server
from mi_crow.v1 import artifacts_pb2, artifacts_pb2_grpc, inference_pb2, inference_pb2_grpc


@pytest.fixture
def registry_url(redis_server: str) -> str:
    url = redis_server.rsplit("/", 1)[0] + "/7"  # a database of its own: other tests share the server
    redis.Redis.from_url(url).flushdb()
    return url


def _record(server_id: str, **kw: object) -> ServerRecord:
    return ServerRecord(server_id=server_id, address=f"{server_id}:1", available_models=["tiny"], **kw)  # type: ignore[arg-type]


def _wait_until(predicate, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, what
        time.sleep(0.05)


def test_ranking_prefers_serving_then_loaded_then_least_loaded(registry_url: str):
    r = redis.Redis.from_url(registry_url)
    records = [
        _record("busy-loaded", loaded_models=["tiny"], queue_depth=3, busy=True),
        _record("idle-loaded", loaded_models=["tiny"]),
        _record("idle-cold"),
        _record("sick-loaded", loaded_models=["tiny"], serving=False),
        ServerRecord(server_id="other", address="other:1", available_models=["big"], hub_ids=False),
    ]
    for rec in records:
        r.set(PREFIX + rec.server_id, rec.to_json(), ex=60)
    r.set(PREFIX + "garbage", b"not json", ex=60)  # a malformed entry is skipped, not fatal
    ranked = [s.server_id for s in list_servers(r, "tiny")]
    assert ranked == ["idle-loaded", "busy-loaded", "idle-cold", "sick-loaded"]
    assert [s.server_id for s in list_servers(r, "big")] == ["other"]
    assert "other" not in [s.server_id for s in list_servers(r, "org/hub-model")]  # it fetches no hub ids
    assert len(list_servers(r)) == 5
    # Workers dial serving servers best first, then their configured fallback.
    assert rank_addresses(r, "tiny", "fallback:9") == ["idle-loaded:1", "busy-loaded:1", "idle-cold:1", "fallback:9"]
    assert rank_addresses(None, "tiny", "fallback:9") == ["fallback:9"]


def test_heartbeat_renews_and_a_silent_server_expires(registry_url: str):
    r = redis.Redis.from_url(registry_url)
    beats: list[int] = []
    reg = Registration(r, _record("beating"), lambda rec: beats.append(1), every_s=0.1, ttl_s=0.5)
    reg.start()
    _wait_until(lambda: len(beats) >= 8, "heartbeat did not renew the entry")
    assert [s.server_id for s in list_servers(r)] == ["beating"]  # alive well past its 0.5 s TTL
    reg.stopped.set()  # beats stop, as when the process dies: the entry must expire on its own
    _wait_until(lambda: not list_servers(r), "a silent server stayed registered")
    reg2 = Registration(r, _record("leaving"), lambda rec: None, every_s=0.1, ttl_s=60)
    reg2.start()
    assert [s.server_id for s in list_servers(r)] == ["leaving"]
    reg2.stop()
    assert list_servers(r) == []  # a clean stop leaves at once, not after the 60 s TTL


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MI_CROW_REGISTRY_HEARTBEAT_S", "0.5")
    monkeypatch.setenv("MI_CROW_REGISTRY_TTL_S", "2")
    assert interval_from_env() == (0.5, 2.0)
    monkeypatch.setenv("MI_CROW_REGISTRY_TTL_S", "0.4")
    with pytest.raises(ValueError, match="MI_CROW_REGISTRY_TTL_S"):
        interval_from_env()
    assert advertised_address("127.0.0.1", 5) == "127.0.0.1:5"
    monkeypatch.setenv("MI_CROW_ADVERTISE_ADDRESS", "inference-b:50052")
    assert advertised_address("0.0.0.0", 5) == "inference-b:50052"


def test_servers_register_and_the_artifact_service_lists_them(
    tmp_path: Path, registry_url: str, gpt2_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("MI_CROW_MODEL_ALIASES", json.dumps({"tiny": str(gpt2_dir)}))
    monkeypatch.setenv("MI_CROW_REGISTRY_HEARTBEAT_S", "0.2")
    monkeypatch.setenv("MI_CROW_REGISTRY_TTL_S", "5")
    cfg = ServerConfig(port=0, redis_url=registry_url, artifact_root=tmp_path / "s", queue_name="registry-q")
    artifacts = start_artifact_server(cfg)
    a = start_inference_server(cfg, registry_url=registry_url)
    b = start_inference_server(cfg, registry_url=registry_url)
    unregistered = start_inference_server(cfg)  # no registry URL: runs as before, invisible to discovery
    try:
        with grpc.insecure_channel(artifacts.address) as ch, grpc.insecure_channel(b.address) as bch:
            stub = artifacts_pb2_grpc.ArtifactServiceStub(ch)

            def listed(model_id: str = "") -> list[artifacts_pb2.InferenceServerInfo]:
                req = artifacts_pb2.ListInferenceServersRequest(model_id=model_id)
                return list(stub.ListInferenceServers(req).servers)

            assert sorted(s.address for s in listed()) == sorted([a.address, b.address])
            assert all("tiny" in s.available_models and s.device == "cpu" and s.serving for s in listed())
            assert listed("no-such-model") == []
            inference_pb2_grpc.InferenceServiceStub(bch).LoadModel(
                inference_pb2.LoadModelRequest(model_id="tiny"), timeout=60
            )
            # The next heartbeat reports the loaded model, and b is ranked first for it.
            _wait_until(lambda: listed("tiny")[0].loaded_models == ["tiny"], "loaded model never reported")
            assert listed("tiny")[0].address == b.address
            b.stop(0)
            assert [s.address for s in listed()] == [a.address]  # deregistered on stop, not after the TTL
            with Client.discover(artifacts.address, "tiny") as client:
                assert client.load_model("tiny").loaded  # on a, the one server left
                with pytest.raises(LookupError, match="no inference server for 'no-such-model'"):
                    client.use_inference_for("no-such-model")
    finally:
        for server in (artifacts, a, b, unregistered):
            server.stop(0)
    assert list_servers(redis.Redis.from_url(registry_url)) == []
