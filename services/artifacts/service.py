"""ArtifactService and JobService implementations over the shared store and Redis."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from redis import Redis

from mi_crow.mechanistic.concepts import ConceptConfig, ConceptDictionary
from mi_crow.mechanistic.sae import SAE_CLASSES, TrainingConfig
from mi_crow.services.artifacts.dashboards import DASHBOARD_FUNC, checked_request, stored_dashboard
from mi_crow.services.artifacts.jobs import MAX_LAYERS_PER_JOB, TERMINAL, JobStore, layer_sae_ids
from mi_crow.services.common.auth import require_admin
from mi_crow.services.common.config import ServerConfig
from mi_crow.services.common.convert import check_evaluation_options, dataset_from_spec, run_info, sae_info
from mi_crow.services.common.errors import servicer
from mi_crow.services.common.registry import list_servers
from mi_crow.store import LocalStore, new_id, read_json, validate_name
from mi_crow.v1 import artifacts_pb2, artifacts_pb2_grpc, common_pb2

TRAINING_FUNC = "mi_crow.workers.training.run_training_job"


def _sae_meta(store: LocalStore, ref: common_pb2.SaeRef) -> tuple[dict, Path]:
    if not ref.sae_id:
        raise ValueError("sae_id is required")
    sae_dir = store.sae_dir(ref.model_id, ref.sae_id) if ref.model_id else store.find_sae_dir(ref.sae_id)
    meta_path = sae_dir / "sae.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"no SAE {ref.sae_id!r} for model {ref.model_id!r}")
    return read_json(meta_path), sae_dir


def _eval_dir(store: LocalStore, meta: dict) -> Path | None:
    """Where a listed SAE's eval.json would be (None for metadata that names no model or id)."""
    if not (meta.get("model_id") and meta.get("sae_id")):
        return None
    return store.sae_dir(meta["model_id"], meta["sae_id"])


def _config_info(name: str, cfg: ConceptConfig, path: str = "") -> artifacts_pb2.ConceptConfigInfo:
    edits = {i: common_pb2.LatentEdit(scale=cfg.scales.get(i, 1.0), bias=cfg.biases.get(i, 0.0)) for i in cfg.latents()}
    return artifacts_pb2.ConceptConfigInfo(name=name, edits=edits, path=path)


