"""API keys with scopes (read < write < admin), checked on every mi-crow RPC when keys are configured.

Keys come from ``MI_CROW_API_KEYS``: a JSON object ``{"<key>": "read" | "write" | "admin"}`` or the path of a
file holding one. Keys are compared in constant time and never logged. Health checking and reflection stay
open so that orchestrators and generic tools can probe a server. With no keys configured a server runs in
an explicit, logged open mode for local use, where only ``MI_CROW_ADMIN_KEY`` (if set) guards deletes.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import Callable
from enum import IntEnum
from pathlib import Path
from typing import Any

import grpc

from mi_crow.services.common.errors import ServiceError

log = logging.getLogger("mi_crow.services.auth")
KEYS_ENV = "MI_CROW_API_KEYS"


class Scope(IntEnum):
    READ = 1
    WRITE = 2
    ADMIN = 3


# Methods that change or remove what others rely on, or that take the device for a long time.
_ADMIN = {"DeleteActivationRun", "DeleteSae", "LoadModel", "UnloadModel"}
_READ_PREFIXES = ("List", "Get", "Watch")


def scope_for(method: str) -> Scope:
    """Scope needed by a full method name like ``/mi_crow.v1.JobService/SubmitTraining``."""
    name = method.rsplit("/", 1)[-1]
    if name in _ADMIN:
        return Scope.ADMIN
    if name.startswith(_READ_PREFIXES):
        return Scope.READ
    return Scope.WRITE


def load_keys(raw: str | None = None) -> dict[str, Scope]:
    raw = (raw if raw is not None else os.environ.get(KEYS_ENV, "")).strip()
    if not raw:
        return {}
    if not raw.startswith("{"):
        raw = Path(raw).expanduser().read_text(encoding="utf-8")
    try:
        table = json.loads(raw)
        return {str(key): Scope[str(scope).upper()] for key, scope in table.items() if key}
    except (json.JSONDecodeError, KeyError, AttributeError) as exc:
        raise ValueError(f"{KEYS_ENV} must map keys to read, write or admin: {exc}") from None


def bearer_token(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and value.lower().startswith("bearer "):
            return value[7:].strip()
    return None


def _match(token: str, keys: dict[str, Scope]) -> Scope | None:
    found = None
    for key, scope in keys.items():  # look at every key, so timing does not tell which one matched
        if hmac.compare_digest(token.encode(), key.encode()):
            found = scope
    return found


def _denied(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    def abort(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(abort, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(abort, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(abort, **kwargs)
    return grpc.stream_stream_rpc_method_handler(abort, **kwargs)


class AuthInterceptor(grpc.ServerInterceptor):
    def __init__(self, keys: dict[str, Scope]) -> None:
        self.keys = dict(keys)

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = continuation(details)
        if handler is None or not details.method.startswith("/mi_crow.v1."):
            return handler  # health checking and reflection stay open
        need = scope_for(details.method)
        token = bearer_token(details.invocation_metadata)
        name = details.method.rsplit("/", 1)[-1]
        if token is None:
            return _denied(
                handler, grpc.StatusCode.UNAUTHENTICATED, f"{name} needs an API key: 'authorization: Bearer <key>'"
            )
        scope = _match(token, self.keys)
        if scope is None:
            return _denied(handler, grpc.StatusCode.UNAUTHENTICATED, "unknown API key")
        if scope < need:
            return _denied(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"a {scope.name.lower()} key may not call {name}; it needs {need.name.lower()} scope",
            )
        return handler


def require_admin(context: grpc.ServicerContext, admin_key: str | None, action: str) -> None:
    """Open mode's single guard: with MI_CROW_ADMIN_KEY set, deletes need that key."""
    if not admin_key:
        return
    token = bearer_token(context.invocation_metadata())
    if token is None:
        raise ServiceError(grpc.StatusCode.UNAUTHENTICATED, f"{action} needs an API key: 'authorization: Bearer <key>'")
    if not hmac.compare_digest(token.encode(), admin_key.encode()):
        raise ServiceError(grpc.StatusCode.PERMISSION_DENIED, f"the API key presented may not {action}")
