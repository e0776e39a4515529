"""EvaluateSae: evaluate a stored SAE on held-out texts at its layer and store the result (eval.json) with it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from mi_crow.datasets import TextDataset
from mi_crow.language_model import LanguageModel, UnknownLayerError
from mi_crow.mechanistic.evaluation import DEFAULT_MAX_TOKENS, LayerMismatchError, evaluate_sae
from mi_crow.services.common.convert import sae_evaluation, sae_info
from mi_crow.services.common.errors import ServiceError
from mi_crow.services.inference import limits
from mi_crow.services.inference.models import ModelPool
from mi_crow.store import LocalStore, read_json
from mi_crow.v1 import inference_pb2

# One call holds the device for its whole window; past this, evaluate in several calls or offline.
MAX_EVAL_TOKENS = 1 << 20


def token_budget(requested: int) -> int:
    if requested < 0:
        raise ValueError(f"max_tokens must not be negative, got {requested}")
    if requested > MAX_EVAL_TOKENS:
        raise ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"max_tokens {requested} is over the limit of {MAX_EVAL_TOKENS} tokens per evaluation",
        )
    return requested or DEFAULT_MAX_TOKENS


def _sae_dir(store: LocalStore, model_id: str, sae_id: str) -> Path:
    # The same lookup as Concepts.load: under the model's id first, then by SAE id alone.
    sae_dir = store.sae_dir(model_id, sae_id)
    return sae_dir if (sae_dir / "sae.json").is_file() else store.find_sae_dir(sae_id)


def _precondition(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, message)


def _check_fit(lm: LanguageModel, meta: dict[str, Any], layer: str) -> str:
    """The layer to evaluate on, refusing an SAE that does not fit it (FAILED_PRECONDITION)."""
    sae_id, sae_layer = meta.get("sae_id"), meta.get("layer")
    if not sae_layer:
        raise _precondition(f"SAE {sae_id!r} records no layer; it cannot be spliced into a model")
    try:
        own = lm.resolve_layer(sae_layer)
    except UnknownLayerError:
        raise _precondition(f"SAE {sae_id!r} was trained on layer {sae_layer!r}, which {lm.model_id!r} lacks") from None
    wanted = lm.resolve_layer(layer) if layer else own  # an unknown requested layer stays INVALID_ARGUMENT
    if wanted != own:
        raise _precondition(f"SAE {sae_id!r} was trained on layer {own!r}, not {wanted!r}: evaluate it at its own")
    width = lm.hidden_size(own)
    if width != int(meta.get("d_in", 0)):
        raise _precondition(
            f"SAE {sae_id!r} expects width {meta.get('d_in')} but layer {own!r} of {lm.model_id!r} has {width}"
        )
    return own


def evaluate(
    pool: ModelPool,
    request: inference_pb2.EvaluateSaeRequest,
    texts: TextDataset,
    is_active: Callable[[], bool],
) -> inference_pb2.EvaluateSaeResponse:
    lm = pool.get(request.model_id)
    if not request.sae_id:
        raise ValueError("sae_id is required")
    max_tokens = token_budget(request.max_tokens)
    batch_size = limits.batch_size(request.batch_size)
    if request.max_length < 0:
        raise ValueError(f"max_length must not be negative, got {request.max_length}")
    sae_dir = _sae_dir(pool.store, request.model_id, request.sae_id)
    meta = read_json(sae_dir / "sae.json")
    with pool.gate.hold(is_active):
        layer = _check_fit(lm, meta, request.layer)
        concepts = pool.concepts(request.model_id, request.sae_id)
        try:
            report = evaluate_sae(
                lm,
                concepts.sae,
                texts,
                layer=layer,
                max_tokens=max_tokens,
                batch_size=batch_size,
                downstream=request.downstream,
                max_length=request.max_length or None,
                progress=False,
            )
        except LayerMismatchError as exc:
            raise _precondition(str(exc)) from exc
    path = report.save(concepts.sae_dir)
    return inference_pb2.EvaluateSaeResponse(
        evaluation=sae_evaluation(report.to_dict()),
        sae=sae_info(read_json(concepts.sae_dir / "sae.json"), concepts.sae_dir),
        eval_path=str(path.relative_to(pool.store.root)),
    )
