"""The training job an RQ worker runs: train an SAE on a stored run, report progress, publish once.

Checkpoints go next to the SAE on the shared volume, so a retry after a worker died resumes from the last
one; the SAE id is fixed at submission, so every attempt writes the same place and publishes once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from typing import Any

from google.protobuf import json_format

from mi_crow.mechanistic.sae import MultiSaeTrainer, Sae, SaeSpec, SaeTrainer, TrainingCancelled
from mi_crow.mechanistic.sae.trainer import StepCallback
from mi_crow.services.artifacts.jobs import HEARTBEAT_S, TERMINAL, JobStore, layer_sae_ids
from mi_crow.services.common.redis_conn import connect
from mi_crow.store import LocalStore
from mi_crow.workers.evaluation import evaluate_after_training, split_holdout, wants_evaluation
from mi_crow.workers.live import discovered, live_layers_source, live_source
from mi_crow.workers.telemetry import observed, vectors_trained

log = logging.getLogger("mi_crow.workers")

DEFAULT_CHECKPOINT_EVERY = 50


def _env_store() -> LocalStore:
    return LocalStore(os.environ.get("MI_CROW_STORE", ".mi_crow/store"))


def _env_jobs() -> JobStore:
    url = os.environ.get("MI_CROW_REDIS_URL", os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    return JobStore(connect(url), os.environ.get("MI_CROW_QUEUE", "mi_crow-training"))


def _hyperparams(request: Any) -> dict[str, Any]:
    hyper: dict[str, Any] = json.loads(request.hyperparams_json) if request.hyperparams_json else {}
    if not isinstance(hyper, dict):
        raise ValueError("hyperparams_json must be a JSON object")
    for name in ("n_latents", "k", "epochs", "batch_size", "lr"):
        value = getattr(request, name)
        if value:
            hyper[name] = value
    hyper.setdefault("checkpoint_every", request.checkpoint_every or DEFAULT_CHECKPOINT_EVERY)
    hyper.setdefault("log_every", 5)
    return hyper


class _Heartbeat(threading.Thread):
    """Tells the artifact service this attempt is alive; notices when a newer attempt replaced it."""

    def __init__(self, jobs: JobStore, job_id: str, attempt: int) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{job_id}")
        self.jobs, self.job_id, self.attempt = jobs, job_id, attempt
        self.stopped = threading.Event()
        self.superseded = False

    def run(self) -> None:
        while not self.stopped.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a Redis blip must not kill training; the next beat retries
                if not self.jobs.heartbeat(self.job_id, self.attempt):
                    self.superseded = True
                    return


@observed("training", lambda job_id: _env_jobs().request_id(job_id))
def run_training_job(job_id: str, attempt: int = 1) -> str:
    jobs = _env_jobs()
    store = _env_store()
    job = jobs.get(job_id)
    if jobs.state(job_id) in TERMINAL:
        return jobs.state(job_id)  # cancelled while queued, or a duplicate delivery of a finished job
    if jobs.attempt(job_id) != attempt:
        return "SUPERSEDED"  # a newer attempt owns the job
    req = job.request
    attempt_started = time.time()
    jobs.update(
        job_id, state="RUNNING", started_at=attempt_started, heartbeat_at=attempt_started,
        worker_pid=os.getppid(), horse_pid=os.getpid(),
    )  # fmt: skip
    beat = _Heartbeat(jobs, job_id, attempt)
    beat.start()
    source = "a live activation stream" if req.HasField("stream") else f"run {req.run_id}"
    layers = ", ".join(req.layers) if req.layers else req.layer or "(the only one)"
    jobs.log(job_id, f"training {req.sae_class or 'TopKSae'} on {source}, layer {layers}")
    # Per SAE (one, or one per layer): its latest step, total and metrics; the job reports their sums.
    steps: dict[str, tuple[int, int]] = {}
    metrics: dict[str, float] = {}

    def on_step(record: dict[str, Any]) -> bool:
        if jobs.cancel_requested(job_id) or beat.superseded:
            return False
        sae_id = record.get("sae_id", job.sae_id)
        where = f" on layer {record['layer']}" if req.layers and "layer" in record else ""
        if record.get("phase") == "published":
            jobs.log(job_id, f"attempt {attempt}: SAE {sae_id} was already published; not training it again")
            return True
        if record.get("phase") == "resume":
            jobs.log(job_id, f"attempt {attempt} resumed{where} from the checkpoint at step {record.get('step')}")
            return True
        steps[sae_id] = (int(record.get("step", 0)), int(record.get("total_steps") or 0))
        prefix = f"{record['layer']}." if where else ""
        metrics.update(
            {
                prefix + k: float(v)
                for k, v in record.items()
                if isinstance(v, int | float) and k not in ("step", "epoch")
            }
        )
        step, total = sum(s for s, _ in steps.values()), sum(t for _, t in steps.values())
        if any(t == 0 for _, t in steps.values()):
            total = 0  # a stream's length is known only after its first pass
        fields: dict[str, Any] = {"step": step, "total_steps": total, "metrics": metrics}
        if total:
            fields["progress"] = min(1.0, step / total)
        jobs.update(job_id, **fields)
        if record.get("phase") == "epoch":
            vectors_trained("training", record.get("tokens", 0))
            ev = record.get("explained_variance", float("nan"))
            jobs.log(
                job_id,
                f"epoch {record.get('epoch')} done{where}: explained variance {ev:.4f}, L0 {record.get('l0', 0):.1f}",
            )
        return True

    try:
        jobs.update(job_id, phase="train")
        if req.layers:
            saes, run, held = _train_layers(job, store, on_step), None, []
        else:
            sae, run, held = _train_one(job, store, on_step)
            saes = [sae]
        if wants_evaluation(req):  # before SUCCEEDED, while the heartbeat still runs (never with layers)
            stop = lambda: jobs.cancel_requested(job_id) or beat.superseded  # noqa: E731
            evaluate_after_training(jobs, job_id, req, saes[0], store, run, held, stop)
    except TrainingCancelled:
        if beat.superseded:
            return "SUPERSEDED"
        jobs.log(job_id, "stopped: cancel requested")
        return "CANCELLED"
    except Exception as exc:
        jobs.update(job_id, state="FAILED", error=f"{type(exc).__name__}: {exc}", finished_at=time.time())
        jobs.log(job_id, f"failed: {type(exc).__name__}: {exc}")
        return "FAILED"  # a deterministic failure: re-running is for workers that die, not for bad input
    finally:
        beat.stopped.set()
    paths = [str((store.sae_dir(req.model_id, sae.id) / "sae.json").relative_to(store.root)) for sae in saes]
    if jobs.state(job_id) not in TERMINAL:
        where = {"sae_paths": paths} if req.layers else {"sae_path": paths[0]}
        jobs.update(job_id, state="SUCCEEDED", progress=1.0, finished_at=time.time(), **where)
    for sae in saes:
        ev = sae.training_record.get("final", {}).get("explained_variance", float("nan"))
        jobs.log(job_id, f"published SAE {sae.id} (explained variance {ev:.4f})")
    return "SUCCEEDED"


def _train_one(job: Any, store: LocalStore, on_step: StepCallback) -> tuple[Sae, Any, list[Any]]:
    """One SAE on a stored run (with its held-out shards, if the job evaluates) or on a live stream."""
    req = job.request
    run, held = None, []
    if req.HasField("stream"):
        data = live_source(discovered(req.model_id), req.model_id, req.layer, req.stream)
    else:
        run = store.open_run(req.model_id, req.run_id)
        data, held = split_holdout(run, req)  # with an evaluation, the last shards stay out of training
    trainer = SaeTrainer(
        None,
        req.layer or None,
        req.sae_class or "TopKSae",
        _hyperparams(req),
        store=store,
        sae_id=job.sae_id,
        model_id=req.model_id,
        progress=False,
        on_step=on_step,
    )
    # resume=True also returns, untouched, an SAE an earlier attempt published before its worker died.
    return trainer.train(data, resume=True), run, held


def _train_layers(job: Any, store: LocalStore, on_step: StepCallback) -> list[Sae]:
    """A multi-layer job: one SAE per layer of ``req.layers``, all from one live forward per batch of texts."""
    req = job.request
    hyper = _hyperparams(req)
    specs = [
        SaeSpec(layer, req.sae_class or "TopKSae", hyper, sae_id=sae_id)
        for layer, sae_id in zip(req.layers, layer_sae_ids(job.sae_id, req.layers), strict=True)
    ]
    trainer = MultiSaeTrainer(None, specs, store=store, model_id=req.model_id, progress=False, on_step=on_step)
    pieces = live_layers_source(discovered(req.model_id), req.model_id, list(req.layers), req.stream)
    source = {"dataset": json_format.MessageToDict(req.stream.dataset), "batch_size": req.stream.batch_size or 16}
    # Checkpoints at epoch ends (resume=True): a retried attempt continues from the last epoch all SAEs finished.
    return trainer.train_stream(lambda layers: pieces(), source=source, resume=True)
