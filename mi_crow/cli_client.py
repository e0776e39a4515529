"""``mi-crow client ...``: the seed server's curl examples as commands, over gRPC, with progress bars."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

app = typer.Typer(help="Call a running cluster (addresses from flags or MI_CROW_*_ADDRESS).", no_args_is_help=True)
console = Console()

ArtifactsOpt = typer.Option(None, "--artifacts", envvar="MI_CROW_ARTIFACTS_ADDRESS", help="artifact service host:port")
InferenceOpt = typer.Option(None, "--inference", envvar="MI_CROW_INFERENCE_ADDRESS", help="inference server host:port")
KeyOpt = typer.Option(None, "--api-key", envvar="MI_CROW_API_KEY", help="sent as 'authorization: Bearer <key>'")


def _client(artifacts: str | None = None, inference: str | None = None, api_key: str | None = None):
    from mi_crow.client import Client

    if not artifacts and not inference:
        raise typer.BadParameter("give --artifacts and/or --inference (or set MI_CROW_*_ADDRESS)")
    from mi_crow.services.common.outbound import channel_credentials

    return Client(artifacts, inference, api_key=api_key, tls=channel_credentials())  # MI_CROW_TLS_CA etc.


def _print(message: Message | list[Message]) -> None:
    if isinstance(message, list):
        data = [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in message]
    else:
        data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


def _dataset(texts: list[str] | None, paths: list[str] | None, hf: str | None, split: str, field: str, limit: int):
    from mi_crow.client import dataset_spec

    return dataset_spec(texts, paths=paths, hf_name=hf or "", split=split, text_field=field, sample_limit=limit)


@app.command("load-model")
def load_model(model_id: str, inference: str = InferenceOpt, dtype: str = "", device: str = "") -> None:
    """Load a model on the inference server (alias, hub id or allowed directory)."""
    with _client(inference=inference) as c:
        _print(c.load_model(model_id, dtype=dtype, device=device))


@app.command()
def layers(model_id: str, inference: str = InferenceOpt) -> None:
    """A loaded model's layers with output shapes."""
    with _client(inference=inference) as c:
        for layer in c.layers(model_id):
            typer.echo(f"{layer.name:60s} {layer.type:28s} {list(layer.output_shape)}")


@app.command("save-activations")
def save_activations(
    model_id: str,
    layer: list[str] = typer.Option(..., "--layer", "-l"),
    text: list[str] = typer.Option(None, "--text", help="inline text (repeatable)"),
    path: list[str] = typer.Option(None, "--path", help="server-side file or dataset dir under the dataset roots"),
    hf: str | None = typer.Option(None, help="Hugging Face dataset name"),
    split: str = "",
    text_field: str = "",
    sample_limit: int = 0,
    batch_size: int = 16,
    shard_size: int = 65_536,
    run_id: str = "",
    inference: str = InferenceOpt,
) -> None:
    """Harvest activations into a stored run (the seed's POST /sae/activations/save)."""
    spec = _dataset(text, path, hf, split, text_field, sample_limit)
    with _client(inference=inference) as c, console.status("harvesting on the inference server"):
        out = c.save_activations(model_id, layer, spec, batch_size=batch_size, shard_size=shard_size, run_id=run_id)
    _print(out)


@app.command()
def runs(model_id: str = "", artifacts: str = ArtifactsOpt) -> None:
    """List activation runs."""
    with _client(artifacts) as c:
        _print(c.list_runs(model_id))


def _watch(c, job_id: str) -> None:  # type: ignore[no-untyped-def]
    from mi_crow.v1 import artifacts_pb2

    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn()]
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(job_id, total=1.0, info="queued")
        last = None
        for last in c.watch(job_id):
            state = artifacts_pb2.JobState.Name(last.state)
            ev = last.metrics.get("explained_variance")
            info = f"{state} step {last.step}/{last.total_steps or '?'}" + (f" EV {ev:.3f}" if ev is not None else "")
            bar.update(task, completed=last.progress, info=info)
    if last is not None:
        _print(last)
        if artifacts_pb2.JobState.Name(last.state) != "SUCCEEDED":
            raise typer.Exit(1)


@app.command()
def train(
    model_id: str,
    run_id: str,
    layer: str = typer.Option("", "--layer", "-l"),
    sae_class: str = "TopKSae",
    epochs: int = 1,
    batch_size: int = 0,
    k: int = 0,
    n_latents: int = 0,
    idempotency_key: str = "",
    watch: bool = typer.Option(True, help="follow the job with a progress bar until it ends"),
    artifacts: str = ArtifactsOpt,
) -> None:
    """Submit SAE training (the seed's POST /sae/train) and watch it."""
    with _client(artifacts) as c:
        job = c.train(
            model_id,
            run_id,
            layer,
            sae_class=sae_class,
            epochs=epochs,
            batch_size=batch_size,
            k=k,
            n_latents=n_latents,
            idempotency_key=idempotency_key,
        )
        if watch:
            _watch(c, job.job_id)
        else:
            _print(job)


