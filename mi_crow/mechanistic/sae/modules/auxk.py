"""AuxK (Gao et al. 2024): dead latents learn to reconstruct what the live ones miss.

A TopK-family latent that never wins the selection gets no gradient and stays dead. AuxK picks, per
token, the ``k_aux`` dead latents with the largest pre-activations and trains them to reconstruct the
residual error ``x - x_hat``; as they line up with what is left unexplained their pre-activations grow
until they win real top-k slots. The loss is normalized by the residual's variance, so its coefficient
(``TrainingConfig.auxk_alpha``, 1/32 in the paper) means the same at every stage of training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from mi_crow.mechanistic.sae.modules.base import Sae, SaeOutput


def auxk_loss(sae: Sae, x: torch.Tensor, out: SaeOutput, dead: torch.Tensor, k_aux: int) -> torch.Tensor | None:
    n_dead = int(dead.sum())
    if n_dead == 0 or k_aux <= 0:
        return None
    k_aux = min(k_aux, n_dead)
    # Residual in normalized units, fixed: only the dead latents learn from this term.
    residual = ((x.float() - out.x_hat.float()) * sae.input_scale).detach()
    pre = out.pre_codes.masked_fill(~dead, float("-inf"))
    values, indices = torch.topk(pre, k_aux, dim=-1, sorted=False)
    recon = F.embedding_bag(indices, sae.dictionary, per_sample_weights=F.relu(values), mode="sum")
    denom = (residual - residual.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-8)
    return (recon.float() - residual).pow(2).sum(-1).mean() / denom
