"""End to end: harvest on the inference server streamed live into a training worker, vs the in-process
library doing the same work (stream activations, train the same SAE), on the same model, texts and settings.

The cluster (redis-server, artifact service, inference server, one worker) is started once, outside the
timing; each timed cluster run is one job from SubmitTraining to SUCCEEDED.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.models import build_gpt2

LAYER = "transformer_h_1"
HYPER = {"epochs": 1, "batch_size": 1024, "k": 32, "n_latents": 2048}


def bench_e2e(texts: list[str], repeats: int) -> tuple[float, float, str]:
    from mi_crow.client import Client, dataset_spec
    from mi_crow.language_model import LanguageModel
    from mi_crow.mechanistic.sae import SaeTrainer, TopKSae
    from mi_crow.services.launcher import LocalCluster
    from mi_crow.store import LocalStore
    from mi_crow.v1 import artifacts_pb2

    with tempfile.TemporaryDirectory(prefix="mi_crow_bench_e2e_") as tmp:
        root = Path(tmp)
        build_gpt2(root / "model")
        lm = LanguageModel(str(root / "model"), store=root / "local-store")
        n_tokens = sum(int(lm.tokenize(texts[i : i + 16])["attention_mask"].sum()) for i in range(0, len(texts), 16))
        env = {"MI_CROW_MODEL_ALIASES": json.dumps({"bench": str(root / "model")})}
        with LocalCluster(root / "cluster", workers=1, extra_env=env) as cluster:
            assert cluster.artifacts and cluster.inference
            with Client(cluster.artifacts.address, cluster.inference.address, timeout=600) as client:
                client.load_model("bench")

                def ours() -> float:
                    t0 = time.perf_counter()
                    job = client.jobs.SubmitTraining(
                        artifacts_pb2.TrainingRequest(
                            model_id="bench",
                            layer=LAYER,
                            stream=artifacts_pb2.LiveSource(dataset=dataset_spec(texts), batch_size=16),
                            hyperparams_json=json.dumps({**HYPER, "seed": int(t0 * 1000) % 10**6}),  # a fresh job
                        )
                    )
                    final = client.wait(job.job_id, timeout=1800)
                    if final.state != artifacts_pb2.SUCCEEDED:
                        raise RuntimeError(f"benchmark job failed: {final.error}")
                    return n_tokens / (time.perf_counter() - t0)

                def reference() -> float:
                    t0 = time.perf_counter()
                    chunks = [b.activations[LAYER] for b in lm.stream_activations(texts, [LAYER], batch_size=16)]
                    trainer = SaeTrainer(
                        lm, LAYER, TopKSae, HYPER, store=LocalStore(root / "ref-store"), progress=False
                    )
                    trainer.train(torch.cat(chunks))
                    return n_tokens / (time.perf_counter() - t0)

                ours()  # warm-up: the worker's first job, the server's first stream
                reference()
                o, r = [], []
                for i in range(repeats):
                    pair = (ours, reference) if i % 2 == 0 else (reference, ours)
                    for side in pair:
                        (o if side is ours else r).append(side())
    note = (
        f"{len(texts)} texts, {n_tokens} tokens, {LAYER} of a 4x256 GPT-2, TopK {HYPER['n_latents']} latents; "
        "ours: SubmitTraining (LiveSource) to SUCCEEDED; ref: in-process stream_activations + SaeTrainer"
    )
    return statistics.median(o), statistics.median(r), note
