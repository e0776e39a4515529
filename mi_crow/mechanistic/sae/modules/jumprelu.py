"""JumpReLU SAE (Rajamanoharan et al. 2024) via overcomplete's ``JumpSAE``, with an L0 penalty."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from overcomplete.sae import JumpSAE as _OcJump
from overcomplete.sae import heaviside
from torch import nn

from mi_crow.mechanistic.sae.modules.base import Sae, SaeOutput


class JumpReLUSae(Sae):
    init_threshold_stds: ClassVar[float] = 1.0  # see init_from_data

    def __init__(
        self, d_in: int, n_latents: int, l0_coefficient: float = 1e-3, bandwidth: float = 1e-3, **kwargs: Any
    ) -> None:
        self.l0_coefficient = l0_coefficient
        self.bandwidth = bandwidth
        super().__init__(d_in, n_latents, **kwargs)

    def build_net(self) -> nn.Module:
        return _OcJump(self.d_in, self.n_latents, bandwidth=self.bandwidth)

    def hparams(self) -> dict[str, Any]:
        return {"l0_coefficient": self.l0_coefficient, "bandwidth": self.bandwidth}

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor) -> None:
        # overcomplete starts every threshold at exp(-3) ~ 0.05, far below the pre-activations of
        # normalized inputs: nearly half the latents fire, and a log-threshold moving ~lr per Adam step
        # needs thousands of steps to climb. Starting at one standard deviation of the first batch's
        # pre-activations starts sparse (about a tenth firing) yet still reconstructing; the L0 penalty
        # and reconstruction tune each threshold from there. (Two deviations start too sparse on LM
        # activations: few latents fire, and EV stays low for many epochs.)
        super().init_from_data(x)
        pre = self.encoder_pre(x.reshape(-1, self.d_in))
        self.net.thresholds.fill_(float(torch.log(self.init_threshold_stds * pre.float().std().clamp_min(1e-6))))

    def _thresholds(self) -> torch.Tensor:
        return torch.exp(self.net.thresholds)

    def sparsify(self, pre_codes: torch.Tensor) -> SaeOutput:
        from overcomplete.sae import jump_relu

        net = self.net
        codes = jump_relu(torch.relu(pre_codes), self._thresholds(), kernel_fn=net.kernel_fn, bandwidth=net.bandwidth)
        return SaeOutput(x_hat=pre_codes, pre_codes=pre_codes, codes=codes)

    def penalty(self, out: SaeOutput, step_fraction: float) -> torch.Tensor:
        net = self.net
        fired = heaviside(
            torch.relu(out.pre_codes), self._thresholds(), kernel_fn=net.kernel_fn, bandwidth=net.bandwidth
        )
        return self.l0_coefficient * min(1.0, step_fraction) * fired.sum(-1).mean()
