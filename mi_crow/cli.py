"""``mi-crow`` command line: the demo and library workflows with progress bars."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(help="mi-crow: mechanistic interpretability for LLMs.", no_args_is_help=True)
console = Console()


@app.command()
def demo(
    workdir: Path = typer.Option(Path(".mi_crow"), help="where the demo model and artifacts live"),
    quick: bool = typer.Option(False, help="smaller corpus and SAE, for a fast smoke run"),
) -> None:
    """Run the whole pipeline on the bundled tiny model and print what it found."""
    from mi_crow.demo.pipeline import DemoConfig, run_demo
    from mi_crow.demo.tiny_model import TinyModelConfig

    cfg = DemoConfig(workdir=workdir)
    if quick:
        cfg.n_train_texts, cfg.n_eval_texts, cfg.epochs, cfg.layer = 600, 150, 4, "transformer_h_1"
        cfg.model = TinyModelConfig(steps=150, n_samples=800, n_layer=2, n_embd=64)
    run_demo(cfg, console)


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
