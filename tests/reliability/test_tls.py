"""TLS and mutual TLS, with a CA and certificates the test makes itself."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from mi_crow.client import Client, tls_credentials
from mi_crow.services.artifacts.server import start_artifact_server
from mi_crow.services.common.config import ServerConfig


@pytest.mark.parametrize("mutual", [False, True])
def test_tls_and_mutual_tls(tmp_path: Path, pki: Path, redis_server: str, mutual: bool):
    cfg = ServerConfig(
        port=0,
        redis_url=redis_server,
        artifact_root=tmp_path / "store",
        tls_cert=pki / "server.crt",
        tls_key=pki / "server.key",
        tls_client_ca=pki / "ca.crt" if mutual else None,
    )
    running = start_artifact_server(cfg)
    address = f"localhost:{running.port}"
    try:
        with Client(address, timeout=5) as plain, pytest.raises(grpc.RpcError) as err:
            plain.metrics()  # a plaintext client cannot talk to a TLS server
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        server_only = tls_credentials(pki / "ca.crt")
        with Client(address, tls=server_only, timeout=5) as c:
            if mutual:
                with pytest.raises(grpc.RpcError) as err:
                    c.metrics()  # no client certificate
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            else:
                assert c.metrics().total == c.metrics().total
        full = tls_credentials(pki / "ca.crt", pki / "client.crt", pki / "client.key")
        with Client(address, tls=full, timeout=5) as c:
            assert c.metrics().total >= 0
    finally:
        running.stop(0)


def test_half_configured_tls_is_refused(tmp_path: Path):
    from mi_crow.services.common.server import server_credentials

    with pytest.raises(ValueError, match="both a certificate"):
        server_credentials(tmp_path / "x.crt", None, None)
    with pytest.raises(ValueError, match="needs a server certificate"):
        server_credentials(None, None, tmp_path / "ca.crt")
