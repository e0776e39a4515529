"""The "evaluate" phase of a training job: reconstruction on held-out activations, downstream via the server.

For a stored run the last shards of the layer (``holdout_fraction`` of them, at least one) are kept out of
training and the trained SAE is measured on them here, on the worker. With ``evaluation.texts`` and an
inference server configured (MI_CROW_INFERENCE_ADDRESS), EvaluateSae adds CE recovered and KL. Either
part failing is logged and leaves the job to succeed: the SAE itself is fine.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import grpc

from mi_crow.mechanistic.evaluation import DEFAULT_MAX_TOKENS, EvalReport, reconstruction_from_activations
from mi_crow.mechanistic.sae import Sae, TrainingCancelled
from mi_crow.services.artifacts.jobs import JobStore
from mi_crow.services.common.outbound import call_metadata, open_channel
from mi_crow.store import ActivationRun, LocalStore
from mi_crow.store.activation_run import ACTIVATIONS
from mi_crow.v1 import artifacts_pb2, common_pb2, inference_pb2, inference_pb2_grpc
from mi_crow.workers.live import ensure_loaded

DEFAULT_HOLDOUT_FRACTION = 0.1
EVAL_TIMEOUT_S = 3600
_DOWNSTREAM = ("ce_clean", "ce_sae", "ce_zero", "ce_recovered", "kl_sae", "kl_zero")


def wants_evaluation(req: artifacts_pb2.TrainingRequest) -> bool:
    return req.HasField("evaluation") and (req.evaluation.enabled or bool(req.evaluation.texts))


def split_holdout(run: ActivationRun, req: artifacts_pb2.TrainingRequest) -> tuple[ActivationRun, list[int]]:
    """(run to train on, held-out shard indices). Without an evaluation the run is trained on whole."""
    if not wants_evaluation(req):
        return run, []
    fraction = req.evaluation.holdout_fraction or DEFAULT_HOLDOUT_FRACTION
    if not 0 < fraction < 1:
        raise ValueError(f"evaluation.holdout_fraction must be in (0, 1), got {fraction}")
    layer = req.layer or run.layers[0]
    shards = run.layer(layer).shards
    n_hold = min(len(shards) - 1, max(1, round(len(shards) * fraction)))
    if n_hold <= 0:
        return run, []  # one shard: nothing to hold out
    view = ActivationRun(run.run_dir)  # its own manifest copy: trimming it leaves the run on disk untouched
    view.manifest.layers[layer].shards = shards[: len(shards) - n_hold]
    return view, list(range(len(shards) - n_hold, len(shards)))


def _heldout_report(sae: Sae, run: ActivationRun, layer: str, held: list[int], max_tokens: int) -> EvalReport:
    n = len(run.layer(layer).shards)
    if held:
        source = f"run {run.run_id}, held-out shards {held[0]}-{held[-1]} of {n}"
    else:
        held = [n - 1]
        source = f"run {run.run_id}, shard {n - 1} (training activations: a run of one shard holds nothing out)"
    batches = (shard[ACTIVATIONS] for shard in run.iter_shards(layer, order=held))
    stats = reconstruction_from_activations(sae, batches, max_tokens=max_tokens)
    return EvalReport(layer=layer, texts=0, sae_id=sae.sae_id, model_id=sae.model_id, source=source, **stats)


def _downstream(address: str, req: artifacts_pb2.TrainingRequest, sae_id: str, max_tokens: int) -> Any:
    metadata = call_metadata()
    with open_channel(address, [("grpc.max_receive_message_length", 16 << 20)]) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        ensure_loaded(stub, req.model_id, metadata)
        request = inference_pb2.EvaluateSaeRequest(
            model_id=req.model_id,
            sae_id=sae_id,
            dataset=common_pb2.DatasetSpec(texts=list(req.evaluation.texts)),
            max_tokens=max_tokens,
            downstream=True,
        )
        return stub.EvaluateSae(request, timeout=EVAL_TIMEOUT_S, metadata=metadata).evaluation


def evaluate_after_training(
    jobs: JobStore,
    job_id: str,
    req: artifacts_pb2.TrainingRequest,
    sae: Sae,
    store: LocalStore,
    run: ActivationRun | None,
    held: list[int],
    should_stop: Callable[[], bool],
) -> EvalReport | None:
    """Evaluate the published SAE and store eval.json next to it; returns what was stored (None: nothing)."""
    jobs.update(job_id, phase="evaluate")
    try:
        return _evaluate(jobs, job_id, req, sae, store, run, held, should_stop)
    except TrainingCancelled:
        raise
    except Exception as exc:  # the SAE is published and sound: a failed evaluation must not fail the job
        jobs.log(job_id, f"evaluate: failed: {type(exc).__name__}: {exc}")
        return None


def _evaluate(
    jobs: JobStore,
    job_id: str,
    req: artifacts_pb2.TrainingRequest,
    sae: Sae,
    store: LocalStore,
    run: ActivationRun | None,
    held: list[int],
    should_stop: Callable[[], bool],
) -> EvalReport | None:
    max_tokens = int(req.evaluation.max_tokens) or DEFAULT_MAX_TOKENS
    sae_dir = store.sae_dir(req.model_id, sae.sae_id or "")
    report: EvalReport | None = None
    if run is not None and sae.layer:
        try:
            report = _heldout_report(sae, run, sae.layer, held, max_tokens)
            jobs.log(job_id, f"evaluate: {report.source}: {report.tokens} tokens, EV {report.explained_variance:.4f}")
        except Exception as exc:
            jobs.log(job_id, f"evaluate: reconstruction failed: {type(exc).__name__}: {exc}")
    elif run is None and not req.evaluation.texts:
        jobs.log(job_id, "evaluate: a live-streamed job has no held-out activations; give evaluation.texts")
    if should_stop():
        raise TrainingCancelled(f"training of {sae.sae_id} was cancelled while evaluating")
    address = os.environ.get("MI_CROW_INFERENCE_ADDRESS", "")
    if req.evaluation.texts and not address:
        jobs.log(job_id, "evaluate: downstream skipped: no inference server configured (MI_CROW_INFERENCE_ADDRESS)")
    elif req.evaluation.texts:
        try:
            remote = _downstream(address, req, sae.sae_id or "", max_tokens)
        except grpc.RpcError as exc:
            jobs.log(job_id, f"evaluate: downstream failed: {exc.code().name}: {exc.details()}")
        else:
            if report is None:
                report = EvalReport.load(sae_dir)  # the server stored its (text-based) evaluation itself
            else:
                report.has_downstream = True
                for key in _DOWNSTREAM:
                    setattr(report, key, getattr(remote, key))
                report.downstream_tokens, report.downstream_texts = remote.downstream_tokens, remote.downstream_texts
                report.source += f"; downstream on {remote.downstream_texts} texts"
            jobs.log(job_id, f"evaluate: CE recovered {remote.ce_recovered:.4f}, KL {remote.kl_sae:.4f} nats/token")
    if report is not None:
        report.save(sae_dir)
        jobs.update(job_id, metrics={**_current_metrics(jobs, job_id), **_eval_metrics(report)})
    return report


def _eval_metrics(report: EvalReport) -> dict[str, float]:
    return {f"eval_{k}": v for k, v in report.summary().items() if v == v}  # NaN has no JSON form


def _current_metrics(jobs: JobStore, job_id: str) -> dict[str, float]:
    return dict(jobs.get(job_id).metrics)
