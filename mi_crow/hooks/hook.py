"""Hook base classes: detectors observe a layer's tensor, controllers replace it."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any

import torch
from torch import nn


class HookType(StrEnum):
    FORWARD = "forward"  # sees the module's output
    PRE_FORWARD = "pre_forward"  # sees the module's (first tensor) input


class HookError(RuntimeError):
    """A hook misbehaved, e.g. a controller returned a tensor of the wrong shape or dtype."""


class StopForward(Exception):
    """Raised by a hook to end a forward pass early once everything needed has been captured."""


class Hook:
    """A named, switchable callback on one layer (``layer=None`` means the whole model)."""

    kind: str = "hook"

    def __init__(
        self, layer: str | None = None, hook_type: HookType | str = HookType.FORWARD, *, name: str | None = None
    ):
        self.layer = layer
        self.hook_type = HookType(hook_type)
        self.id = name or f"{type(self).__name__}-{uuid.uuid4().hex[:8]}"
        self.enabled = True

    def enable(self) -> None:
        self.enabled = True

    def disable(self) -> None:
        self.enabled = False

    def __repr__(self) -> str:
        state = "on" if self.enabled else "off"
        return f"{type(self).__name__}(id={self.id!r}, layer={self.layer!r}, {self.hook_type.value}, {state})"


class Detector(Hook):
    """Observes a tensor without changing it."""

    kind = "detector"

    def observe(self, tensor: torch.Tensor, module: nn.Module, context: dict[str, Any]) -> None:
        raise NotImplementedError


class Controller(Hook):
    """Returns a replacement for the tensor; the replacement must match its shape, dtype and device."""

    kind = "controller"

    def modify(self, tensor: torch.Tensor, module: nn.Module, context: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError


def check_replacement(hook: Controller, original: torch.Tensor, new: object) -> torch.Tensor:
    """Refuse anything but a like-for-like tensor: broadcasting a wrong shape would corrupt silently."""
    if not isinstance(new, torch.Tensor):
        raise HookError(f"controller {hook.id!r} returned {type(new).__name__}, expected a torch.Tensor")
    if new.shape != original.shape:
        raise HookError(
            f"controller {hook.id!r} on layer {hook.layer!r} returned shape {tuple(new.shape)}, "
            f"expected {tuple(original.shape)}"
        )
    if new.dtype != original.dtype:
        raise HookError(f"controller {hook.id!r} returned dtype {new.dtype}, expected {original.dtype}")
    if new.device != original.device:
        raise HookError(f"controller {hook.id!r} returned a tensor on {new.device}, expected {original.device}")
    return new
