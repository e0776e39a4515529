"""The cluster from Python: load a model on the inference server, stream activations, save a run, train an
SAE on a worker while watching its progress, then run SAE inference with and without steering.

With no addresses given it starts a private local cluster (redis-server, artifact service, inference server,
one worker: the same processes `mi-crow up` and docker compose run) serving the bundled tiny GPT-2:

    .venv/bin/python examples/02_cluster_quickstart.py --quick

To use a running cluster instead, set MI_CROW_ARTIFACTS_ADDRESS and MI_CROW_INFERENCE_ADDRESS (and
MI_CROW_API_KEY when it needs keys) and name a model its inference server may load with --model.
"""

from __future__ import annotations

import argparse
import json
import os
from contextlib import ExitStack
from pathlib import Path

from mi_crow.client import Client, dataset_spec
from mi_crow.demo import generate_corpus
from mi_crow.demo.tiny_model import TinyModelConfig, ensure_tiny_model
from mi_crow.services.launcher import LocalCluster
from mi_crow.v1 import artifacts_pb2

QUICK_MODEL = TinyModelConfig(steps=150, n_samples=800, n_layer=2, n_embd=64)


def start_local_cluster(stack: ExitStack, workdir: Path, quick: bool) -> tuple[str, str, str]:
    """A private cluster whose inference server knows the tiny model under the alias "tiny"."""
    model_dir = ensure_tiny_model(workdir / ("model-quick" if quick else "model"), QUICK_MODEL if quick else None)
    # The inference server loads only aliases and hub ids, never arbitrary paths from a request.
    env = {"MI_CROW_MODEL_ALIASES": json.dumps({"tiny": str(model_dir)})}
    cluster = stack.enter_context(LocalCluster(workdir / "cluster", workers=1, extra_env=env))
    assert cluster.artifacts and cluster.inference
    print(f"started a local cluster: artifacts {cluster.artifacts.address}, inference {cluster.inference.address}")
    return cluster.artifacts.address, cluster.inference.address, "tiny"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(".mi_crow/examples"))
    parser.add_argument("--quick", action="store_true", help="small model, corpus and SAE")
    parser.add_argument("--model", default="", help="model id to load on a running cluster (default: tiny)")
    parser.add_argument("--layer", default="", help="layer to harvest (default: the tiny model's last block)")
    args = parser.parse_args()
    layer = args.layer or ("transformer_h_1" if args.quick else "transformer_h_2")

    with ExitStack() as stack:
        artifacts = os.environ.get("MI_CROW_ARTIFACTS_ADDRESS")
        inference = os.environ.get("MI_CROW_INFERENCE_ADDRESS")
        if artifacts and inference:
            model = args.model or "tiny"
            print(f"using the cluster at artifacts {artifacts}, inference {inference}")
        else:
            artifacts, inference, model = start_local_cluster(stack, args.workdir, args.quick)
        client = stack.enter_context(Client(artifacts, inference, api_key=os.environ.get("MI_CROW_API_KEY")))

        # 1. Load the model on the inference server (a no-op when it is loaded already) and list its layers.
        info = client.load_model(model)
        print(f"loaded {info.model_id} on {info.device} ({info.dtype}); {len(client.layers(model))} layers")

        # 2. Stream activations: float32 rows [tokens, d_model] arrive chunk by chunk, checksummed, nothing stored.
        texts = [s.text for s in generate_corpus(600 if args.quick else 3000, seed=101)]
        chunks = list(client.stream_activations(model, [layer], dataset_spec(texts[:32])))
        rows = sum(tensor.shape[0] for _, tensor, _ in chunks)
        print(f"streamed {rows} token rows of {layer} in {len(chunks)} chunks (d_model {chunks[0][1].shape[1]})")

        # 3. Save a run on the shared volume: what a training job reads.
        saved = client.save_activations(model, [layer], dataset_spec(texts), batch_size=64)
        print(f"saved run {saved.run_id}: {saved.n_tokens} tokens in {saved.n_shards} shards")

        # 4. Train on a worker; WatchJob streams state, progress and metrics until the job ends.
        sizes = {"epochs": 3, "batch_size": 256, "n_latents": 128, "k": 8}
        submitted = client.train(model, saved.run_id, layer, **sizes)
        for job in client.watch(submitted.job_id):
            ev = job.metrics.get("explained_variance")
            state = artifacts_pb2.JobState.Name(job.state)
            print(f"job {job.job_id}: {state} {job.progress:.0%}" + (f" EV {ev:.3f}" if ev is not None else ""))
        if job.state != artifacts_pb2.SUCCEEDED:
            raise SystemExit(f"training ended {artifacts_pb2.JobState.Name(job.state)}: {job.error}")
        print(f"SAE {job.sae_id}: explained variance {job.metrics['explained_variance']:.3f}")

        # 5. SAE inference: the strongest latents per prompt and per token, then a continuation plain and steered.
        prompt = ["the cat sat near the river."]
        out = client.infer_sae(model, job.sae_id, prompt, top_k_neurons=3, return_token_latents=True)
        print("top latents:", [(a.latent, round(a.activation, 2)) for a in out.outputs[0].top_latents])
        # The latent firing hardest on the token "cat" (other tokenizers mark the leading space as "▁" or "Ġ").
        tokens = [t for t in out.outputs[0].token_latents if t.latents]
        token = next((t for t in tokens if t.token.strip(" ▁Ġ") == "cat"), tokens[0])
        latent = token.latents[0].latent
        print(f"latent {latent} fires hardest on {token.token!r} (activation {token.latents[0].activation:.2f})")
        prompts = ["the", "yesterday"]
        plain = client.infer_sae(model, job.sae_id, prompts, max_new_tokens=12)
        # Inline edits (latent -> scale, bias); or save them as a named config with ManipulateConcepts and pass
        # concept_config=NAME instead.
        edits = {latent: {"scale": 1.0, "bias": 8.0}}
        steered = client.infer_sae(model, job.sae_id, prompts, max_new_tokens=12, edits=edits)
        for a, b in zip(plain.outputs, steered.outputs, strict=True):
            print(f"plain:   {a.prompt!r} -> {a.text!r}")
            print(f"steered: {b.prompt!r} -> {b.text!r}  (latent {latent} +8)")


if __name__ == "__main__":
    main()
