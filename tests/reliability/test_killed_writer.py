"""Fault: a process is SIGKILLed in the middle of writing an artifact. Readers see the old complete file or
none at all, never a torn one, and a stored run it was writing is never listed as complete."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mi_crow.store import LocalStore

pytestmark = pytest.mark.e2e

WRITER = r"""
import sys, torch
from mi_crow.store import LocalStore, atomic_write_bytes
target, root = sys.argv[1], sys.argv[2]
print("ready", flush=True)
while True:  # rewrite a 64 MiB artifact, and add shards to a run, until killed
    atomic_write_bytes(target, b"N" * (64 << 20))
    store = LocalStore(root)
    writer = store.create_run("m", {"l": (256, "float32")}, run_id=f"r{__import__('time').time_ns()}")
    for _ in range(4):
        rows = torch.ones(4096, 256)
        ids = torch.zeros(4096, dtype=torch.int32)
        writer.add_shard("l", rows, ids, ids, ids.long())
"""


def test_a_killed_writer_leaves_no_torn_artifact(tmp_path: Path):
    target = tmp_path / "artifact.bin"
    target.write_bytes(b"O" * 1024)  # the previous, complete version
    root = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(root)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(1.5)  # somewhere inside a write
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    data = target.read_bytes()
    assert data in (b"O" * 1024, b"N" * (64 << 20)), f"torn artifact of {len(data)} bytes"
    runs = LocalStore(root).list_runs()
    assert runs, "the writer never got to a run"
    for manifest in runs:
        assert manifest.status == "running"  # killed writers never reach 'complete'
        for layer in manifest.layers.values():
            for shard in layer.shards:  # every listed shard is whole (its checksum is recorded after the write)
                if shard.sha256:
                    assert (root / "activations" / "m" / manifest.run_id / shard.file).is_file()