@servicer
class ArtifactServicer(artifacts_pb2_grpc.ArtifactServiceServicer):
    def __init__(self, cfg: ServerConfig, redis: Redis | None = None) -> None:
        self.cfg = cfg
        self.store = LocalStore(cfg.artifact_root)
        self.redis = redis  # the inference-server registry; None: no registry (ListInferenceServers is empty)

    def ListActivationRuns(self, request, context):
        runs = []
        for manifest in self.store.list_runs(request.model_id or None):
            run_dir = self.store.run_dir(manifest.model_id, manifest.run_id)
            runs.append(run_info(manifest, self.store.root, run_dir))
        return artifacts_pb2.ListRunsResponse(runs=runs)

    def GetActivationRun(self, request, context):
        run = self.store.open_run(request.model_id, request.run_id, require_complete=False)
        return run_info(run.manifest, self.store.root, run.run_dir)

    def DeleteActivationRun(self, request, context):
        require_admin(context, self.cfg.admin_key, "delete activation runs")
        self.store.delete_run(request.model_id, request.run_id)
        return artifacts_pb2.DeleteResponse(deleted=True)

    def GetLayerSize(self, request, context):
        run = self.store.open_run(request.model_id, request.run_id, require_complete=False)
        return artifacts_pb2.LayerSizeResponse(d_model=run.d_model(request.layer))

    def ListSaes(self, request, context):
        return artifacts_pb2.ListSaesResponse(
            saes=[sae_info(m, _eval_dir(self.store, m)) for m in self.store.list_saes(request.model_id or None)]
        )

    def GetSae(self, request, context):
        meta, sae_dir = _sae_meta(self.store, request)
        return sae_info(meta, sae_dir)

    def DeleteSae(self, request, context):
        require_admin(context, self.cfg.admin_key, "delete SAEs")
        meta, _ = _sae_meta(self.store, request)
        self.store.delete_sae(meta.get("model_id") or request.model_id, request.sae_id)
        return artifacts_pb2.DeleteResponse(deleted=True)

    def GetDashboard(self, request, context):
        return stored_dashboard(self.store, request)

    def ListSaeClasses(self, request, context):
        return artifacts_pb2.ListSaeClassesResponse(names=sorted(SAE_CLASSES))

    def _concepts_dir(self, ref: common_pb2.SaeRef) -> tuple[dict, Path]:
        meta, _ = _sae_meta(self.store, ref)
        return meta, self.store.concepts_dir(meta.get("model_id") or ref.model_id, ref.sae_id)

    def _concepts_response(self, ref: common_pb2.SaeRef, meta: dict, cdir: Path) -> artifacts_pb2.ConceptsResponse:
        path = cdir / "dictionary.json"
        dictionary = ConceptDictionary.load(path, meta["n_latents"]) if path.is_file() else None
        concepts = [
            artifacts_pb2.Concept(latent=i, name=c.name, description=c.description, score=c.score or 0.0)
            for i, c in sorted((dictionary.entries if dictionary else {}).items())
        ]
        files = sorted(str(p.relative_to(cdir)) for p in cdir.rglob("*.json")) if cdir.is_dir() else []
        return artifacts_pb2.ConceptsResponse(sae=ref, concepts=concepts, files=files)

    def ListConcepts(self, request, context):
        meta, cdir = self._concepts_dir(request)
        return self._concepts_response(request, meta, cdir)

    def LoadConcepts(self, request, context):
        meta, cdir = self._concepts_dir(request.sae)
        text = request.content.decode("utf-8-sig")
        fmt = (request.format or "json").lower()
        if fmt == "csv":
            dictionary = ConceptDictionary.from_csv(text, meta["n_latents"], source="uploaded CSV")
        elif fmt == "json":
            dictionary = ConceptDictionary.from_json(text, meta["n_latents"], source="uploaded JSON")
        else:
            raise ValueError(f"format must be 'json' or 'csv', not {request.format!r}")
        dictionary.save(cdir / "dictionary.json")
        return self._concepts_response(request.sae, meta, cdir)

    def _edits(self, request) -> tuple[dict, Path, ConceptConfig]:
        meta, cdir = self._concepts_dir(request.sae)
        edits = {int(i): {"scale": e.scale, "bias": e.bias} for i, e in request.edits.items()}
        return meta, cdir, ConceptConfig.from_edits(edits, meta["n_latents"])

    def ManipulateConcepts(self, request, context):
        _, cdir, cfg = self._edits(request)
        name = validate_name(request.name or "default", "config name")
        path = cfg.save(cdir / "configs" / f"{name}.json")
        return _config_info(name, cfg, str(path.relative_to(self.store.root)))

    def PreviewConcepts(self, request, context):
        _, _, cfg = self._edits(request)
        return _config_info(request.name or "default", cfg)

    def ListConceptConfigs(self, request, context):
        _, cdir = self._concepts_dir(request)
        return artifacts_pb2.ListConceptConfigsResponse(names=sorted(p.stem for p in (cdir / "configs").glob("*.json")))

    def ListInferenceServers(self, request, context):
        if self.redis is None:
            return artifacts_pb2.ListInferenceServersResponse()
        records = list_servers(self.redis, request.model_id)
        return artifacts_pb2.ListInferenceServersResponse(
            servers=[artifacts_pb2.InferenceServerInfo(**asdict(r)) for r in records]
        )

    def GetStoreInfo(self, request, context):
        counts: dict[str, int] = {}
        for manifest in self.store.list_runs():
            counts[manifest.model_id] = counts.get(manifest.model_id, 0) + 1
        return artifacts_pb2.StoreInfo(artifact_root=str(self.store.root), runs_per_model=counts)


