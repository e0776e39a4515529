"""Controllers: replace what a layer computes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from mi_crow.hooks.hook import Controller, HookType


class FunctionController(Controller):
    """Wraps a plain function ``tensor -> tensor``."""

    kind = "function_controller"

    def __init__(
        self,
        layer: str | None,
        fn: Callable[[torch.Tensor], torch.Tensor],
        hook_type: HookType | str = HookType.FORWARD,
        *,
        name: str | None = None,
    ) -> None:
        super().__init__(layer, hook_type, name=name)
        self.fn = fn

    def modify(self, tensor: torch.Tensor, module: nn.Module, context: dict[str, Any]) -> torch.Tensor:
        return self.fn(tensor)


class NeuronMultiplierController(Controller):
    """Scales chosen units of the last dimension: ``out[..., i] = x[..., i] * factors[i]``.

    Only the named units change (the seed added +1 to every unit when one multiplier was set).
    """

    kind = "neuron_multiplier_controller"

    def __init__(
        self,
        layer: str,
        factors: Mapping[int, float],
        hook_type: HookType | str = HookType.FORWARD,
        *,
        name: str | None = None,
    ) -> None:
        super().__init__(layer, hook_type, name=name)
        self.factors = {int(i): float(f) for i, f in factors.items()}

    def modify(self, tensor: torch.Tensor, module: nn.Module, context: dict[str, Any]) -> torch.Tensor:
        if not self.factors:
            return tensor
        width = tensor.shape[-1]
        bad = [i for i in self.factors if not -width <= i < width]
        if bad:
            raise IndexError(f"controller {self.id!r}: neuron indices {bad} out of range for width {width}")
        idx = torch.tensor(list(self.factors), device=tensor.device)
        scale = torch.tensor(list(self.factors.values()), device=tensor.device, dtype=tensor.dtype)
        out = tensor.clone()
        out[..., idx] = tensor[..., idx] * scale
        return out
