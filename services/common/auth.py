"""API-key checks for protected calls. Keys are compared in constant time and never logged."""

from __future__ import annotations

import hmac

import grpc

from mi_crow.services.common.errors import ServiceError


def bearer_token(context: grpc.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata():
        if key == "authorization" and value.lower().startswith("bearer "):
            return value[7:].strip()
    return None


def require_admin(context: grpc.ServicerContext, admin_key: str | None, action: str) -> None:
    """No key configured: open (local) mode. Otherwise the caller must present it."""
    if not admin_key:
        return
    token = bearer_token(context)
    if token is None:
        raise ServiceError(
            grpc.StatusCode.UNAUTHENTICATED, f"{action} needs an API key: send 'authorization: Bearer <key>'"
        )
    if not hmac.compare_digest(token.encode(), admin_key.encode()):
        raise ServiceError(grpc.StatusCode.PERMISSION_DENIED, f"the API key presented may not {action}")
