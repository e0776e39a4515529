"""``mi_crow.client``: a high-level Python client over the generated stubs.

Every call has a deadline; UNAVAILABLE is retried with exponential backoff by gRPC itself (service
config), so a restarting server is waited for rather than reported as an error.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import torch

from mi_crow.allocator import tune_for_large_buffers
from mi_crow.v1 import artifacts_pb2, artifacts_pb2_grpc, common_pb2, inference_pb2, inference_pb2_grpc

_RETRY = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "mi_crow.v1.ArtifactService"}, {"service": "mi_crow.v1.JobService"},
                         {"service": "mi_crow.v1.InferenceService"}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)  # fmt: skip
# Dashboards (JSON plus a self-contained page) can exceed gRPC's 4 MiB default for one message.
_OPTIONS = [
    ("grpc.enable_retries", 1),
    ("grpc.service_config", _RETRY),
    ("grpc.max_receive_message_length", 64 << 20),
]


def _channel(address: str, tls: grpc.ChannelCredentials | None) -> grpc.Channel:
    if tls is not None:
        return grpc.secure_channel(address, tls, options=_OPTIONS)
    return grpc.insecure_channel(address, options=_OPTIONS)


def tls_credentials(
    ca: str | Path | None = None, cert: str | Path | None = None, key: str | Path | None = None
) -> grpc.ChannelCredentials:
    """TLS to servers signed by ``ca`` (system roots when None); ``cert``/``key`` for mutual TLS."""
    read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
    return grpc.ssl_channel_credentials(root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert))


def dataset_spec(
    texts: Sequence[str] | None = None,
    *,
    paths: Sequence[str] | None = None,
    hf_name: str = "",
    split: str = "",
    text_field: str = "",
    sample_limit: int = 0,
) -> common_pb2.DatasetSpec:
    return common_pb2.DatasetSpec(
        texts=list(texts or []),
        paths=list(paths or []),
        hf_name=hf_name,
        split=split,
        text_field=text_field,
        sample_limit=sample_limit,
    )


def steering_edit(
    sae_id: str, latent: int, mode: str = "scale", value: float = 1.0, layer: str = ""
) -> inference_pb2.SteeringEdit:
    """One steering edit: ``mode`` is "scale", "add" or "ablate" (see SteeringMode in inference.proto)."""
    if mode.lower() not in ("scale", "add", "ablate"):
        raise ValueError(f"unknown steering mode {mode!r}; use scale, add or ablate")
    enum = inference_pb2.SteeringMode.Value(f"STEERING_MODE_{mode.upper()}")
    return inference_pb2.SteeringEdit(sae_id=sae_id, latent=int(latent), mode=enum, value=float(value), layer=layer)


def _steering(edits: Sequence[Any]) -> list[inference_pb2.SteeringEdit]:
    """Edits as messages, dicts of steering_edit's arguments, or tuples (sae_id, latent, mode, value[, layer])."""
    out = []
    for edit in edits:
        if isinstance(edit, inference_pb2.SteeringEdit):
            out.append(edit)
        elif isinstance(edit, Mapping):
            out.append(steering_edit(**edit))
        else:
            out.append(steering_edit(*edit))
    return out


