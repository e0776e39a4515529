"""Steering through an SAE: scale latents inside it while keeping what it fails to reconstruct.

``out = decode(edit(encode(x))) + (x - decode(encode(x)))``: with no edits this is ``x`` up to float
rounding, so the model only changes where a latent is deliberately scaled.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mi_crow.hooks import Controller, HookType
from mi_crow.mechanistic.concepts.config import ConceptConfig
from mi_crow.mechanistic.sae.modules import Sae


class SaeSteeringController(Controller):
    kind = "sae_steering_controller"

    def __init__(self, sae: Sae, config: ConceptConfig, layer: str | None = None, *, name: str | None = None):
        layer = layer or sae.layer
        if not layer:
            raise ValueError("the SAE records no layer; pass the layer to steer")
        super().__init__(layer, HookType.FORWARD, name=name)
        self.sae = sae
        self.config = config
        latents = config.latents()
        device = sae.b_dec.device
        self._idx = torch.tensor(latents, dtype=torch.long, device=device)
        self._scale = torch.tensor([config.scales.get(i, 1.0) for i in latents], device=device)
        self._bias = torch.tensor([config.biases.get(i, 0.0) for i in latents], device=device)

    def modify(self, tensor: torch.Tensor, module: nn.Module, context: dict[str, Any]) -> torch.Tensor:
        if self.config.is_empty:
            return tensor
        x = tensor.to(self.sae.b_dec.dtype)
        codes = self.sae.encode(x)
        error = x - self.sae.decode(codes)
        edited = codes.clone()
        edited[..., self._idx] = codes[..., self._idx] * self._scale + self._bias
        return (self.sae.decode(edited) + error).to(tensor.dtype)
