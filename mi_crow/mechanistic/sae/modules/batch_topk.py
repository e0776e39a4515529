"""BatchTopK SAE (Bussmann et al. 2024): keep the ``k * batch`` largest activations of the whole batch.

Tokens that need more latents get more. At inference a per-latent-free global threshold, tracked as a
running mean of the batch's k-th value during training, replaces the batch-wide selection.
"""

from __future__ import annotations

from typing import Any

import torch
from overcomplete.sae import SAE as _OcSAE
from torch import nn

from mi_crow.mechanistic.sae.modules.auxk import auxk_loss
from mi_crow.mechanistic.sae.modules.base import Sae, SaeOutput


class BatchTopKSae(Sae):
    tied_init = True

    def __init__(self, d_in: int, n_latents: int, k: int = 32, threshold_momentum: float = 0.99, **kwargs: Any):
        if not 0 < k <= n_latents:
            raise ValueError(f"k must be in 1..n_latents ({n_latents}), got {k}")
        self.k = k
        self.threshold_momentum = threshold_momentum
        super().__init__(d_in, n_latents, **kwargs)
        self.register_buffer("threshold", torch.tensor(-1.0))  # < 0: not yet estimated

    def build_net(self) -> nn.Module:
        return _OcSAE(self.d_in, self.n_latents)

    def hparams(self) -> dict[str, Any]:
        return {"k": self.k, "threshold_momentum": self.threshold_momentum}

    def sparsify(self, pre_codes: torch.Tensor) -> SaeOutput:
        acts = torch.relu(pre_codes)
        if self.training or self.threshold < 0:
            n_keep = min(self.k * acts.shape[0], acts.numel())
            kth = torch.topk(acts.flatten(), n_keep, sorted=False).values.min()
            if self.training:
                with torch.no_grad():
                    m = self.threshold_momentum if self.threshold >= 0 else 0.0
                    self.threshold.copy_(m * self.threshold + (1 - m) * kth.detach())
            threshold = kth
        else:
            threshold = self.threshold
        codes = acts * (acts >= threshold).to(acts.dtype) * (acts > 0).to(acts.dtype)
        return SaeOutput(x_hat=pre_codes, pre_codes=pre_codes, codes=codes)

    def aux_loss(self, x: torch.Tensor, out: SaeOutput, dead: torch.Tensor, k_aux: int) -> torch.Tensor | None:
        return auxk_loss(self, x, out, dead, k_aux)
