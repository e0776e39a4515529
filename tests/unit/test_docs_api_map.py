"""docs/api-map.md names every RPC of the protos (compiled afresh here), and everything it names exists."""

from __future__ import annotations

import re
from pathlib import Path

import grpc_tools
import typer
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from mi_crow.cli import app
from mi_crow.client import Client

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "api-map.md"


def rpcs_in_protos(tmp_path: Path) -> dict[str, set[str]]:
    """Service name -> its method names, from the .proto files as they are now (not the generated stubs)."""
    out = tmp_path / "api.binpb"
    protos = sorted(str(p.relative_to(ROOT / "protos")) for p in (ROOT / "protos" / "mi_crow" / "v1").glob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    assert protoc.main(["protoc", f"-I{ROOT / 'protos'}", f"-I{include}", f"--descriptor_set_out={out}", *protos]) == 0
    services: dict[str, set[str]] = {}
    for file in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file:
        for service in file.service:
            services[service.name] = {m.name for m in service.method}
    return services


def test_every_rpc_is_in_the_api_map(tmp_path: Path):
    page = PAGE.read_text(encoding="utf-8")
    services = rpcs_in_protos(tmp_path)
    assert {"InferenceService", "ArtifactService", "JobService"} <= set(services)
    missing = sorted(f"{s}.{m}" for s, methods in services.items() for m in methods if f"`{s}.{m}`" not in page)
    assert not missing, "add these RPCs to docs/api-map.md: " + ", ".join(missing)


def test_every_rpc_named_in_the_map_exists(tmp_path: Path):
    services = rpcs_in_protos(tmp_path)
    named = re.findall(r"`([A-Z]\w*Service)\.(\w+)`", PAGE.read_text(encoding="utf-8"))
    assert named
    unknown = sorted({f"{s}.{m}" for s, m in named if m not in services.get(s, set())})
    assert not unknown, f"docs/api-map.md names RPCs the protos lack: {unknown}"


def test_every_client_method_and_stub_named_in_the_map_exists(tmp_path: Path):
    page = PAGE.read_text(encoding="utf-8")
    methods = set(re.findall(r"`Client\.(\w+)`", page))
    assert len(methods) >= 15  # the table was parsed
    missing = sorted(m for m in methods if not callable(getattr(Client, m, None)))
    assert not missing, f"docs/api-map.md names Client methods that do not exist: {missing}"

    stub_service = {"artifacts": "ArtifactService", "jobs": "JobService", "inference": "InferenceService"}
    services = rpcs_in_protos(tmp_path)
    stubs = re.findall(r"`client\.(artifacts|jobs|inference)\.(\w+)`", page)
    assert stubs
    bad = sorted(f"client.{s}.{m}" for s, m in stubs if m not in services[stub_service[s]])
    assert not bad, f"docs/api-map.md names stub calls that do not exist: {bad}"


def _cli_paths() -> set[tuple[str, ...]]:
    paths: set[tuple[str, ...]] = set()

    def walk(cmd, path: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
        paths.add(path)
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return paths


def test_every_cli_command_named_in_the_map_exists():
    named = re.findall(r"`mi-crow ((?:[a-z][a-z-]*)(?: [a-z][a-z-]*)?)`", PAGE.read_text(encoding="utf-8"))
    assert len(named) >= 15
    known = _cli_paths()
    unknown = sorted({n for n in named if tuple(n.split()) not in known})
    assert not unknown, f"docs/api-map.md names CLI commands that do not exist: {unknown}"


def test_relative_links_in_the_readme_and_docs_resolve():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert len(pages) >= 5 and not broken, broken
