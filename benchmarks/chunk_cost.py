"""Per-MiB cost of each step a TensorChunk goes through, with and without mi-crow's allocator tuning.

Each side runs in a fresh process (the tuning is process-wide and cannot be undone):

    .venv/bin/python -m benchmarks.chunk_cost
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

D_MODEL = 768
TOTAL_MIB = 64


def _measure() -> dict[str, float]:
    import torch
    import xxhash

    from mi_crow.allocator import tune_for_large_buffers
    from mi_crow.chunks import chunk_to_tensor, rows_per_chunk, tensor_to_chunk
    from mi_crow.v1 import common_pb2

    tuned = tune_for_large_buffers()
    rows = rows_per_chunk(D_MODEL, 4)
    tensor = torch.randn(TOTAL_MIB * (1 << 20) // (D_MODEL * 4), D_MODEL)
    parts = list(tensor.split(rows))
    chunks = [tensor_to_chunk(p) for p in parts]
    wire = [c.SerializeToString() for c in chunks]

    def per_mib(step: Callable[[], object]) -> float:
        best = float("inf")
        for _ in range(3):  # best of 3: the cost of the step, not of whatever else ran
            t0 = time.perf_counter()
            step()
            best = min(best, time.perf_counter() - t0)
        return best * 1e3 / len(parts)

    return {
        "tuned": float(tuned),
        "tensor_to_chunk": per_mib(lambda: [tensor_to_chunk(p) for p in parts]),
        "SerializeToString": per_mib(lambda: [c.SerializeToString() for c in chunks]),
        "FromString": per_mib(lambda: [common_pb2.TensorChunk.FromString(w) for w in wire]),
        "chunk_to_tensor": per_mib(lambda: [chunk_to_tensor(c) for c in chunks]),
        "xxh3 (for scale)": per_mib(lambda: [xxhash.xxh3_64_hexdigest(w) for w in wire]),
    }


def main() -> None:
    if "--child" in sys.argv:
        print(json.dumps(_measure()))
        return
    sides = {}
    for name, tuning in (("tuned", "1"), ("untuned", "0")):
        env = {**os.environ, "MI_CROW_MALLOC_TUNING": tuning}
        out = subprocess.run([sys.executable, "-m", "benchmarks.chunk_cost", "--child"], env=env,
                             capture_output=True, text=True, check=True)  # fmt: skip
        sides[name] = json.loads(out.stdout.strip().splitlines()[-1])
    applied = bool(sides["tuned"]["tuned"])
    print(f"ms per MiB ({TOTAL_MIB} MiB in ~1 MiB chunks, d={D_MODEL}); tuning applied: {applied}")
    print("| step | untuned | tuned | ratio |\n|---|---:|---:|---:|")
    for step in sides["tuned"]:
        if step != "tuned":
            a, b = sides["untuned"][step], sides["tuned"][step]
            print(f"| {step} | {a:.3f} | {b:.3f} | {a / b:.1f} |")


if __name__ == "__main__":
    main()
