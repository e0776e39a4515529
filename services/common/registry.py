"""The inference-server registry in Redis: each server keeps an entry alive with a heartbeat; readers rank them.

Key ``mi_crow:inference:<server id>`` holds one JSON record with a short TTL. A server renews it every
``MI_CROW_REGISTRY_HEARTBEAT_S`` (2 s) with a TTL of ``MI_CROW_REGISTRY_TTL_S`` (6 s) and deletes it on a
clean shutdown, so a crashed server drops out within the TTL without anyone cleaning up after it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from redis import Redis
from redis.exceptions import RedisError

log = logging.getLogger("mi_crow.services.registry")

PREFIX = "mi_crow:inference:"
HEARTBEAT_ENV, TTL_ENV = "MI_CROW_REGISTRY_HEARTBEAT_S", "MI_CROW_REGISTRY_TTL_S"
ADVERTISE_ENV, SERVER_ID_ENV = "MI_CROW_ADVERTISE_ADDRESS", "MI_CROW_SERVER_ID"
DEFAULT_HEARTBEAT_S, DEFAULT_TTL_S = 2.0, 6.0
# Any server may load a hub id ("org/name"); aliases are per server and listed in its record.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class ServerRecord:
    """What one inference server says about itself in the registry."""

    server_id: str
    address: str  # host:port clients and workers dial (MI_CROW_ADVERTISE_ADDRESS)
    loaded_models: list[str] = field(default_factory=list)
    available_models: list[str] = field(default_factory=list)  # its aliases: loadable on request
    hub_ids: bool = True  # it loads hub ids "org/name" on request
    device: str = ""
    queue_depth: int = 0  # requests waiting for the device
    busy: bool = False  # a request is computing on the device
    serving: bool = True  # its health checks pass
    started_at: float = 0.0
    updated_at: float = 0.0

    @property
    def load(self) -> int:
        return self.queue_depth + int(self.busy)

    def serves(self, model_id: str) -> bool:
        """Loaded here, one of its aliases, or a hub id it can fetch."""
        if not model_id:
            return True
        if model_id in self.loaded_models or model_id in self.available_models:
            return True
        return self.hub_ids and bool(_HUB_ID.fullmatch(model_id)) and ".." not in model_id

    @classmethod
    def from_json(cls, raw: bytes | str) -> ServerRecord:
        data = json.loads(raw)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})  # newer servers may add fields

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def interval_from_env() -> tuple[float, float]:
    """(heartbeat seconds, TTL seconds); the TTL must outlast a couple of missed beats."""
    every = float(os.environ.get(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_S))
    ttl = float(os.environ.get(TTL_ENV, DEFAULT_TTL_S))
    if every <= 0 or ttl <= every:
        raise ValueError(f"{HEARTBEAT_ENV}={every} must be positive and below {TTL_ENV}={ttl}")
    return every, ttl


def advertised_address(host: str, port: int) -> str:
    """MI_CROW_ADVERTISE_ADDRESS, else the bound address (the host name when bound to every interface)."""
    configured = os.environ.get(ADVERTISE_ENV, "").strip()
    if configured:
        return configured
    if host in ("0.0.0.0", "::", "[::]", ""):
        host = socket.gethostname()
    return f"{host}:{port}"


def server_id_from_env(port: int) -> str:
    return os.environ.get(SERVER_ID_ENV, "").strip() or f"{socket.gethostname()}-{port}-{uuid.uuid4().hex[:6]}"


def probe_connection(url: str) -> Redis:
    """Short timeouts, no retries: a beat that cannot reach Redis is skipped, never left hanging."""
    return Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)


class Registration(threading.Thread):
    """Keeps one server's record alive: written at start, renewed every beat, deleted by ``stop``."""

    def __init__(
        self,
        redis: Redis,
        record: ServerRecord,
        snapshot: Callable[[ServerRecord], None],
        every_s: float = DEFAULT_HEARTBEAT_S,
        ttl_s: float = DEFAULT_TTL_S,
    ) -> None:
        super().__init__(daemon=True, name="registry-heartbeat")
        self.redis, self.record, self.snapshot = redis, record, snapshot
        self.every_s, self.ttl_s = every_s, ttl_s
        self.stopped = threading.Event()
        self.key = PREFIX + record.server_id
        self.record.started_at = self.record.started_at or time.time()

    def beat(self) -> bool:
        try:
            self.snapshot(self.record)  # live load and models, refreshed each beat
            self.record.updated_at = time.time()
            self.redis.set(self.key, self.record.to_json(), px=int(self.ttl_s * 1000))
            return True
        except (RedisError, OSError) as exc:  # Redis away: the entry expires and comes back with the next beat
            log.warning("registry heartbeat failed: %s", exc)
            return False

    def start(self) -> None:
        self.beat()  # registered before the server is announced
        log.info("registered %s at %s (ttl %.1fs)", self.record.server_id, self.record.address, self.ttl_s)
        super().start()

    def run(self) -> None:
        while not self.stopped.wait(self.every_s):
            self.beat()

    def stop(self) -> None:
        """Leave the registry now, so nobody is sent to a server that is shutting down."""
        self.stopped.set()
        with contextlib.suppress(RedisError, OSError):
            self.redis.delete(self.key)
            log.info("deregistered %s", self.record.server_id)


def list_servers(redis: Redis, model_id: str = "") -> list[ServerRecord]:
    """Registered servers that serve ``model_id`` (every one when empty), best first.

    Best: serving, then with the model already loaded (no load time), then least loaded, then by id.
    """
    records = []
    keys = sorted(redis.scan_iter(match=PREFIX + "*", count=100))
    for raw in redis.mget(keys) if keys else []:
        if raw is None:
            continue  # expired between SCAN and MGET
        with contextlib.suppress(ValueError, TypeError):
            records.append(ServerRecord.from_json(raw))
    records = [r for r in records if r.serves(model_id)]
    return sorted(records, key=lambda r: (not r.serving, model_id not in r.loaded_models, r.load, r.server_id))


def rank_addresses(redis: Redis | None, model_id: str, fallback: str = "") -> list[str]:
    """Addresses to try for ``model_id``, best first: serving registered servers, then ``fallback``."""
    found: list[str] = []
    if redis is not None:
        try:
            found = [r.address for r in list_servers(redis, model_id) if r.serving]
        except RedisError as exc:
            log.warning("registry unreadable, using %s: %s", fallback or "no fallback", exc)
    if fallback and fallback not in found:
        found.append(fallback)
    return found
