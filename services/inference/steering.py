"""Steering edits of a request (``SteeringEdit``) as a library ``Steering`` over the pool's SAEs."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Sequence

import grpc

from mi_crow.mechanistic.sae import Sae
from mi_crow.mechanistic.steering import Steering, SteeringMode
from mi_crow.services.common.errors import ServiceError
from mi_crow.services.inference.generation import Sampling
from mi_crow.services.inference.models import ModelPool
from mi_crow.v1 import inference_pb2

MAX_EDITS = 64

_MODES = {
    inference_pb2.STEERING_MODE_SCALE: SteeringMode.SCALE,
    inference_pb2.STEERING_MODE_ADD: SteeringMode.ADD,
    inference_pb2.STEERING_MODE_ABLATE: SteeringMode.ABLATE,
}


def build_steering(pool: ModelPool, model_id: str, edits: Sequence[inference_pb2.SteeringEdit]) -> Steering:
    """Validated steering; call it holding the gate (loading an SAE probes the model's layers)."""
    if len(edits) > MAX_EDITS:
        raise ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED, f"{len(edits)} steering edits; the limit is {MAX_EDITS} per request"
        )
    steering = Steering()
    if not edits:
        return steering
    lm = pool.get(model_id)
    saes: dict[str, Sae] = {}
    for i, edit in enumerate(edits):
        where = f"steering edit {i} (sae {edit.sae_id!r}, latent {edit.latent})"
        if not edit.sae_id:
            raise ValueError(f"steering edit {i}: sae_id is required")
        if edit.mode not in _MODES:
            raise ValueError(f"{where}: set mode to STEERING_MODE_SCALE, STEERING_MODE_ADD or STEERING_MODE_ABLATE")
        if edit.sae_id not in saes:
            try:
                saes[edit.sae_id] = pool.concepts(model_id, edit.sae_id).sae
            except FileNotFoundError as exc:
                raise ServiceError(
                    grpc.StatusCode.NOT_FOUND,
                    f"{where}: no SAE {edit.sae_id!r} is stored (ArtifactService ListSaes lists the SAEs)",
                ) from exc
        try:
            layer = lm.resolve_layer(edit.layer) if edit.layer else None
            steering.edit(saes[edit.sae_id], edit.latent, _MODES[edit.mode], edit.value, layer=layer)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
    steering.layers(lm)  # layer and width of every edit against its SAE, all problems at once
    return steering


def comparable(options: Sampling, compare: bool) -> Sampling:
    """Sampling compared with and without steering needs one seed for both runs: draw one if none was given."""
    if compare and options.do_sample and options.seed is None:
        return dataclasses.replace(options, seed=secrets.randbelow(2**62) + 1)
    return options
