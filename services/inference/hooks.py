"""Hooks a request attaches by kind (``HookSpec``), and what they report back (``HookResult``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mi_crow.hooks import (
    HOOK_KINDS,
    Hook,
    LayerActivationDetector,
    ModelInputDetector,
    ModelOutputDetector,
    NeuronMultiplierController,
)
from mi_crow.language_model import LanguageModel
from mi_crow.services.common.convert import tensor_to_chunk
from mi_crow.v1 import inference_pb2

_ROOT_KINDS = {ModelInputDetector.kind, ModelOutputDetector.kind}


class _MultiplierWithShape(NeuronMultiplierController):
    """A neuron multiplier that also remembers the shape it acted on, for the HookResult."""

    def __init__(self, layer: str, factors: dict[int, float]) -> None:
        super().__init__(layer, factors)
        self.seen_shape: tuple[int, ...] = ()

    def modify(self, tensor: torch.Tensor, module: nn.Module, context: dict[str, Any]) -> torch.Tensor:
        self.seen_shape = tuple(tensor.shape)
        return super().modify(tensor, module, context)


def _kind(spec: inference_pb2.HookSpec) -> str:
    if spec.kind not in HOOK_KINDS:
        raise ValueError(f"unknown hook kind {spec.kind!r}; ListHooks gives the kinds: {sorted(HOOK_KINDS)}")
    if spec.kind in _ROOT_KINDS and spec.layer:
        raise ValueError(f"hook {spec.kind} acts on the whole model; leave its layer empty (got {spec.layer!r})")
    if spec.kind not in _ROOT_KINDS and not spec.layer:
        raise ValueError(f"hook {spec.kind} needs a layer (ListLayers gives the names)")
    return spec.kind


def _multiplier(lm: LanguageModel, spec: inference_pb2.HookSpec) -> NeuronMultiplierController:
    if not spec.factors:
        raise ValueError(f"{NeuronMultiplierController.kind} on {spec.layer!r} needs factors (unit index -> factor)")
    layer = lm.resolve_layer(spec.layer)
    # Checked here, not inside the forward, so a bad index is the caller's INVALID_ARGUMENT, not a crash.
    width = lm.hidden_size(layer)
    bad = sorted(i for i in spec.factors if not -width <= i < width)
    if bad:
        raise ValueError(f"neuron indices {bad} out of range for layer {layer!r} of width {width}")
    nonfinite = sorted(i for i, f in spec.factors.items() if not math.isfinite(f))
    if nonfinite:
        raise ValueError(f"factors of neurons {nonfinite} are not finite numbers")
    return _MultiplierWithShape(layer, dict(spec.factors))


def build_hooks(lm: LanguageModel, specs: Sequence[inference_pb2.HookSpec]) -> list[Hook]:
    """Hooks in request order (order matters where a detector and a controller share a layer)."""
    hooks: list[Hook] = []
    for spec in specs:
        kind = _kind(spec)
        if kind == LayerActivationDetector.kind:
            hooks.append(LayerActivationDetector(lm.resolve_layer(spec.layer)))
        elif kind == NeuronMultiplierController.kind:
            hooks.append(_multiplier(lm, spec))
        elif kind == ModelInputDetector.kind:
            hooks.append(ModelInputDetector())
        elif kind == ModelOutputDetector.kind:
            hooks.append(ModelOutputDetector())
        else:  # a kind added to the library that requests cannot configure yet
            raise ValueError(f"hook kind {kind!r} cannot be attached through the API")
    return hooks


def _seen(hook: Hook) -> torch.Tensor | None:
    if isinstance(hook, LayerActivationDetector):
        return hook.activations
    if isinstance(hook, ModelInputDetector):
        return hook.input_ids
    if isinstance(hook, ModelOutputDetector):
        return hook.output
    return None


def hook_results(
    hooks: Sequence[Hook], token_ids: Sequence[int], with_activations: bool
) -> list[inference_pb2.HookResult]:
    """One result per hook; layer activations as token rows when asked (they are what callers analyse)."""
    results = []
    for hook in hooks:
        tensor = _seen(hook)
        shape = tuple(tensor.shape) if tensor is not None else getattr(hook, "seen_shape", ())
        result = inference_pb2.HookResult(kind=hook.kind, layer=hook.layer or "", shape=list(shape))
        if with_activations and isinstance(hook, LayerActivationDetector) and tensor is not None:
            rows = tensor.reshape(-1, tensor.shape[-1]) if tensor.ndim > 1 else tensor.reshape(1, -1)
            per_token = rows.shape[0] == len(token_ids)
            result.activations.CopyFrom(
                tensor_to_chunk(
                    rows,
                    layer=hook.layer or "",
                    token_ids=list(token_ids) if per_token else (),
                    positions=list(range(len(token_ids))) if per_token else (),
                    sample_index=[0] * len(token_ids) if per_token else (),
                    last=True,
                )
            )
        results.append(result)
    return results