class Client:
    """Talks to an artifact service and (optionally) an inference server."""

    def __init__(
        self,
        artifacts: str | None = None,
        inference: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        tls: grpc.ChannelCredentials | None = None,
    ) -> None:
        tune_for_large_buffers()  # activation streams arrive as 1 MiB messages
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._tls = tls
        self._channels: list[grpc.Channel] = []
        if artifacts:
            ch = _channel(artifacts, tls)
            self._channels.append(ch)
            self.artifacts = artifacts_pb2_grpc.ArtifactServiceStub(ch)
            self.jobs = artifacts_pb2_grpc.JobServiceStub(ch)
        if inference:
            self._use_inference_channel(_channel(inference, tls))

    @classmethod
    def discover(cls, artifacts: str, model_id: str, **kwargs: Any) -> Client:
        """A client whose inference calls go to the best registered server for ``model_id``."""
        client = cls(artifacts, **kwargs)
        try:
            client.use_inference_for(model_id)
        except BaseException:
            client.close()
            raise
        return client

    def inference_servers(self, model_id: str = "") -> list[artifacts_pb2.InferenceServerInfo]:
        """Registered inference servers (for ``model_id`` when given), best first."""
        req = artifacts_pb2.ListInferenceServersRequest(model_id=model_id)
        return list(self.artifacts.ListInferenceServers(req, **self._kw()).servers)

    def use_inference_for(self, model_id: str) -> str:
        """Send inference calls to the best registered server for ``model_id`` that answers now; returns it.

        Call it again after a server went away: one that stopped answering is skipped even before its
        registry entry expires.
        """
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        servers = [s for s in self.inference_servers(model_id) if s.serving]
        for server in servers:
            probe = _channel(server.address, self._tls)  # its retry policy leaves health checks alone
            try:
                reply = health_pb2_grpc.HealthStub(probe).Check(health_pb2.HealthCheckRequest(), timeout=3)
            except grpc.RpcError:
                continue
            finally:
                probe.close()
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                self._use_inference_channel(_channel(server.address, self._tls))
                return server.address
        tried = ", ".join(s.address for s in servers) or "none registered"
        raise LookupError(f"no inference server for {model_id!r} answers (tried: {tried})")

    def _use_inference_channel(self, channel: grpc.Channel) -> None:
        self._channels.append(channel)
        self._inference_channel = channel
        self.inference = inference_pb2_grpc.InferenceServiceStub(channel)

    def close(self) -> None:
        for ch in self._channels:
            ch.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _kw(self, timeout: float | None = None) -> dict[str, Any]:
        return {"timeout": timeout or self.timeout, "metadata": self._metadata}

    # -- models and inference ------------------------------------------------------------------------
    def load_model(self, model_id: str, *, dtype: str = "", device: str = "") -> inference_pb2.ModelInfo:
        req = inference_pb2.LoadModelRequest(model_id=model_id, dtype=dtype, device=device)
        return self.inference.LoadModel(req, **self._kw(600))

    def layers(self, model_id: str) -> list[inference_pb2.LayerInfo]:
        return list(self.inference.ListLayers(inference_pb2.ListLayersRequest(model_id=model_id), **self._kw()).layers)

    def save_activations(
        self, model_id: str, layers: Sequence[str], dataset: common_pb2.DatasetSpec, **kw: Any
    ) -> inference_pb2.SaveActivationsResponse:
        req = inference_pb2.SaveActivationsRequest(model_id=model_id, layers=list(layers), dataset=dataset, **kw)
        return self.inference.SaveActivations(req, **self._kw(3600))

    def stream_activations(
        self, model_id: str, layers: Sequence[str], dataset: common_pb2.DatasetSpec, **kw: Any
    ) -> Iterator[tuple[str, torch.Tensor, common_pb2.TensorChunk]]:
        """Yield (layer, rows, chunk) as chunks arrive.

        ``rows`` are zero-copy, read-only views of the received bytes, checked against the chunk's checksum;
        ``chunk`` holds the chunk's other fields (token ids, positions, sample indices, sequence), its
        ``data`` left empty since ``rows`` has it.
        """
        from mi_crow.chunk_wire import stream_activations_call
        from mi_crow.chunks import chunk_to_tensor

        req = inference_pb2.StreamActivationsRequest(model_id=model_id, layers=list(layers), dataset=dataset, **kw)
        for chunk in stream_activations_call(self._inference_channel)(req, **self._kw(3600)):
            yield chunk.layer, chunk_to_tensor(chunk), chunk.meta

    def infer_sae(
        self, model_id: str, sae_id: str, prompts: Sequence[str], **kw: Any
    ) -> inference_pb2.InferSaeResponse:
        edits = kw.pop("edits", None)
        req = inference_pb2.InferSaeRequest(model_id=model_id, sae_id=sae_id, prompts=list(prompts), **kw)
        for latent, edit in (edits or {}).items():
            scale, bias = (edit.get("scale", 1.0), edit.get("bias", 0.0)) if isinstance(edit, Mapping) else (edit, 0.0)
            req.edits[int(latent)].CopyFrom(common_pb2.LatentEdit(scale=scale, bias=bias))
        return self.inference.InferSae(req, **self._kw(600))

    def evaluate_sae(
        self, model_id: str, sae_id: str, dataset: common_pb2.DatasetSpec | Sequence[str], **kw: Any
    ) -> inference_pb2.EvaluateSaeResponse:
        """Evaluate a stored SAE on held-out texts (``downstream=True`` adds CE recovered and KL); stored with it."""
        if not isinstance(dataset, common_pb2.DatasetSpec):
            dataset = dataset_spec(list(dataset))
        req = inference_pb2.EvaluateSaeRequest(model_id=model_id, sae_id=sae_id, dataset=dataset, **kw)
        return self.inference.EvaluateSae(req, **self._kw(3600))

    def get_sae(self, model_id: str, sae_id: str) -> common_pb2.SaeInfo:
        """One SAE's metadata, with its evaluation when it has one."""
        return self.artifacts.GetSae(common_pb2.SaeRef(model_id=model_id, sae_id=sae_id), **self._kw())

    def generate(
        self,
        model_id: str,
        prompt: str,
        *,
        steering: Sequence[Any] = (),
        compare_unsteered: bool = False,
        timeout: float | None = None,
        **generation: Any,
    ) -> Iterator[inference_pb2.GenerateEvent]:
        """Stream a continuation (GenerationOptions fields as keywords, e.g. max_new_tokens=32, seed=1).

        ``steering``: see ``steering_edit``. With ``compare_unsteered`` the done event also carries the
        continuation generated without steering from the same seed.
        """
        req = inference_pb2.GenerateRequest(
            model_id=model_id,
            prompt=prompt,
            generation=inference_pb2.GenerationOptions(**generation),
            steering=_steering(steering),
            compare_unsteered=compare_unsteered,
        )
        yield from self.inference.GenerateStream(req, **self._kw(timeout or 600))

    def generate_compare(
        self, model_id: str, prompt: str, steering: Sequence[Any], **generation: Any
    ) -> tuple[str, str, int]:
        """(steered, unsteered, seed): one prompt continued with and without steering from the same seed."""
        steered, done = [], inference_pb2.GenerateEvent()
        for event in self.generate(model_id, prompt, steering=steering, compare_unsteered=True, **generation):
            steered.append(event.text)
            done = event
        return "".join(steered), done.unsteered_text, done.seed

    # -- runs, SAEs, concepts ------------------------------------------------------------------------
    def list_runs(self, model_id: str = "") -> list[artifacts_pb2.RunInfo]:
        return list(
            self.artifacts.ListActivationRuns(artifacts_pb2.ListRunsRequest(model_id=model_id), **self._kw()).runs
        )

    def list_saes(self, model_id: str = "") -> list[common_pb2.SaeInfo]:
        return list(self.artifacts.ListSaes(artifacts_pb2.ListSaesRequest(model_id=model_id), **self._kw()).saes)

    def delete_run(self, model_id: str, run_id: str) -> bool:
        ref = common_pb2.RunRef(model_id=model_id, run_id=run_id)
        return self.artifacts.DeleteActivationRun(ref, **self._kw()).deleted

    def delete_sae(self, model_id: str, sae_id: str) -> bool:
        return self.artifacts.DeleteSae(common_pb2.SaeRef(model_id=model_id, sae_id=sae_id), **self._kw()).deleted

    def manipulate(self, model_id: str, sae_id: str, edits: Mapping[int, float], name: str = "default"):
        req = artifacts_pb2.ManipulateConceptsRequest(
            sae=common_pb2.SaeRef(model_id=model_id, sae_id=sae_id), name=name
        )
        for latent, scale in edits.items():
            req.edits[int(latent)].CopyFrom(common_pb2.LatentEdit(scale=float(scale)))
        return self.artifacts.ManipulateConcepts(req, **self._kw())

    # -- jobs ----------------------------------------------------------------------------------------
    def train(self, model_id: str, run_id: str, layer: str = "", **kw: Any) -> artifacts_pb2.Job:
        hyper = kw.pop("hyperparams", None)
        if hyper:
            kw["hyperparams_json"] = json.dumps(hyper)
        req = artifacts_pb2.TrainingRequest(model_id=model_id, run_id=run_id, layer=layer, **kw)
        return self.jobs.SubmitTraining(req, **self._kw())

    def train_live(
        self,
        model_id: str,
        layers: str | Sequence[str],
        dataset: common_pb2.DatasetSpec,
        *,
        texts_per_batch: int = 16,
        max_length: int = 0,
        **kw: Any,
    ) -> artifacts_pb2.Job:
        """Train on activations streamed live from an inference server, nothing stored but the SAEs.

        ``layers`` as one name trains one SAE; as a list, one SAE per layer, all from one forward pass per
        batch of texts (Job.sae_ids names them). ``kw`` as for ``train`` (epochs=, k=, hyperparams=, ...).
        """
        live = artifacts_pb2.LiveSource(dataset=dataset, batch_size=texts_per_batch, max_length=max_length)
        if isinstance(layers, str):
            return self.train(model_id, "", layers, stream=live, **kw)
        return self.train(model_id, "", layers=list(layers), stream=live, **kw)

    def submit_dashboard(
        self, sae_id: str, dataset: common_pb2.DatasetSpec, model_id: str = "", **kw: Any
    ) -> artifacts_pb2.Job:
        """Build an SAE's feature dashboard on the workers (top_k=, max_latents=, max_tokens=, ...)."""
        req = artifacts_pb2.DashboardRequest(sae_id=sae_id, dataset=dataset, model_id=model_id, **kw)
        return self.jobs.SubmitDashboard(req, **self._kw())

    def dashboard(self, sae_id: str, model_id: str = "") -> dict[str, Any]:
        """The stored dashboard as a dict (NOT_FOUND until a dashboard job built it)."""
        return json.loads(self.dashboard_response(sae_id, model_id).dashboard_json)

    def dashboard_response(self, sae_id: str, model_id: str = "") -> artifacts_pb2.DashboardResponse:
        """The stored dashboard: its JSON and its self-contained HTML page."""
        ref = common_pb2.SaeRef(model_id=model_id, sae_id=sae_id)
        return self.artifacts.GetDashboard(ref, **self._kw())

    def job(self, job_id: str) -> artifacts_pb2.Job:
        return self.jobs.GetJob(artifacts_pb2.JobRef(job_id=job_id), **self._kw())

    def cancel(self, job_id: str) -> artifacts_pb2.Job:
        return self.jobs.CancelJob(artifacts_pb2.JobRef(job_id=job_id), **self._kw())

    def watch(self, job_id: str, timeout: float = 24 * 3600) -> Iterator[artifacts_pb2.Job]:
        yield from self.jobs.WatchJob(artifacts_pb2.JobRef(job_id=job_id), timeout=timeout, metadata=self._metadata)

    def wait(self, job_id: str, timeout: float = 24 * 3600) -> artifacts_pb2.Job:
        last = None
        for update in self.watch(job_id, timeout):
            last = update
        return last if last is not None else self.job(job_id)

    def metrics(self) -> artifacts_pb2.Metrics:
        return self.jobs.GetMetrics(artifacts_pb2.GetMetricsRequest(), **self._kw())
