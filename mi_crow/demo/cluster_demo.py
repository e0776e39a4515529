"""The main job through the local cluster: every step is a gRPC call to a separate process.

Harvest on the inference server, train on an RQ worker (progress streamed back), read sparse codes per
token through SAE inference, score them against the planted concepts, name the matching latents, save
steering configs and generate under them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from mi_crow.client import Client, dataset_spec
from mi_crow.demo.corpus import CONCEPTS, generate_corpus
from mi_crow.demo.ground_truth import auroc_matrix, next_token_labels, token_labels
from mi_crow.demo.pipeline import (
    STEERING_PROMPTS,
    ConceptResult,
    DemoConfig,
    concept_rate,
    print_report,
    steering_biases,
)
from mi_crow.demo.tiny_model import ensure_tiny_model
from mi_crow.services.launcher import LocalCluster
from mi_crow.v1 import artifacts_pb2, common_pb2

MODEL = "demo"
PROMPTS_PER_CALL = 64  # the inference server's per-request prompt limit


def _sparse_codes(client: Client, sae_id: str, texts: list[str], n_latents: int, k: int) -> torch.Tensor:
    """(tokens, n_latents) codes rebuilt from per-token latents (top k per token is every active latent)."""
    rows = []
    for i in range(0, len(texts), PROMPTS_PER_CALL):
        out = client.infer_sae(
            MODEL, sae_id, texts[i : i + PROMPTS_PER_CALL], top_k_neurons=k, return_token_latents=True
        )
        for prompt in out.outputs:
            for token in prompt.token_latents:
                row = torch.zeros(n_latents)
                for latent in token.latents:
                    row[latent.latent] = latent.activation
                rows.append(row)
    return torch.stack(rows)


def _train(client: Client, console: Console, run_id: str, cfg: DemoConfig) -> artifacts_pb2.Job:
    job = client.train(
        MODEL, run_id, cfg.layer, epochs=cfg.epochs, batch_size=cfg.batch_size, k=cfg.k, n_latents=cfg.n_latents
    )
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn()]
    last = job
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(f"train on a worker ({job.job_id})", total=1.0, info="queued")
        for last in client.watch(job.job_id):
            ev = last.metrics.get("explained_variance")
            info = artifacts_pb2.JobState.Name(last.state) + (f" EV {ev:.3f}" if ev is not None else "")
            bar.update(task, completed=last.progress, info=info)
    if last.state != artifacts_pb2.SUCCEEDED:
        raise RuntimeError(f"training job {job.job_id} ended {artifacts_pb2.JobState.Name(last.state)}: {last.error}")
    return last


def run_cluster_demo(cfg: DemoConfig | None = None, console: Console | None = None, workers: int = 2) -> dict[str, Any]:
    cfg = cfg or DemoConfig()
    console = console or Console()
    console.rule("[bold]mi-crow demo, through a local cluster")
    model_dir = ensure_tiny_model(cfg.workdir / "demo-model", cfg.model)
    data = (cfg.workdir / "cluster" / "data").resolve()
    data.mkdir(parents=True, exist_ok=True)
    corpus = data / "train.txt"
    corpus.write_text("\n".join(s.text for s in generate_corpus(cfg.n_train_texts, seed=101)) + "\n")
    env = {"MI_CROW_MODEL_ALIASES": json.dumps({MODEL: str(model_dir)}), "MI_CROW_DATASET_ROOTS": str(data)}
    with console.status("starting redis-server, the artifact service, the inference server and workers"):
        cluster = LocalCluster(cfg.workdir / "cluster", workers=workers, extra_env=env).start()
    try:
        assert cluster.artifacts and cluster.inference
        console.print(
            f"cluster: redis {cluster.redis_url} · artifacts {cluster.artifacts.address} · "
            f"inference {cluster.inference.address} · {len(cluster.workers)} workers"
        )
        with Client(cluster.artifacts.address, cluster.inference.address, timeout=600) as client:
            return _pipeline(client, console, cfg, corpus, cluster.store)
    finally:
        cluster.stop()


def _pipeline(client: Client, console: Console, cfg: DemoConfig, corpus: Path, store: Path) -> dict[str, Any]:
    client.load_model(MODEL)
    with console.status("harvesting on the inference server"):
        saved = client.save_activations(
            MODEL, [cfg.layer], dataset_spec(paths=[str(corpus)]), batch_size=64, shard_size=16_384
        )
    console.print(f"harvested run {saved.run_id}: {saved.n_tokens:,} tokens of {cfg.layer} in {saved.n_shards} shards")
    job = _train(client, console, saved.run_id, cfg)
    console.print(
        f"SAE {job.sae_id}: explained variance {job.metrics['explained_variance']:.3f}, L0 {job.metrics['l0']:.1f}"
    )

    eval_texts = [s.text for s in generate_corpus(cfg.n_eval_texts, seed=202)]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(cfg.workdir / "demo-model"))
    codes = _sparse_codes(client, job.sae_id, eval_texts, cfg.n_latents, cfg.k)
    per_text = token_labels(eval_texts, tokenizer, 10_000)
    labels = torch.cat(per_text)
    if labels.shape[0] != codes.shape[0]:
        raise RuntimeError(f"{codes.shape[0]} token codes but {labels.shape[0]} token labels: tokenizations differ")
    scores = auroc_matrix(codes, labels)

    top = client.infer_sae(MODEL, job.sae_id, eval_texts[:PROMPTS_PER_CALL], save_top_texts=True)
    ref = common_pb2.SaeRef(model_id=MODEL, sae_id=job.sae_id)
    top_texts = json.loads((store / top.top_texts_path).read_text())["latents"]
    results: list[ConceptResult] = []
    names: dict[str, dict[str, Any]] = {}
    for c, concept in enumerate(CONCEPTS):
        latent = int(scores[:, c].argmax())
        auroc = float(scores[latent, c])
        examples = top_texts.get(str(latent), [])
        results.append(ConceptResult(concept, latent, auroc, examples[0]["marked"] if examples else ""))
        if auroc >= 0.9:
            names[str(latent)] = {"name": concept, "description": f"planted concept '{concept}'", "score": auroc}
    client.artifacts.LoadConcepts(
        artifacts_pb2.LoadConceptsRequest(sae=ref, content=json.dumps(names).encode(), format="json"), timeout=60
    )

    # Steering: push each concept's announcing latent on neutral prompts and count its marker words.
    next_scores = auroc_matrix(codes, next_token_labels(per_text))  # every concept at once: one pass
    prompts = list(STEERING_PROMPTS)
    plain = [o.text for o in client.infer_sae(MODEL, job.sae_id, prompts, max_new_tokens=16).outputs]
    for c, r in enumerate(results):
        biases = steering_biases(codes, next_scores[:, c], r.latent, cfg.steer_strength)
        r.steered_latents = list(biases)
        request = artifacts_pb2.ManipulateConceptsRequest(sae=ref, name=f"push-{r.concept}")
        for latent, bias in biases.items():
            request.edits[latent].CopyFrom(common_pb2.LatentEdit(scale=1.0, bias=bias))
        client.artifacts.ManipulateConcepts(request, timeout=60)
        steered = client.infer_sae(MODEL, job.sae_id, prompts, max_new_tokens=16, concept_config=f"push-{r.concept}")
        r.plain_rate = concept_rate(plain, r.concept)
        r.steered_rate = concept_rate([o.text for o in steered.outputs], r.concept)

    found = print_report(console, results, f"{cfg.layer}, {cfg.n_latents} latents, k={cfg.k}, via gRPC")
    console.print(f"artifacts under {store}")
    return {
        "run_id": saved.run_id,
        "sae_id": job.sae_id,
        "explained_variance": job.metrics["explained_variance"],
        "concepts": [r.__dict__ for r in results],
        "found": found,
    }
