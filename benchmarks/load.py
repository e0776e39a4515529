"""A bounded load test on loopback: concurrent clients mixing forwards, SAE inference and activation streams
against a real inference server process for a fixed number of requests; reports requests/s, p50/p99 latency,
errors by status and the server's resident memory before and after.

    python -m benchmarks.load --requests 1000 --clients 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from mi_crow.v1 import common_pb2, inference_pb2, inference_pb2_grpc

PROMPTS = ["the cat sat on the mat", "a red dog runs fast", "blue sky over the park", "hello world"]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class LoadReport:
    requests: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    rss_before_mib: float = 0.0
    rss_after_mib: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[int(q) - 1]

    def summary(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "requests_per_s": round(self.rps, 1),
            "p50_ms": round(self.percentile(50), 1),
            "p99_ms": round(self.percentile(99), 1),
            "statuses": dict(self.statuses),
            "rss_before_mib": round(self.rss_before_mib, 1),
            "rss_after_mib": round(self.rss_after_mib, 1),
        }


def run_load(address: str, model_id: str, sae_id: str, *, requests: int, clients: int, server_pid: int) -> LoadReport:
    """Send ``requests`` calls from ``clients`` threads, cycling forward / SAE inference / activation stream."""
    counter = iter(range(requests))
    lock = threading.Lock()
    report = LoadReport(requests=requests, seconds=0.0)

    def one(stub: inference_pb2_grpc.InferenceServiceStub, i: int) -> grpc.StatusCode:
        prompt = PROMPTS[i % len(PROMPTS)]
        try:
            if i % 3 == 0:
                stub.Infer(
                    inference_pb2.InferRequest(model_id=model_id, inputs=[inference_pb2.InferInput(prompt=prompt)]),
                    timeout=30,
                )
            elif i % 3 == 1:
                stub.InferSae(
                    inference_pb2.InferSaeRequest(model_id=model_id, sae_id=sae_id, prompts=[prompt], top_k_neurons=5),
                    timeout=30,
                )
            else:
                stream = stub.StreamActivations(
                    inference_pb2.StreamActivationsRequest(
                        model_id=model_id,
                        layers=["transformer_h_0"],
                        dataset=common_pb2.DatasetSpec(texts=[prompt] * 4),
                    ),
                    timeout=30,
                )
                for _ in stream:
                    pass
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()

    def client() -> None:
        with grpc.insecure_channel(address) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                code = one(stub, i)
                ms = 1000 * (time.perf_counter() - t0)
                with lock:
                    report.latencies_ms.append(ms)
                    report.statuses[code.name] += 1

    report.rss_before_mib = rss_mib(server_pid)
    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report.seconds = time.perf_counter() - start
    report.rss_after_mib = rss_mib(server_pid)
    return report


def prepare(workdir: Path, model_dir: Path, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    """A local cluster (inference server only) with the model loaded and a small SAE trained for it."""
    from mi_crow.language_model import LanguageModel
    from mi_crow.mechanistic.sae import SaeTrainer, TopKSae
    from mi_crow.services.launcher import LocalCluster

    extra = {"MI_CROW_MODEL_ALIASES": json.dumps({"m": str(model_dir)}), **(env or {})}
    cluster = LocalCluster(workdir, workers=0, extra_env=extra)
    cluster.start()
    lm = LanguageModel(str(model_dir), store=cluster.store, aliases={"m": str(model_dir)})
    lm.model_id = "m"
    run = lm.save_activations(PROMPTS * 20, ["transformer_h_0"], progress=False)
    sae = SaeTrainer(lm, "transformer_h_0", TopKSae, {"epochs": 2, "batch_size": 64, "k": 4}, progress=False).train(run)
    assert cluster.inference is not None
    with grpc.insecure_channel(cluster.inference.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        stub.LoadModel(inference_pb2.LoadModelRequest(model_id="m"), timeout=120)
        stub.LoadSae(common_pb2.SaeRef(model_id="m", sae_id=sae.id), timeout=60)
    return cluster, sae.id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    from mi_crow.testing.tiny_models import build_tiny_model, build_tiny_tokenizer

    with tempfile.TemporaryDirectory(prefix="mi_crow_load_") as tmp:
        root = Path(tmp)
        model = build_tiny_model("gpt2", root / "model", tokenizer_dir=build_tiny_tokenizer(root / "tok"))
        cluster, sae_id = prepare(root / "cluster", model)
        try:
            assert cluster.inference is not None and cluster.inference.proc is not None
            run_load(
                cluster.inference.address, "m", sae_id, requests=50, clients=2, server_pid=cluster.inference.proc.pid
            )
            report = run_load(
                cluster.inference.address, "m", sae_id, requests=args.requests, clients=args.clients,
                server_pid=cluster.inference.proc.pid,
            )  # fmt: skip
        finally:
            cluster.stop()
    print(json.dumps(report.summary(), indent=2))


if __name__ == "__main__":
    main()
