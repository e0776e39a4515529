"""``mi-crow`` command line: the demo and library workflows with progress bars."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(help="mi-crow: mechanistic interpretability for LLMs.", no_args_is_help=True)
console = Console()


def _register_client() -> None:
    from mi_crow.cli_client import app as client_app

    app.add_typer(client_app, name="client")


_register_client()


@app.command()
def demo(
    workdir: Path = typer.Option(Path(".mi_crow"), help="where the demo model and artifacts live"),
    quick: bool = typer.Option(False, help="smaller corpus and SAE, for a fast smoke run"),
    local: bool = typer.Option(False, help="run in this process with the library only, no cluster"),
    workers: int = typer.Option(2, help="RQ workers in the local cluster"),
) -> None:
    """Run the whole pipeline on the bundled tiny model (through a local cluster) and print what it found."""
    from mi_crow.demo.cluster_demo import run_cluster_demo
    from mi_crow.demo.pipeline import DemoConfig, run_demo
    from mi_crow.demo.tiny_model import TinyModelConfig

    cfg = DemoConfig(workdir=workdir)
    if quick:
        cfg.n_train_texts, cfg.n_eval_texts, cfg.epochs, cfg.layer = 600, 150, 4, "transformer_h_1"
        cfg.model = TinyModelConfig(steps=150, n_samples=800, n_layer=2, n_embd=64)
    if local:
        run_demo(cfg, console)
    else:
        run_cluster_demo(cfg, console, workers=workers)


@app.command("train-demo-model")
def train_demo_model(out_dir: Path = typer.Argument(..., help="directory to write the model into")) -> None:
    """Train the tiny GPT-2 on the planted-concept corpus and save it in HuggingFace format."""
    from mi_crow.demo.tiny_model import ensure_tiny_model

    console.print(f"model at {ensure_tiny_model(out_dir)}")


@app.command()
def layers(model: str = typer.Argument(..., help="hub id, local directory or alias")) -> None:
    """List a model's layers with their output shapes."""
    from mi_crow.language_model import LanguageModel

    lm = LanguageModel(model)
    for info in lm.layers():
        console.print(f"{info.name:60s} {info.type:28s} {info.output_shape}")


@app.command()
def harvest(
    model: str = typer.Argument(...),
    data: str = typer.Argument(..., help="a .txt/.jsonl/.csv file or a saved HF dataset directory"),
    layer: list[str] = typer.Option(..., "--layer", "-l"),
    batch_size: int = 16,
    shard_size: int = 65_536,
    sample_limit: int | None = None,
    run_id: str | None = None,
    store: Path | None = None,
) -> None:
    """Save activations of layers over a dataset; prints the run's manifest path."""
    from mi_crow.language_model import LanguageModel

    lm = LanguageModel(model, store=store)
    run = lm.save_activations(
        data, layer, batch_size=batch_size, shard_size=shard_size, sample_limit=sample_limit, run_id=run_id
    )
    typer.echo(json.dumps({"run_id": run.run_id, "manifest": str(run.manifest_path), "tokens": run.n_tokens}))


@app.command()
def train(
    run: str = typer.Argument(..., help="run id or manifest path"),
    layer: str | None = typer.Option(None, "--layer", "-l"),
    sae_class: str = "TopKSae",
    epochs: int = 1,
    batch_size: int = 4096,
    k: int | None = None,
    n_latents: int | None = None,
    store: Path | None = None,
) -> None:
    """Train an SAE on a stored run; prints the SAE id."""
    from mi_crow.mechanistic.sae import SaeTrainer
    from mi_crow.store import LocalStore

    hyper = {"epochs": epochs, "batch_size": batch_size, "k": k, "n_latents": n_latents}
    trainer = SaeTrainer(None, layer, sae_class, hyper, store=LocalStore(store))
    sae = trainer.train(run)
    typer.echo(json.dumps({"sae_id": sae.id, "final": trainer.epochs[-1]}))


def _server_config(port: int | None, redis_url: str | None, store: Path | None, host: str | None = None):
    import logging

    from mi_crow.services.common.config import ServerConfig

    logging.basicConfig(
        level=logging.INFO, format='{"t": "%(asctime)s", "level": "%(levelname)s", "msg": "%(message)s"}'
    )
    return ServerConfig.from_env(port=port, redis_url=redis_url, artifact_root=store, host=host)


@app.command("serve-artifacts")
def serve_artifacts(
    port: int | None = typer.Option(None, help="0 picks a free port; default MI_CROW_PORT or 0"),
    host: str | None = typer.Option(None, help="bind address (default MI_CROW_HOST or 127.0.0.1)"),
    redis_url: str | None = typer.Option(None, help="default MI_CROW_REDIS_URL"),
    store: Path | None = typer.Option(None, help="artifact root (default MI_CROW_STORE)"),
) -> None:
    """Run the metadata/artifact service (ArtifactService + JobService)."""
    from mi_crow.services.artifacts.server import main as serve

    serve(_server_config(port, redis_url, store, host))


@app.command("serve-inference")
def serve_inference(
    port: int | None = typer.Option(None, help="0 picks a free port; default MI_CROW_PORT or 0"),
    host: str | None = typer.Option(None, help="bind address (default MI_CROW_HOST or 127.0.0.1)"),
    store: Path | None = typer.Option(None, help="artifact root (default MI_CROW_STORE)"),
) -> None:
    """Run the model-inference server (the only process that holds models)."""
    from mi_crow.services.inference.server import main as serve

    serve(_server_config(port, None, store, host))


@app.command()
def worker(
    redis_url: str | None = typer.Option(None, help="default MI_CROW_REDIS_URL"),
    store: Path | None = typer.Option(None, help="artifact root (default MI_CROW_STORE)"),
    burst: bool = typer.Option(False, help="exit when the queue is empty"),
) -> None:
    """Run one RQ training worker."""
    from mi_crow.workers.worker import run_worker

    run_worker(_server_config(None, redis_url, store), burst=burst)


@app.command()
def health(address: str = typer.Argument(..., help="host:port of any mi-crow server")) -> None:
    """Exit 0 if the server reports SERVING (used by container healthchecks)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.RpcError as exc:
            console.print(f"{address}: {exc.code().name}")
            raise typer.Exit(1) from None
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    console.print(f"{address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
    raise typer.Exit(0 if serving else 1)


@app.command()
def up(
    workdir: Path = typer.Option(Path(".mi_crow/cluster"), help="store, Redis data and logs"),
    workers: int = typer.Option(2, help="number of RQ training workers"),
    redis_url: str | None = typer.Option(None, help="use this Redis instead of starting a private one"),
) -> None:
    """Start a whole local cluster on this machine and keep it running until Ctrl-C."""
    import time

    from mi_crow.services.launcher import LocalCluster

    with LocalCluster(workdir.resolve(), redis_url=redis_url, workers=workers) as cluster:
        console.print(f"redis      {cluster.redis_url}")
        console.print(f"artifacts  {cluster.artifacts.address if cluster.artifacts else '-'}")
        console.print(f"inference  {cluster.inference.address if cluster.inference else '-'}")
        console.print(f"workers    {', '.join(w.name for w in cluster.workers)}")
        console.print(f"logs       {cluster.workdir / 'logs'}  (Ctrl-C stops everything)")
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            console.print("stopping")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
