"""Structured (JSON lines) logs with a request id carried per call.

A client may send ``x-request-id``; otherwise the server makes one. Every log line written while the call
runs carries it, and the server returns it as trailing metadata so a caller can quote it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc

from mi_crow.services.common.metrics import LATENCY, REQUESTS

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", "") or REQUEST_ID.get()
        if request_id:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _request_id(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == "x-request-id" and value:
            return str(value)[:64]
    return uuid.uuid4().hex[:16]


class RequestIdInterceptor(grpc.ServerInterceptor):
    """Sets the request id for the duration of each call; logs and counts (Prometheus) each call's outcome."""

    def __init__(self) -> None:
        self.log = logging.getLogger("mi_crow.services.calls")

    def _record(self, method: str, context: grpc.ServicerContext, start: float, request_id: str, what: str) -> None:
        seconds = time.perf_counter() - start
        code = context.code() or grpc.StatusCode.OK
        REQUESTS.labels(method, code.name).inc()
        LATENCY.labels(method).observe(seconds)
        self.log.info("%s %s %.1f ms: %s", method, what, 1000 * seconds, code.name, extra={"request_id": request_id})

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = continuation(details)
        if handler is None or not details.method.startswith("/mi_crow.v1."):
            return handler
        request_id = _request_id(details.invocation_metadata)
        method = details.method.rsplit("/", 1)[-1]

        def wrap(behavior: Callable[..., Any], streaming: bool) -> Callable[..., Any]:
            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                token = REQUEST_ID.set(request_id)
                start = time.perf_counter()
                context.set_trailing_metadata((("x-request-id", request_id),))
                try:
                    return behavior(request, context)
                finally:
                    self._record(method, context, start, request_id, "done in")
                    REQUEST_ID.reset(token)

            def stream(request: Any, context: grpc.ServicerContext) -> Any:
                token = REQUEST_ID.set(request_id)
                start = time.perf_counter()
                context.set_trailing_metadata((("x-request-id", request_id),))
                try:
                    yield from behavior(request, context)
                finally:
                    self._record(method, context, start, request_id, "stream ended after")
                    REQUEST_ID.reset(token)

            return stream if streaming else unary

        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary, False), **kwargs)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream, True), **kwargs)
        return handler
