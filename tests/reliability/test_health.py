"""Health that means something: NOT_SERVING while Redis is down, SERVING again once it is back."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mi_crow.services.artifacts.server import start_artifact_server
from mi_crow.services.common.config import ServerConfig
from mi_crow.services.launcher import RedisProcess


def _status(channel: grpc.Channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def _wait_for(channel: grpc.Channel, status: int, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while _status(channel) != status:
        assert time.time() < deadline, (
            f"health never became {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}"
        )
        time.sleep(0.2)


def test_health_follows_redis(tmp_path: Path):
    redis = RedisProcess(tmp_path / "redis").start()
    running = start_artifact_server(ServerConfig(port=0, redis_url=redis.url, artifact_root=tmp_path / "store"))
    try:
        with grpc.insecure_channel(running.address) as channel:
            _wait_for(channel, health_pb2.HealthCheckResponse.SERVING)
            redis.stop()
            _wait_for(channel, health_pb2.HealthCheckResponse.NOT_SERVING)
            assert "redis" in running.watch.failing  # type: ignore[union-attr]
            redis.start()
            _wait_for(channel, health_pb2.HealthCheckResponse.SERVING)
    finally:
        running.stop(0)
        redis.stop()
