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
    workdir: Path | None = typer.Option(
        None, help="where the demo model and artifacts live (env MI_CROW_HOME, else .mi_crow)"
    ),
    quick: bool = typer.Option(False, help="smaller corpus and SAE, for a fast smoke run"),
    local: bool = typer.Option(False, help="run in this process with the library only, no cluster"),
    workers: int = typer.Option(2, help="RQ workers in the local cluster"),
) -> None:
    """Run the whole pipeline on the bundled tiny model (through a local cluster) and print what it found."""
    from mi_crow.demo.cluster_demo import run_cluster_demo
    from mi_crow.demo.pipeline import DemoConfig, run_demo
    from mi_crow.demo.tiny_model import TinyModelConfig

    cfg = DemoConfig() if workdir is None else DemoConfig(workdir=workdir)
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


@app.command()
def dashboard(
    model: str = typer.Option(..., "--model", help="hub id, local directory or alias of the SAE's model"),
    sae: str = typer.Option(..., "--sae", help="SAE id in the store"),
    out: Path = typer.Option(..., "--out", help="directory to write index.html into"),
    texts: Path | None = typer.Option(None, "--texts", help="a .txt/.jsonl/.csv file of texts"),
    dataset: str | None = typer.Option(None, "--dataset", help="a saved dataset directory or a hub dataset name"),
    split: str | None = typer.Option(None, help="dataset split (hub datasets: default train)"),
    text_field: str = typer.Option("text", help="column holding the text in .jsonl/.csv/datasets"),
    sample_limit: int | None = typer.Option(None, help="use at most this many texts"),
    latent: list[int] = typer.Option([], "--latent", help="show these latents (repeatable); default: the densest"),
    max_latents: int = typer.Option(256, help="cap on the latents shown when --latent is not given"),
    top_k: int = typer.Option(10, help="top activating examples per latent"),
    max_tokens: int = typer.Option(1_000_000, help="stop reading texts after this many tokens"),
    batch_size: int = 16,
    store: Path | None = typer.Option(None, help="artifact root (default MI_CROW_STORE)"),
) -> None:
    """Build feature dashboards of a stored SAE: stores dashboard.json next to it and writes OUT/index.html."""
    from mi_crow.datasets import TextDataset, as_text_dataset
    from mi_crow.language_model import LanguageModel
    from mi_crow.mechanistic.dashboards import build_stored_dashboard, copy_page

    if (texts is None) == (dataset is None):
        raise typer.BadParameter("give exactly one of --texts or --dataset")
    if texts is not None:
        data = as_text_dataset(texts, text_field=text_field, sample_limit=sample_limit)
    elif Path(dataset).exists():
        data = as_text_dataset(str(dataset), text_field=text_field, split=split, sample_limit=sample_limit)
    else:
        data = TextDataset.from_hf(dataset, split=split or "train", text_field=text_field, sample_limit=sample_limit)
    lm = LanguageModel(model, store=store)
    result = build_stored_dashboard(
        lm, sae, data, latents=latent or None, max_latents=max_latents, top_k=top_k, max_tokens=max_tokens,
        batch_size=batch_size, progress=True,
    )  # fmt: skip
    page = copy_page(result, out)
    summary = {"sae_id": sae, "latents": len(result.dashboard.latents), "tokens": result.dashboard.n_tokens}
    typer.echo(json.dumps({**summary, "dashboard": str(result.json_path), "html": str(page)}))


@app.command()
def evaluate(
    model: str = typer.Argument(..., help="hub id, local directory or alias"),
    sae_id: str = typer.Argument(..., help="a stored SAE of this model"),
    data: str = typer.Argument(..., help="held-out texts: a .txt/.jsonl/.csv file or a saved HF dataset directory"),
    max_tokens: int = 32_768,
    batch_size: int = 16,
    downstream: bool = typer.Option(True, help="also CE recovered and KL (three full forwards per batch)"),
    save: bool = typer.Option(True, help="store the result as eval.json next to the SAE"),
    store: Path | None = None,
) -> None:
    """Evaluate a stored SAE on held-out texts; prints the evaluation as JSON."""
    from mi_crow.language_model import LanguageModel
    from mi_crow.mechanistic.evaluation import evaluate_sae

    lm = LanguageModel(model, store=store)
    concepts = lm.load_concepts(sae_id)
    report = evaluate_sae(lm, concepts.sae, data, max_tokens=max_tokens, batch_size=batch_size, downstream=downstream)
    if save:
        report.save(concepts.sae_dir)
    typer.echo(json.dumps({k: v for k, v in report.to_dict().items() if k != "latent_density"}))


def _server_config(port: int | None, redis_url: str | None, store: Path | None, host: str | None = None):
    from mi_crow.services.common.config import ServerConfig
    from mi_crow.services.common.logs import configure

    configure()  # JSON lines on stderr, each with the request id of the call it belongs to
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
    """Exit 0 if the server reports SERVING (used by container healthchecks; TLS when MI_CROW_TLS_CA is set)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from mi_crow.services.common.outbound import open_channel

    with open_channel(address) as channel:
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
    inference: int = typer.Option(1, help="number of inference servers (they register in Redis for discovery)"),
    redis_url: str | None = typer.Option(None, help="use this Redis instead of starting a private one"),
) -> None:
    """Start a whole local cluster on this machine and keep it running until Ctrl-C."""
    import time

    from mi_crow.services.launcher import LocalCluster

    with LocalCluster(workdir.resolve(), redis_url=redis_url, workers=workers, inference=inference) as cluster:
        console.print(f"redis      {cluster.redis_url}")
        console.print(f"artifacts  {cluster.artifacts.address if cluster.artifacts else '-'}")
        console.print(f"inference  {', '.join(s.address for s in cluster.inference_servers) or '-'}")
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