@app.command()
def status(job_id: str, artifacts: str = ArtifactsOpt) -> None:
    """A job's state, progress, metrics, logs and SAE paths."""
    with _client(artifacts) as c:
        _print(c.job(job_id))


@app.command()
def watch(job_id: str, artifacts: str = ArtifactsOpt) -> None:
    """Follow a job with a progress bar until it ends."""
    with _client(artifacts) as c:
        _watch(c, job_id)


@app.command()
def cancel(job_id: str, artifacts: str = ArtifactsOpt) -> None:
    """Stop a queued or running job."""
    with _client(artifacts) as c:
        _print(c.cancel(job_id))


@app.command()
def saes(model_id: str = "", artifacts: str = ArtifactsOpt) -> None:
    """List SAEs."""
    with _client(artifacts) as c:
        _print(c.list_saes(model_id))


@app.command()
def infer(
    model_id: str,
    sae_id: str,
    prompt: list[str] = typer.Argument(...),
    top_k_neurons: int = 10,
    token_latents: bool = False,
    save_top_texts: bool = False,
    config: str = typer.Option("", help="saved concept config to steer with"),
    max_new_tokens: int = 0,
    inference: str = InferenceOpt,
) -> None:
    """SAE inference (the seed's POST /sae/infer)."""
    with _client(inference=inference) as c:
        _print(
            c.infer_sae(
                model_id,
                sae_id,
                prompt,
                top_k_neurons=top_k_neurons,
                return_token_latents=token_latents,
                save_top_texts=save_top_texts,
                concept_config=config,
                max_new_tokens=max_new_tokens,
            )
        )


@app.command()
def evaluate(
    model_id: str,
    sae_id: str,
    text: list[str] = typer.Option(None, "--text", help="held-out text (repeatable)"),
    path: list[str] = typer.Option(None, "--path", help="server-side file or dataset dir under the dataset roots"),
    hf: str | None = typer.Option(None, help="Hugging Face dataset name"),
    split: str = "",
    text_field: str = "",
    sample_limit: int = 0,
    max_tokens: int = 0,
    batch_size: int = 0,
    downstream: bool = typer.Option(True, help="also CE recovered and KL (three full forwards per batch)"),
    inference: str = InferenceOpt,
) -> None:
    """Evaluate an SAE on held-out texts (reconstruction, dead/dense latents, CE recovered, KL); stored with it."""
    spec = _dataset(text, path, hf, split, text_field, sample_limit)
    with _client(inference=inference) as c, console.status("evaluating on the inference server"):
        out = c.evaluate_sae(
            model_id, sae_id, spec, max_tokens=max_tokens, batch_size=batch_size, downstream=downstream
        )
    _print(out.evaluation)


def _steer(spec: str):  # type: ignore[no-untyped-def]
    from mi_crow.client import steering_edit

    parts = spec.split(":")  # SAE ids and layer names never hold a colon
    if not 3 <= len(parts) <= 5 or (len(parts) == 3 and parts[2].lower() != "ablate"):
        raise typer.BadParameter(f"{spec!r}: use SAE:LATENT:scale|add:VALUE[:LAYER] or SAE:LATENT:ablate[:0:LAYER]")
    sae_id, latent, mode, value, layer = (*parts, *[""] * (5 - len(parts)))
    try:
        return steering_edit(sae_id, int(latent), mode, float(value or 0.0), layer)
    except ValueError as exc:
        raise typer.BadParameter(f"{spec!r}: {exc}") from None


@app.command()
def generate(
    model_id: str,
    prompt: str,
    max_new_tokens: int = 32,
    sample: bool = typer.Option(False, help="sample instead of decoding greedily"),
    temperature: float = 0.0,
    seed: int = typer.Option(0, help="sampling seed (0: the server draws one when comparing)"),
    steer: list[str] = typer.Option(
        None, "--steer", help="SAE:LATENT:MODE[:VALUE[:LAYER]], MODE scale, add or ablate (repeatable)"
    ),
    compare: bool = typer.Option(False, help="also print the continuation without steering, from the same seed"),
    inference: str = InferenceOpt,
) -> None:
    """Stream a continuation, optionally steering SAE latents, side by side with the unsteered one."""
    edits = [_steer(s) for s in steer or []]
    with _client(inference=inference) as c:
        if compare:
            typer.echo("--- steered ---")
        done = None
        for done in c.generate(
            model_id,
            prompt,
            steering=edits,
            compare_unsteered=compare,
            max_new_tokens=max_new_tokens,
            do_sample=sample,
            temperature=temperature,
            seed=seed,
        ):
            typer.echo(done.text, nl=False)
        typer.echo()
        if compare and done is not None:
            typer.echo(f"--- unsteered (seed {done.seed}) ---")
            typer.echo(done.unsteered_text)


