"""At most N streams open per client, so one client cannot hold every server thread with long streams."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from mi_crow.services.common.auth import bearer_token
from mi_crow.services.common.errors import ServiceError

MAX_STREAMS_ENV = "MI_CROW_MAX_STREAMS_PER_CLIENT"
DEFAULT_MAX_STREAMS = 8


def client_identity(context: grpc.ServicerContext) -> str:
    """The API key when one is sent (one tenant, however many connections), else the connection itself.

    Not the bare IP address: behind NAT, a proxy or on loopback many independent clients share one.
    """
    token = bearer_token(context.invocation_metadata())
    if token:
        return "key:" + str(hash(token))  # never the key itself: identities may be logged
    return "peer:" + (context.peer() or "unknown")


class StreamLimiter:
    def __init__(self, limit: int | None = None) -> None:
        self.limit = int(os.environ.get(MAX_STREAMS_ENV, DEFAULT_MAX_STREAMS)) if limit is None else limit
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextmanager
    def open(self, context: grpc.ServicerContext) -> Iterator[None]:
        who = client_identity(context)
        with self._lock:
            if self._open.get(who, 0) >= self.limit:
                raise ServiceError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"this client already has {self._open[who]} streams open (limit {self.limit}, set by "
                    f"{MAX_STREAMS_ENV}); finish or cancel one first",
                )
            self._open[who] = self._open.get(who, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._open[who] -= 1
                if not self._open[who]:
                    del self._open[who]

    def open_streams(self) -> int:
        with self._lock:
            return sum(self._open.values())
