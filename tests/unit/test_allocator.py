"""The allocator tuning really stops multi-MiB buffers from faulting in fresh pages each time."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import resource, sys
from mi_crow.allocator import tune_for_large_buffers
applied = tune_for_large_buffers()
blob = b"x" * (1 << 20)
def churn():
    for _ in range(25):
        held = [bytearray(blob) for _ in range(8)]  # several 1 MiB buffers in flight, as in a stream
        del held
churn()  # warm-up: the heap grows once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(**env: str) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "MI_CROW_MALLOC"))}
    cmd = [sys.executable, "-c", PROBE]
    out = subprocess.run(cmd, env={**clean, **env}, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_tuning_keeps_large_buffers_in_the_heap():
    applied, faults = _probe()
    off, faults_off = _probe(MI_CROW_MALLOC_TUNING="0")
    assert applied and not off
    # 200 fresh MiB without tuning: up to 256 page faults each; with it the pages are reused.
    assert faults_off > 200 * 100
    assert faults < faults_off / 20


def test_an_explicit_glibc_setting_wins():
    applied, _ = _probe(MALLOC_MMAP_THRESHOLD_=str(1 << 20))
    assert not applied
