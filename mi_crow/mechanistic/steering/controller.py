"""``SaeEditController``: one SAE's latent edits on its layer, as a hook controller.

Code edits (scale, ablate, and the concept configs' bias) happen inside the SAE while keeping what it fails
to reconstruct: ``out = decode(edit(encode(x))) + (x - decode(encode(x)))``, so with no edit the layer's
output is ``x`` up to float rounding. Additions skip the SAE: ``out = x + sum(alpha_i * d_i)`` with ``d_i``
the latent's decoder direction in the model's units, so a zero alpha leaves ``x`` exactly as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mi_crow.hooks import Controller, HookType
from mi_crow.mechanistic.sae.modules import Sae


def decoder_direction(sae: Sae, latent: int) -> torch.Tensor:
    """What one unit of ``latent``'s code adds to the layer output, in the model's activation units.

    The SAE decodes in normalized units (inputs are multiplied by ``input_scale`` before encoding), so
    its dictionary row is divided by ``input_scale`` to get back to what the model sees.
    """
    if not 0 <= int(latent) < sae.n_latents:
        raise ValueError(f"latent {latent} out of range 0..{sae.n_latents - 1}")
    with torch.no_grad():
        return sae.dictionary[int(latent)] / sae.input_scale


class SaeEditController(Controller):
    """Scales/shifts chosen latent codes inside ``sae`` and adds chosen decoder directions, at every position."""

    kind = "sae_edit_controller"

    def __init__(
        self,
        sae: Sae,
        layer: str | None = None,
        *,
        scales: Mapping[int, float] | None = None,
        biases: Mapping[int, float] | None = None,
        adds: Mapping[int, float] | None = None,
        name: str | None = None,
    ) -> None:
        layer = layer or sae.layer
        if not layer:
            raise ValueError("the SAE records no layer; pass the layer to steer")
        super().__init__(layer, HookType.FORWARD, name=name)
        self.sae = sae
        scales, biases = dict(scales or {}), dict(biases or {})
        coded = sorted(set(scales) | set(biases))
        device = sae.b_dec.device
        self._idx = torch.tensor(coded, dtype=torch.long, device=device)
        self._scale = torch.tensor([float(scales.get(i, 1.0)) for i in coded], device=device)
        self._bias = torch.tensor([float(biases.get(i, 0.0)) for i in coded], device=device)
        self._adds = {int(i): float(a) for i, a in (adds or {}).items()}

    @property
    def is_empty(self) -> bool:
        return not len(self._idx) and not self._adds

    def _shift(self) -> torch.Tensor:
        """The summed additions in model units, shape ``(d_in,)``."""
        with torch.no_grad():
            idx = torch.tensor(list(self._adds), dtype=torch.long, device=self.sae.b_dec.device)
            alpha = torch.tensor(list(self._adds.values()), dtype=self.sae.b_dec.dtype, device=idx.device)
            return (alpha @ self.sae.dictionary[idx]) / self.sae.input_scale

    def modify(self, tensor: torch.Tensor, module: nn.Module, context: dict[str, Any]) -> torch.Tensor:
        out = tensor
        if len(self._idx):
            sae = self.sae
            x = tensor.to(device=sae.b_dec.device, dtype=sae.b_dec.dtype)
            codes = sae.encode(x)
            error = x - sae.decode(codes)
            edited = codes.clone()
            edited[..., self._idx] = codes[..., self._idx] * self._scale + self._bias
            out = (sae.decode(edited) + error).to(device=tensor.device, dtype=tensor.dtype)
        if self._adds:
            out = out + self._shift().to(device=out.device, dtype=out.dtype)
        return out