def _ref(model_id: str, sae_id: str):  # type: ignore[no-untyped-def]
    from mi_crow.v1 import common_pb2

    return common_pb2.SaeRef(model_id=model_id, sae_id=sae_id)


@app.command()
def concepts(model_id: str, sae_id: str, artifacts: str = ArtifactsOpt) -> None:
    """An SAE's concept dictionary and concept files."""
    with _client(artifacts) as c:
        _print(c.artifacts.ListConcepts(_ref(model_id, sae_id), timeout=c.timeout))


@app.command("load-concepts")
def load_concepts(model_id: str, sae_id: str, file: Path, artifacts: str = ArtifactsOpt) -> None:
    """Upload a concept dictionary (JSON or CSV), validated against the SAE."""
    from mi_crow.v1 import artifacts_pb2

    fmt = "csv" if file.suffix.lower() == ".csv" else "json"
    req = artifacts_pb2.LoadConceptsRequest(sae=_ref(model_id, sae_id), content=file.read_bytes(), format=fmt)
    with _client(artifacts) as c:
        _print(c.artifacts.LoadConcepts(req, timeout=c.timeout))


def _edits(pairs: list[str]) -> dict[int, dict[str, float]]:
    edits = {}
    for pair in pairs:
        latent, _, value = pair.partition("=")
        scale, _, bias = value.partition(",")
        try:
            edits[int(latent)] = {"scale": float(scale), "bias": float(bias or 0.0)}
        except ValueError:
            raise typer.BadParameter(f"{pair!r}: use LATENT=SCALE or LATENT=SCALE,BIAS") from None
    return edits


def _manipulate_request(model_id: str, sae_id: str, pairs: list[str], name: str):  # type: ignore[no-untyped-def]
    from mi_crow.v1 import artifacts_pb2, common_pb2

    req = artifacts_pb2.ManipulateConceptsRequest(sae=_ref(model_id, sae_id), name=name)
    for latent, edit in _edits(pairs).items():
        req.edits[latent].CopyFrom(common_pb2.LatentEdit(**edit))
    return req


@app.command()
def manipulate(
    model_id: str,
    sae_id: str,
    edit: list[str] = typer.Argument(..., help="LATENT=SCALE[,BIAS]"),
    name: str = "default",
    artifacts: str = ArtifactsOpt,
) -> None:
    """Save per-latent edits as a concept config (the seed's POST /sae/concepts/manipulate)."""
    with _client(artifacts) as c:
        _print(c.artifacts.ManipulateConcepts(_manipulate_request(model_id, sae_id, edit, name), timeout=c.timeout))


@app.command()
def preview(
    model_id: str,
    sae_id: str,
    edit: list[str] = typer.Argument(..., help="LATENT=SCALE[,BIAS]"),
    artifacts: str = ArtifactsOpt,
) -> None:
    """Validate and normalize edits without saving them."""
    with _client(artifacts) as c:
        _print(c.artifacts.PreviewConcepts(_manipulate_request(model_id, sae_id, edit, ""), timeout=c.timeout))


@app.command()
def configs(model_id: str, sae_id: str, artifacts: str = ArtifactsOpt) -> None:
    """List saved concept configs of an SAE."""
    with _client(artifacts) as c:
        _print(c.artifacts.ListConceptConfigs(_ref(model_id, sae_id), timeout=c.timeout))


@app.command("delete-run")
def delete_run(model_id: str, run_id: str, artifacts: str = ArtifactsOpt, api_key: str = KeyOpt) -> None:
    """Delete an activation run (needs the admin key when one is configured)."""
    with _client(artifacts, api_key=api_key) as c:
        typer.echo(json.dumps({"deleted": c.delete_run(model_id, run_id)}))


@app.command("delete-sae")
def delete_sae(model_id: str, sae_id: str, artifacts: str = ArtifactsOpt, api_key: str = KeyOpt) -> None:
    """Delete an SAE and its concepts (needs the admin key when one is configured)."""
    with _client(artifacts, api_key=api_key) as c:
        typer.echo(json.dumps({"deleted": c.delete_sae(model_id, sae_id)}))


@app.command()
def metrics(artifacts: str = ArtifactsOpt) -> None:
    """Job counts by state."""
    with _client(artifacts) as c:
        _print(c.metrics())
