"""Redis connections that ride out a Redis restart: failed commands are retried with exponential backoff."""

from __future__ import annotations

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError
from redis.retry import Retry

# About 30 s of retrying (0.1 s doubling to 5 s): long enough for Redis to restart and load its AOF.
RETRY = Retry(ExponentialBackoff(cap=5.0, base=0.1), retries=10)


def connect(url: str) -> Redis:
    return Redis.from_url(
        url,
        retry=RETRY,
        retry_on_error=[ConnectionError, TimeoutError, BusyLoadingError],
        health_check_interval=15,
        socket_keepalive=True,
    )
