"""Load: many concurrent clients mixing forwards, SAE inference and activation streams against a real
inference server process. Only explicit backpressure (RESOURCE_EXHAUSTED) may fail, and the server's memory
stays flat over 1,000 requests."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.load import prepare, run_load

pytestmark = pytest.mark.e2e

RSS_GROWTH_BOUND_MIB = 64  # allocator noise and caches; a per-request leak of even 64 KiB would exceed it


def test_mixed_load_holds_with_backpressure_and_flat_memory(tmp_path: Path, gpt2_dir: Path):
    # A short device queue, so 12 clients meet backpressure instead of unbounded waiting.
    cluster, sae_id = prepare(tmp_path, gpt2_dir, env={"MI_CROW_MAX_QUEUED": "4"})
    try:
        assert cluster.inference is not None and cluster.inference.proc is not None
        pid = cluster.inference.proc.pid
        run_load(cluster.inference.address, "m", sae_id, requests=60, clients=3, server_pid=pid)  # warm-up
        report = run_load(cluster.inference.address, "m", sae_id, requests=1000, clients=12, server_pid=pid)
    finally:
        cluster.stop()
    summary = report.summary()
    print(summary)  # the numbers the README quotes
    assert set(report.statuses) <= {"OK", "RESOURCE_EXHAUSTED"}, summary
    # Refusals are instant, so refused clients come straight back: most calls meet the full queue, and that
    # is the point; the device still serves a steady share.
    assert report.statuses["OK"] >= 150 and report.statuses["RESOURCE_EXHAUSTED"] > 0, summary
    assert report.rss_after_mib - report.rss_before_mib < RSS_GROWTH_BOUND_MIB, summary
