"""ReLU SAE with an L1 penalty (the original dictionary-learning SAE), via overcomplete's ``SAE``."""

from __future__ import annotations

from typing import Any

import torch
from overcomplete.sae import SAE as _OcSAE
from torch import nn

from mi_crow.mechanistic.sae.modules.base import Sae, SaeOutput


class L1Sae(Sae):
    def __init__(self, d_in: int, n_latents: int, l1_coefficient: float = 5e-3, **kwargs: Any) -> None:
        self.l1_coefficient = l1_coefficient
        super().__init__(d_in, n_latents, **kwargs)

    def build_net(self) -> nn.Module:
        return _OcSAE(self.d_in, self.n_latents)

    def hparams(self) -> dict[str, Any]:
        return {"l1_coefficient": self.l1_coefficient}

    def sparsify(self, pre_codes: torch.Tensor) -> SaeOutput:
        return SaeOutput(x_hat=pre_codes, pre_codes=pre_codes, codes=torch.relu(pre_codes))

    def penalty(self, out: SaeOutput, step_fraction: float) -> torch.Tensor:
        # Dictionary rows are unit-norm (overcomplete normalizes them), so |z| is the usual |z|*||d||.
        # The coefficient ramps up over the warmup so latents are not killed before they find a direction.
        assert out.codes is not None
        return self.l1_coefficient * min(1.0, step_fraction) * out.codes.abs().sum(-1).mean() / self.d_in**0.5


ReluSae = L1Sae
