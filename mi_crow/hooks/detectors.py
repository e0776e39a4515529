"""Detectors: capture what a layer computes, optionally into a preallocated buffer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mi_crow.hooks.hook import Detector, HookType


class LayerActivationDetector(Detector):
    """Keeps the last tensor seen at a layer.

    With ``buffer`` (e.g. a pinned ``(max_batch, max_seq, d)`` tensor), activations are copied into it
    instead of being kept by reference: no allocation per batch, and ``activations`` is a view of the
    filled part. Without it, the tensor itself is kept (detached), which costs nothing.
    """

    kind = "layer_activation_detector"

    def __init__(
        self,
        layer: str,
        hook_type: HookType | str = HookType.FORWARD,
        *,
        buffer: torch.Tensor | None = None,
        to_cpu: bool = False,
        callback: Callable[[torch.Tensor], None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(layer, hook_type, name=name)
        self.buffer = buffer
        self.to_cpu = to_cpu
        self.callback = callback
        self.activations: torch.Tensor | None = None
        self.calls = 0

    def observe(self, tensor: torch.Tensor, module: nn.Module, context: dict[str, Any]) -> None:
        self.calls += 1
        tensor = tensor.detach()
        if self.buffer is not None:
            if tensor.ndim != self.buffer.ndim or any(
                t > b for t, b in zip(tensor.shape, self.buffer.shape, strict=True)
            ):
                raise ValueError(
                    f"detector {self.id!r}: activation of shape {tuple(tensor.shape)} does not fit the buffer "
                    f"of shape {tuple(self.buffer.shape)}"
                )
            view = self.buffer[tuple(slice(0, n) for n in tensor.shape)]
            view.copy_(tensor, non_blocking=True)
            self.activations = view
        else:
            self.activations = tensor.cpu() if self.to_cpu else tensor
        if self.callback is not None:
            self.callback(self.activations)

    def clear(self) -> None:
        self.activations = None


class ModelInputDetector(Detector):
    """Captures the model's inputs (``input_ids`` and ``attention_mask``) at the root module."""

    kind = "model_input_detector"

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(None, HookType.PRE_FORWARD, name=name)
        self.input_ids: torch.Tensor | None = None
        self.attention_mask: torch.Tensor | None = None

    def observe(self, tensor: torch.Tensor, module: nn.Module, context: dict[str, Any]) -> None:
        kwargs = context.get("kwargs", {})
        self.input_ids = kwargs.get("input_ids", tensor).detach()
        mask = kwargs.get("attention_mask")
        self.attention_mask = mask.detach() if isinstance(mask, torch.Tensor) else None


class ModelOutputDetector(Detector):
    """Captures the model's primary output (the logits of a causal LM) at the root module."""

    kind = "model_output_detector"

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(None, HookType.FORWARD, name=name)
        self.output: torch.Tensor | None = None

    def observe(self, tensor: torch.Tensor, module: nn.Module, context: dict[str, Any]) -> None:
        self.output = tensor.detach()
