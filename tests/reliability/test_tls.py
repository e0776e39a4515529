"""TLS and mutual TLS, with a CA and certificates the test makes itself."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mi_crow.client import Client, tls_credentials
from mi_crow.services.artifacts.server import start_artifact_server
from mi_crow.services.common.config import ServerConfig


def _cert(name: str, issuer: tuple | None, out: Path, *, ca: bool = False) -> tuple:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    (out / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (out / f"{name}.key").write_bytes(pem_key)
    return cert, key


@pytest.mark.parametrize("mutual", [False, True])
def test_tls_and_mutual_tls(tmp_path: Path, redis_server: str, mutual: bool):
    ca = _cert("ca", None, tmp_path, ca=True)
    _cert("server", ca, tmp_path)
    _cert("client", ca, tmp_path)
    cfg = ServerConfig(
        port=0,
        redis_url=redis_server,
        artifact_root=tmp_path / "store",
        tls_cert=tmp_path / "server.crt",
        tls_key=tmp_path / "server.key",
        tls_client_ca=tmp_path / "ca.crt" if mutual else None,
    )
    running = start_artifact_server(cfg)
    address = f"localhost:{running.port}"
    try:
        with Client(address, timeout=5) as plain, pytest.raises(grpc.RpcError) as err:
            plain.metrics()  # a plaintext client cannot talk to a TLS server
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        server_only = tls_credentials(tmp_path / "ca.crt")
        with Client(address, tls=server_only, timeout=5) as c:
            if mutual:
                with pytest.raises(grpc.RpcError) as err:
                    c.metrics()  # no client certificate
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            else:
                assert c.metrics().total == c.metrics().total
        full = tls_credentials(tmp_path / "ca.crt", tmp_path / "client.crt", tmp_path / "client.key")
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
