"""Server configuration from environment variables (flags on the CLI override them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from mi_crow.services.common.auth import load_keys


def _paths(value: str) -> list[Path]:
    return [Path(p).expanduser().resolve() for p in value.split(os.pathsep) if p.strip()]


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port (printed on start)
    redis_url: str = "redis://127.0.0.1:6379/0"
    artifact_root: Path = field(default_factory=lambda: Path(".mi_crow/store"))
    dataset_roots: list[Path] = field(default_factory=list)  # server-side dataset paths must lie under these
    admin_key: str | None = None  # open mode only: when set, deletes need "authorization: Bearer <key>"
    api_keys: dict = field(default_factory=dict)  # key -> Scope; when set, every mi-crow RPC needs a key
    tls_cert: Path | None = None  # PEM certificate chain: with tls_key, the server speaks TLS only
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # PEM CA bundle: when set, clients must present a certificate it signed
    max_workers: int = 8
    grace_seconds: float = 10.0
    queue_name: str = "mi_crow-training"

    @classmethod
    def from_env(cls, **overrides: object) -> ServerConfig:
        env = os.environ
        cfg = cls(
            host=env.get("MI_CROW_HOST", cls.host),
            port=int(env.get("MI_CROW_PORT", "0")),
            redis_url=env.get("MI_CROW_REDIS_URL", env.get("REDIS_URL", cls.redis_url)),
            artifact_root=Path(env.get("MI_CROW_STORE", ".mi_crow/store")),
            dataset_roots=_paths(env.get("MI_CROW_DATASET_ROOTS", "")),
            admin_key=env.get("MI_CROW_ADMIN_KEY") or None,
            api_keys=load_keys(),
            tls_cert=Path(env["MI_CROW_TLS_CERT"]) if env.get("MI_CROW_TLS_CERT") else None,
            tls_key=Path(env["MI_CROW_TLS_KEY"]) if env.get("MI_CROW_TLS_KEY") else None,
            tls_client_ca=Path(env["MI_CROW_TLS_CLIENT_CA"]) if env.get("MI_CROW_TLS_CLIENT_CA") else None,
            max_workers=int(env.get("MI_CROW_MAX_WORKERS", "8")),
        )
        for key, value in overrides.items():
            if value is not None:
                setattr(cfg, key, value)
        cfg.artifact_root = Path(cfg.artifact_root)
        return cfg
