"""Calls one mi-crow process makes to another (a worker to an inference server, a probe to any server).

They present the deployment's credentials the way an outside client would, so that a cluster with API keys
or TLS switched on keeps working inside. Everything comes from the environment:

- ``MI_CROW_API_KEY``: sent as ``authorization: Bearer <key>``.
- ``MI_CROW_TLS_CA``: PEM bundle to verify servers with; setting it switches the channel to TLS.
- ``MI_CROW_TLS_CLIENT_CERT`` + ``MI_CROW_TLS_CLIENT_KEY``: this process's certificate, for mutual TLS.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from mi_crow.client import tls_credentials
from mi_crow.services.common.logs import REQUEST_ID


def channel_credentials(env: Mapping[str, str] | None = None) -> grpc.ChannelCredentials | None:
    """TLS credentials from the environment, or None for plaintext."""
    env = os.environ if env is None else env
    names = ("MI_CROW_TLS_CA", "MI_CROW_TLS_CLIENT_CERT", "MI_CROW_TLS_CLIENT_KEY")
    ca, cert, key = (env.get(name, "") for name in names)
    if bool(cert) != bool(key):
        raise ValueError("mutual TLS needs both MI_CROW_TLS_CLIENT_CERT and MI_CROW_TLS_CLIENT_KEY")
    if cert and not ca:
        raise ValueError("a client certificate (MI_CROW_TLS_CLIENT_CERT) needs MI_CROW_TLS_CA to verify the server")
    return tls_credentials(ca, cert or None, key or None) if ca else None


def open_channel(address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A channel to another mi-crow server, TLS when the environment says so."""
    creds = channel_credentials()
    if creds is not None:
        return grpc.secure_channel(address, creds, options=list(options))
    return grpc.insecure_channel(address, options=list(options))


def call_metadata() -> tuple[tuple[str, str], ...]:
    """The API key, and the request id of the work in hand so the callee's logs carry it too."""
    metadata: list[tuple[str, str]] = []
    if key := os.environ.get("MI_CROW_API_KEY", ""):
        metadata.append(("authorization", f"Bearer {key}"))
    if request_id := REQUEST_ID.get():
        metadata.append(("x-request-id", request_id))
    return tuple(metadata)
