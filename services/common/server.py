"""Building and running a gRPC server: health checking, reflection, graceful shutdown."""

from __future__ import annotations

import logging
import os
import signal
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mi_crow.services.common.auth import KEYS_ENV, AuthInterceptor, Scope
from mi_crow.services.common.config import ServerConfig
from mi_crow.services.common.logs import RequestIdInterceptor

log = logging.getLogger("mi_crow.services")

# Activations travel as ~1 MiB chunks; the limits only guard unary requests against abuse.
MAX_MESSAGE_BYTES = 16 << 20


class RunningServer:
    def __init__(
        self, server: grpc.Server, port: int, health_servicer: health.HealthServicer, services: list[str]
    ) -> None:
        self.server = server
        self.port = port
        self.health = health_servicer
        self.services = services  # the mi-crow services it hosts (health reports them by name)
        self.watch: HealthWatch | None = None
        self.on_stop: list[Callable[[], None]] = []  # run first on stop, e.g. leaving a registry

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self.services]:
            self.health.set(name, status)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float = 5.0) -> None:
        """Refuse new calls, let in-flight ones finish for up to ``grace`` seconds."""
        for hook in self.on_stop:
            hook()
        if self.watch is not None:
            self.watch.stopped.set()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()

    def wait(self) -> None:
        self.server.wait_for_termination()


def start_server(
    services: Sequence[tuple[Callable[[Any, grpc.Server], None], Any, str]],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_workers: int = 8,
    api_keys: dict[str, Scope] | None = None,
    tls: grpc.ServerCredentials | None = None,
) -> RunningServer:
    """Start a server for ``(add_XServicer_to_server, servicer, full service name)`` triples."""
    if api_keys:
        log.info("API keys required on every mi-crow RPC (%d keys)", len(api_keys))
    else:
        log.warning("open mode: no API keys configured (%s); for local use only", KEYS_ENV)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        # Request ids first, so an auth refusal is logged with its id too.
        interceptors=[RequestIdInterceptor(), *([AuthInterceptor(api_keys)] if api_keys else [])],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),  # a second server on a taken port must fail, not share it
        ],
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [health.SERVICE_NAME, reflection.SERVICE_NAME]
    hosted = []
    for add, impl, name in services:
        add(impl, server)
        names.append(name)
        hosted.append(name)
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(names, server)
    bound = server.add_secure_port(f"{host}:{port}", tls) if tls else server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}")
    server.start()
    return RunningServer(server, bound, health_servicer, hosted)


class HealthWatch(threading.Thread):
    """Health that means something: NOT_SERVING while any dependency check fails (Redis, the artifact volume)."""

    def __init__(self, running: RunningServer, checks: dict[str, Callable[[], object]], every_s: float = 2.0) -> None:
        super().__init__(daemon=True, name="health-watch")
        self.running, self.checks, self.every_s = running, checks, every_s
        self.stopped = threading.Event()
        self.failing: dict[str, str] = {}
        running.watch = self

    def check_once(self) -> bool:
        failing = {}
        for name, check in self.checks.items():
            try:
                check()
            except Exception as exc:  # any failure of a dependency means we cannot serve
                failing[name] = f"{type(exc).__name__}: {exc}"
        if failing != self.failing:
            if failing:
                log.warning("NOT_SERVING: %s", failing)
            else:
                log.info("SERVING again")
        self.failing = failing
        self.running.set_serving(not failing)
        return not failing

    def run(self) -> None:
        while not self.stopped.wait(self.every_s):
            self.check_once()


def volume_writable(root: Path) -> Callable[[], None]:
    """A check that the artifact volume is mounted and writable (a probe file written and removed)."""

    def check() -> None:
        # Unique per check: several servers (or processes) may watch the same volume at once.
        probe = root / f".health-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"ok")
        probe.unlink()

    return check


def server_credentials(cert: Path | None, key: Path | None, client_ca: Path | None) -> grpc.ServerCredentials | None:
    """TLS when a certificate and key are configured; mutual TLS when a client CA is configured too."""
    if not cert and not key:
        if client_ca:
            raise ValueError("a client CA (mutual TLS) needs a server certificate and key as well")
        return None
    if not (cert and key):
        raise ValueError("TLS needs both a certificate (MI_CROW_TLS_CERT) and a key (MI_CROW_TLS_KEY)")
    root = client_ca.read_bytes() if client_ca else None
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())], root_certificates=root, require_client_auth=root is not None
    )


def serve_until_signal(running: RunningServer, grace: float, on_stop: Callable[[], None] | None = None) -> None:
    """Block until SIGTERM/SIGINT, then shut down gracefully."""
    done = threading.Event()

    def handle(signum: int, frame: object) -> None:
        log.info("signal %s: stopping (grace %.0fs)", signum, grace)
        done.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    done.wait()
    running.stop(grace)
    if on_stop:
        on_stop()


def start_configured(
    cfg: ServerConfig, services: Sequence[tuple[Callable[[Any, grpc.Server], None], Any, str]]
) -> RunningServer:
    """``start_server`` with the address, limits, API keys and TLS of a ServerConfig."""
    return start_server(
        services,
        host=cfg.host,
        port=cfg.port,
        max_workers=cfg.max_workers,
        api_keys=cfg.api_keys,
        tls=server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca),
    )


def announce_and_serve(name: str, cfg: ServerConfig, running: RunningServer) -> None:
    """Print the line launchers wait for (``mi-crow NAME listening on HOST:PORT``), then serve until a signal."""
    print(f"mi-crow {name} listening on {cfg.host}:{running.port}", flush=True)
    serve_until_signal(running, cfg.grace_seconds)
