"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations per token.

The encoder's backward is sparse too (``topk_encoder``): only the k selected latents per row get a weight
and bias gradient. Decoding uses only the k active latents (an embedding-bag over the dictionary) instead of a dense
``codes @ D``: the same result and gradients at a fraction of the work when k << n_latents.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from overcomplete.sae import TopKSAE as _OcTopK
from torch import nn

from mi_crow.mechanistic.sae.modules.auxk import auxk_loss
from mi_crow.mechanistic.sae.modules.base import Sae, SaeOutput
from mi_crow.mechanistic.sae.modules.topk_encoder import topk_linear_encode


class TopKSae(Sae):
    tied_init = True

    def __init__(self, d_in: int, n_latents: int, k: int = 32, **kwargs: Any) -> None:
        if not 0 < k <= n_latents:
            raise ValueError(f"k must be in 1..n_latents ({n_latents}), got {k}")
        self.k = k
        super().__init__(d_in, n_latents, **kwargs)

    def build_net(self) -> nn.Module:
        return _OcTopK(self.d_in, self.n_latents, top_k=self.k)

    def hparams(self) -> dict[str, Any]:
        return {"k": self.k}

    def _plain_linear(self) -> nn.Linear | None:
        """The encoder's single Linear when it is nothing more (overcomplete's default), else None."""
        enc = getattr(self.net, "encoder", None)
        block = getattr(enc, "final_block", None)
        if enc is None or len(getattr(enc, "mlp_blocks", [None])) or not isinstance(block, nn.Sequential):
            return None
        if len(block) != 2 or not isinstance(block[0], nn.Linear) or not isinstance(block[1], nn.Identity):
            return None
        return block[0] if block[0].bias is not None else None

    def forward(self, x: torch.Tensor) -> SaeOutput:
        linear = self._plain_linear()
        if not torch.is_grad_enabled() or torch.is_autocast_enabled() or linear is None:
            return super().forward(x)
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if flat.shape[-1] != self.d_in:
            raise ValueError(f"SAE expects inputs of width {self.d_in}, got {flat.shape[-1]}")
        u = flat.to(self.b_dec.dtype) * self.input_scale - self.b_dec
        pre, values, indices = topk_linear_encode(u, linear.weight, linear.bias, self.k)
        out = SaeOutput(x_hat=pre, pre_codes=pre, top_values=values, top_indices=indices)
        u_hat = self.decode_raw(out) + self.b_dec
        out.x_hat = (u_hat / self.input_scale).to(x.dtype).reshape(shape)
        return out

    def sparsify(self, pre_codes: torch.Tensor) -> SaeOutput:
        values, indices = torch.topk(pre_codes, self.k, dim=-1, sorted=False)
        return SaeOutput(x_hat=pre_codes, pre_codes=pre_codes, top_values=F.relu(values), top_indices=indices)

    def aux_loss(self, x: torch.Tensor, out: SaeOutput, dead: torch.Tensor, k_aux: int) -> torch.Tensor | None:
        return auxk_loss(self, x, out, dead, k_aux)

    def decode_raw(self, out: SaeOutput) -> torch.Tensor:
        if out.top_indices is None:
            return super().decode_raw(out)
        return F.embedding_bag(out.top_indices, self.dictionary, per_sample_weights=out.top_values, mode="sum")
