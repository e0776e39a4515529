"""docker-compose.yml and the Dockerfile, checked statically (no Docker engine here)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from typer.main import get_command

from mi_crow.cli import app

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_is_valid_against_the_compose_spec():
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    result = subprocess.run(
        [exe, "--builtin-schema", "vendor.compose-spec", str(ROOT / "docker-compose.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_containers_run_the_commands_the_local_launcher_runs():
    launcher = (ROOT / "services" / "launcher.py").read_text()
    cli = get_command(app)
    services = _compose()["services"]
    for name in ("artifacts", "inference", "worker"):
        subcommand = services[name]["command"][0]
        assert subcommand in cli.commands, f"{name}: 'mi-crow {subcommand}' does not exist"  # type: ignore[attr-defined]
        assert f'"{subcommand}"' in launcher, f"the local launcher does not run {subcommand}"
    healthcheck = services["artifacts"]["healthcheck"]["test"]
    assert healthcheck[1:3] == ["mi-crow", "health"] and "health" in cli.commands  # type: ignore[attr-defined]


def test_compose_shape_redis_aof_gpu_scalable_workers_shared_volume():
    services = _compose()["services"]
    assert "--appendonly" in services["redis"]["command"]
    gpu = services["inference"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker  # --scale worker=N needs both absent
    for name in ("artifacts", "inference", "worker"):
        mounts = services[name].get("volumes") or _compose()["x-mi-crow"]["volumes"]
        assert any(str(m).startswith("artifacts:/artifacts") for m in mounts), name
        assert services[name]["environment"]["MI_CROW_REDIS_URL"].startswith("redis://redis:")


def test_compose_scales_out_inference_servers_and_workers():
    compose = _compose()
    services = compose["services"]
    assert not any("container_name" in svc for svc in services.values())  # every service can be scaled
    # Two GPU inference servers, each advertising the address the others dial, registering in one Redis.
    advertised = {}
    for name in ("inference", "inference-b"):
        svc = services[name]
        env = svc["environment"]
        host, port = env["MI_CROW_ADVERTISE_ADDRESS"].split(":")
        assert host == name and port == svc["command"][svc["command"].index("--port") + 1], name
        assert env["MI_CROW_REDIS_URL"] == services["worker"]["environment"]["MI_CROW_REDIS_URL"]
        gpu = svc["deploy"]["resources"]["reservations"]["devices"][0]
        assert gpu["capabilities"] == ["gpu"] and gpu["driver"] == "nvidia", name
        advertised[name] = env["MI_CROW_ADVERTISE_ADDRESS"]
        host_ports = [str(p).split(":")[0] for p in svc.get("ports", [])]
        assert len(host_ports) == len(set(host_ports)), name
    assert len(set(advertised.values())) == 2
    assert services["inference-b"]["profiles"] == ["scale-out"]  # opt-in: one GPU is enough by default
    published = [str(p).split(":")[0] for svc in services.values() for p in svc.get("ports", [])]
    assert len(published) == len(set(published))  # no two services claim one host port
    # Workers: scalable (no fixed name or host port), metrics inside each replica on a documented port.
    worker = services["worker"]
    assert "ports" not in worker and "container_name" not in worker
    assert worker["environment"]["MI_CROW_WORKER_METRICS_PORT"] == "9103"
    assert worker["environment"]["MI_CROW_HOST"] == "0.0.0.0"
    assert "--scale worker=" in (ROOT / "docker-compose.yml").read_text()


def test_dockerfile_installs_the_project_with_its_generated_stubs():
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    for needed in ("COPY protos", "COPY services", "COPY workers", 'pip install ".[server]"', 'ENTRYPOINT ["mi-crow"]'):
        assert needed in text


def test_compose_passes_the_security_settings_to_every_mi_crow_container():
    security = ["MI_CROW_API_KEYS", "MI_CROW_API_KEY", "MI_CROW_TLS_CERT", "MI_CROW_TLS_KEY", "MI_CROW_TLS_CLIENT_CA",
                "MI_CROW_TLS_CA", "MI_CROW_TLS_CLIENT_CERT", "MI_CROW_TLS_CLIENT_KEY"]  # fmt: skip
    ours = {name: svc for name, svc in _compose()["services"].items() if svc.get("image") == "mi-crow:latest"}
    assert {"artifacts", "inference", "inference-b", "worker"} <= set(ours)
    for name, svc in ours.items():
        env = svc["environment"]
        # Taken from the shell, empty (= off) when unset there: no secret is ever written into the file.
        assert all(env.get(var) == f"${{{var}:-}}" for var in security), name
