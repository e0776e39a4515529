"""A live activation stream whose server fails mid-pass continues on the next server without losing or
repeating a row: the rows the trainer sees equal one clean pass."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import grpc
import pytest
import torch

from mi_crow.services.common.config import ServerConfig
from mi_crow.services.inference.server import start_inference_server
from mi_crow.services.inference.service import InferenceServicer
from mi_crow.v1 import artifacts_pb2, common_pb2
from mi_crow.workers.live import live_source

TEXTS = [f"text {i}: the quick brown fox jumps over the lazy dog" for i in range(12)]


class FailingMidStream(InferenceServicer):
    """A real inference server that drops every stream after a few chunks, as a server dying would."""

    def __init__(self, cfg: ServerConfig, after: int) -> None:
        super().__init__(cfg)
        self.after = after
        self.aborted = 0

    def StreamActivations(self, request, context):  # type: ignore[no-untyped-def]
        for n, chunk in enumerate(super().StreamActivations(request, context)):
            if n == self.after:
                self.aborted += 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "server going away")
            yield chunk


def test_stream_moves_to_the_next_server_and_skips_delivered_rows(
    tmp_path: Path, gpt2_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    monkeypatch.setenv("MI_CROW_MODEL_ALIASES", json.dumps({"tiny": str(gpt2_dir)}))
    cfg = ServerConfig(port=0, artifact_root=tmp_path / "s")
    failing = FailingMidStream(cfg, after=2)
    bad, good = start_inference_server(cfg, failing), start_inference_server(cfg)
    source = artifacts_pb2.LiveSource(dataset=common_pb2.DatasetSpec(texts=TEXTS), batch_size=2)
    try:
        clean = torch.cat(list(live_source(good.address, "tiny", "transformer_h_0", source)()))
        finder = lambda: [bad.address, good.address]  # noqa: E731 - the bad one ranks first, as b did
        with caplog.at_level(logging.WARNING, logger="mi_crow.workers"):
            rows = torch.cat(list(live_source(finder, "tiny", "transformer_h_0", source)()))
    finally:
        bad.stop(0)
        good.stop(0)
    assert failing.aborted == 1  # the pass really started on the failing server
    moved = [r.getMessage() for r in caplog.records if "moving to another" in r.getMessage()]
    assert len(moved) == 1 and bad.address in moved[0] and "after 0 rows" not in moved[0]
    assert rows.shape == clean.shape
    torch.testing.assert_close(rows, clean)


def test_a_failure_that_is_not_the_servers_is_not_retried(tmp_path: Path, gpt2_dir: Path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MI_CROW_MODEL_ALIASES", json.dumps({"tiny": str(gpt2_dir)}))
    cfg = ServerConfig(port=0, artifact_root=tmp_path / "s")
    server = start_inference_server(cfg)
    source = artifacts_pb2.LiveSource(dataset=common_pb2.DatasetSpec(texts=TEXTS), batch_size=2)
    try:
        with pytest.raises(grpc.RpcError) as err:
            list(live_source(server.address, "tiny", "no_such_layer", source)())
    finally:
        server.stop(0)
    assert err.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
    no_server = live_source("", "tiny", "transformer_h_0", source)  # looked up when a stream opens, not before
    with pytest.raises(ValueError, match="MI_CROW_INFERENCE_ADDRESS"):
        next(no_server())