@servicer
class JobServicer(artifacts_pb2_grpc.JobServiceServicer):
    def __init__(self, cfg: ServerConfig, jobs: JobStore) -> None:
        self.cfg = cfg
        self.jobs = jobs
        self.store = LocalStore(cfg.artifact_root)

    def _validate(self, req: artifacts_pb2.TrainingRequest) -> None:
        """Refuse what would only fail on a worker: unknown run, layer, class or hyperparameter."""
        if req.layers:
            self._validate_layers(req)
        if req.HasField("stream"):
            if not req.model_id or not (req.layer or req.layers):
                raise ValueError("live training needs model_id and layer (or layers)")
            if req.run_id:
                raise ValueError("set either run_id or stream, not both")
            dataset_from_spec(req.stream.dataset, self.cfg.dataset_roots)  # same checks the server will make
        else:
            if not req.model_id or not req.run_id:
                raise ValueError("model_id and run_id are required (or a live stream)")
            run = self.store.open_run(req.model_id, req.run_id)  # NOT_FOUND / FAILED_PRECONDITION if incomplete
            if req.layer:
                run.layer(req.layer)
            elif len(run.layers) != 1:
                raise ValueError(f"run {req.run_id!r} has layers {run.layers}; say which to train on")
        if req.sae_class and req.sae_class not in SAE_CLASSES:
            raise ValueError(f"unknown SAE class {req.sae_class!r}; choose from {sorted(SAE_CLASSES)}")
        if req.hyperparams_json:
            try:
                extra = json.loads(req.hyperparams_json)
            except json.JSONDecodeError as exc:
                raise ValueError(f"hyperparams_json is not valid JSON: {exc}") from exc
            if not isinstance(extra, dict):
                raise ValueError("hyperparams_json must be a JSON object")
            TrainingConfig.from_any(extra)
        for name in ("n_latents", "k", "epochs", "batch_size", "checkpoint_every"):
            if getattr(req, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if req.lr < 0:
            raise ValueError("lr must not be negative")
        if req.sae_id:
            validate_name(req.sae_id, "SAE id")
        check_evaluation_options(req.evaluation)

    @staticmethod
    def _validate_layers(req: artifacts_pb2.TrainingRequest) -> None:
        """A multi-layer job: one SAE per layer, trained from one live forward."""
        if not req.HasField("stream"):
            raise ValueError(
                "layers trains from one live forward and needs stream; for a stored run, submit one job per layer"
            )
        if req.layer:
            raise ValueError("set either layer (one SAE) or layers (one SAE per layer), not both")
        if req.evaluation.enabled or req.evaluation.texts:
            raise ValueError(
                "evaluation is per SAE: leave it unset with layers, and call EvaluateSae on each SAE after the job"
            )
        if not 2 <= len(req.layers) <= MAX_LAYERS_PER_JOB:
            raise ValueError(f"layers must name 2-{MAX_LAYERS_PER_JOB} layers, got {len(req.layers)}")
        repeated = sorted(layer for layer, n in Counter(req.layers).items() if n > 1)
        if repeated:
            raise ValueError(f"layers names {repeated} more than once")
        for sae_id in layer_sae_ids(req.sae_id or new_id("sae"), req.layers):
            validate_name(sae_id, "SAE id (<sae_id>.<layer>)")

    def SubmitTraining(self, request, context):
        self._validate(request)
        job_id, _ = self.jobs.submit(request, TRAINING_FUNC)
        return self.jobs.get(job_id)

    def SubmitDashboard(self, request, context):
        req = checked_request(request, self.store, self.cfg.dataset_roots)
        job_id, _ = self.jobs.submit_dashboard(req, DASHBOARD_FUNC)
        return self.jobs.get(job_id)

    def GetJob(self, request, context):
        return self.jobs.get(request.job_id)

    def WatchJob(self, request, context) -> Iterator[artifacts_pb2.Job]:
        last = None
        while context.is_active():
            job = self.jobs.get(request.job_id)
            snapshot = job.SerializeToString(deterministic=True)
            if snapshot != last:
                last = snapshot
                yield job
            if artifacts_pb2.JobState.Name(job.state) in TERMINAL:
                return
            time.sleep(0.05)  # Redis reads are cheap; a finished job is reported within 50 ms

    def CancelJob(self, request, context):
        self.jobs.cancel(request.job_id)
        return self.jobs.get(request.job_id)

    def ListJobs(self, request, context):
        state = artifacts_pb2.JobState.Name(request.state) if request.state else None
        return artifacts_pb2.ListJobsResponse(jobs=self.jobs.list(state))

    def GetMetrics(self, request, context):
        c = self.jobs.counts()
        return artifacts_pb2.Metrics(
            total=sum(c.values()),
            queued=c["QUEUED"],
            running=c["RUNNING"],
            succeeded=c["SUCCEEDED"],
            failed=c["FAILED"],
            cancelled=c["CANCELLED"],
            timed_out=c["TIMED_OUT"],
        )
