"""The device gate: one request computes at a time, a bounded number wait, the rest are refused at once.

A GPU holds one model's activations at a time; letting requests pile up without bound would only turn
overload into timeouts and memory errors, so the queue is short and callers get RESOURCE_EXHAUSTED to
retry against (or route to) another replica.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import grpc

from mi_crow.services.common.errors import ServiceError

MAX_QUEUED_ENV = "MI_CROW_MAX_QUEUED"
DEFAULT_MAX_QUEUED = 16
_POLL_SECONDS = 0.25  # how often a waiting request checks whether its caller is still there


def max_queued_from_env() -> int:
    raw = os.environ.get(MAX_QUEUED_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_QUEUED
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{MAX_QUEUED_ENV}={raw!r} is not an integer") from None
    if value < 0:
        raise ValueError(f"{MAX_QUEUED_ENV} must not be negative, got {value}")
    return value


class DeviceGate:
    def __init__(self, max_queued: int = DEFAULT_MAX_QUEUED) -> None:
        self.max_queued = max_queued
        self._cond = threading.Condition()
        self._busy = False
        self._waiting = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def busy(self) -> bool:
        return self._busy

    @contextmanager
    def hold(self, is_active: Callable[[], bool] | None = None) -> Iterator[None]:
        """Compute inside this block. ``is_active`` lets a waiter give up once its caller has gone."""
        with self._cond:
            if self._busy:
                if self._waiting >= self.max_queued:
                    raise ServiceError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"the inference server is busy: {self._waiting} requests already wait for the device "
                        f"(limit {self.max_queued}, set by {MAX_QUEUED_ENV}); retry later",
                    )
                self._waiting += 1
                try:
                    while self._busy:
                        self._cond.wait(_POLL_SECONDS)
                        if is_active is not None and not is_active():
                            raise ServiceError(grpc.StatusCode.CANCELLED, "the caller went away while queued")
                finally:
                    self._waiting -= 1
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify()
