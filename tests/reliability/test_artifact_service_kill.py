"""Fault: the artifact service process is SIGKILLed while clients upload concept dictionaries and write
concept configs. Nothing half-written is ever listed or readable, the clients' retries complete every call
that was in flight, and every stored file holds exactly what one successful call sent."""

from __future__ import annotations

import json
import threading
import time
from functools import partial
from pathlib import Path

import grpc
import pytest

from mi_crow.client import Client
from mi_crow.mechanistic.sae import TopKSae
from mi_crow.services.launcher import LocalCluster
from mi_crow.store import LocalStore
from mi_crow.v1 import artifacts_pb2, common_pb2

pytestmark = pytest.mark.e2e

N_LATENTS = 512
MODEL, SAE = "m", "s1"


def _upload(version: int) -> bytes:
    # A dictionary naming every latent, large enough that its write takes a measurable moment.
    table = {str(i): {"name": f"v{version}-latent-{i}", "description": "x" * 200} for i in range(N_LATENTS)}
    return json.dumps({"concepts": table}).encode()


def _until_ok(call, deadline: float, retried: list[str]):
    """The client's own retry loop: UNAVAILABLE (the service is down or restarting) is retried until it is back."""
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.time() > deadline:
                raise
            retried.append(exc.details() or "")
            time.sleep(0.2)


def test_killing_the_artifact_service_mid_write_loses_and_tears_nothing(tmp_path: Path):
    with LocalCluster(tmp_path, workers=0, inference=False) as cluster:
        assert cluster.artifacts is not None
        sae = TopKSae(16, N_LATENTS, k=4)
        sae.sae_id, sae.model_id, sae.layer = SAE, MODEL, "layer"
        sae.save(LocalStore(cluster.store).sae_dir(MODEL, SAE))

        done: dict[str, float] = {}  # config name -> the scale its successful call wrote
        uploaded: list[int] = []  # dictionary versions whose upload succeeded, in order
        errors: list[BaseException] = []
        retried: list[str] = []  # calls that met the dead service and were retried
        stop = threading.Event()

        def writer() -> None:
            deadline = time.time() + 120
            try:
                with Client(cluster.artifacts.address, timeout=10) as client:
                    ref = common_pb2.SaeRef(model_id=MODEL, sae_id=SAE)
                    i = 0
                    while not stop.is_set() or i < 40:
                        name, scale = f"cfg{i}", 1.0 + i
                        write = partial(client.manipulate, MODEL, SAE, {i % N_LATENTS: scale}, name=name)
                        _until_ok(write, deadline, retried)
                        done[name] = scale
                        request = artifacts_pb2.LoadConceptsRequest(sae=ref, content=_upload(i), format="json")
                        _until_ok(partial(client.artifacts.LoadConcepts, request, timeout=10), deadline, retried)
                        uploaded.append(i)
                        i += 1
            except BaseException as exc:  # surfaced by the main thread
                errors.append(exc)

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            while len(done) < 5 and thread.is_alive():
                time.sleep(0.05)
            cluster.restart_artifacts(kill=True)  # SIGKILL with calls in flight
            time.sleep(0.5)
        finally:
            stop.set()
            thread.join(timeout=180)
        assert not errors, errors
        assert not thread.is_alive()
        assert retried, "no call met the killed service: the kill did not land while clients were writing"

        # Everything the clients were told succeeded is stored, whole, with the content they sent.
        cdir = LocalStore(cluster.store).concepts_dir(MODEL, SAE)
        with Client(cluster.artifacts.address) as client:
            listed = set(client.artifacts.ListConceptConfigs(common_pb2.SaeRef(model_id=MODEL, sae_id=SAE)).names)
            concepts = client.artifacts.ListConcepts(common_pb2.SaeRef(model_id=MODEL, sae_id=SAE))
        assert set(done) <= listed and len(done) >= 40
        for name in listed:  # nothing listed is torn: every config parses and holds one call's edit
            edits = json.loads((cdir / "configs" / f"{name}.json").read_text())["edits"]
            assert name in done and [e["scale"] for e in edits.values()] == [done[name]]
        # The dictionary is the last successful upload, complete.
        stored = json.loads((cdir / "dictionary.json").read_text())
        text = json.dumps(stored)
        assert f"v{uploaded[-1]}-latent-{N_LATENTS - 1}" in text and "latent-0" in text
        assert len(concepts.concepts) == N_LATENTS
        assert {c.name.split("-")[0] for c in concepts.concepts} == {f"v{uploaded[-1]}"}
