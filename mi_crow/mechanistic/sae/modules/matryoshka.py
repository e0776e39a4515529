"""Matryoshka SAE (Bussmann et al. 2025; Nabeshima 2024): nested dictionaries in one SAE.

The latents are split into consecutive groups; prefix ``i`` is groups ``0..i``. Training minimizes the
reconstruction error of every prefix, so the first latents must reconstruct on their own: they learn
general features, later groups add detail, and a wide SAE no longer splits or absorbs broad features.
Sparsity is BatchTopK, as in the paper. overcomplete 0.3.0 has no Matryoshka SAE; this one is built on
its plain ``SAE`` (linear encoder + unit-norm ``DictionaryLayer``) through ``BatchTopKSae``.
"""

from __future__ import annotations

from typing import Any

import torch

from mi_crow.mechanistic.sae.modules.base import SaeOutput
from mi_crow.mechanistic.sae.modules.batch_topk import BatchTopKSae


def default_group_sizes(n_latents: int, n_groups: int = 5) -> list[int]:
    """Groups that double in size (1, 1, 2, 4, 8 sixteenths of ``n_latents``), the first at least 1 wide."""
    n_groups = max(1, min(n_groups, n_latents))
    weights = [1] + [2**i for i in range(n_groups - 1)]
    sizes = [max(1, n_latents * w // sum(weights)) for w in weights]
    sizes[-1] = n_latents - sum(sizes[:-1])
    return [s for s in sizes if s > 0]


class MatryoshkaSae(BatchTopKSae):
    def __init__(
        self,
        d_in: int,
        n_latents: int,
        k: int = 32,
        group_sizes: list[int] | None = None,
        threshold_momentum: float = 0.99,
        **kwargs: Any,
    ) -> None:
        sizes = list(group_sizes) if group_sizes else default_group_sizes(n_latents)
        if any(int(s) <= 0 for s in sizes) or sum(sizes) != n_latents:
            raise ValueError(f"group_sizes must be positive and sum to n_latents ({n_latents}), got {sizes}")
        self.group_sizes = [int(s) for s in sizes]
        super().__init__(d_in, n_latents, k=k, threshold_momentum=threshold_momentum, **kwargs)

    def hparams(self) -> dict[str, Any]:
        return {**super().hparams(), "group_sizes": self.group_sizes}

    @property
    def prefix_ends(self) -> list[int]:
        """Number of latents in each prefix, e.g. ``[16, 32, 64, 128]``."""
        ends, total = [], 0
        for size in self.group_sizes:
            total += size
            ends.append(total)
        return ends

    def prefix_errors(self, x: torch.Tensor, out: SaeOutput) -> list[torch.Tensor]:
        """Mean squared error (normalized units) of the reconstruction from each prefix of groups."""
        codes = out.dense_codes()
        dictionary = self.dictionary
        target = x.reshape(-1, self.d_in).float() * self.input_scale - self.b_dec
        partial = torch.zeros_like(target)
        errors, start = [], 0
        for end in self.prefix_ends:
            # Each group's contribution is added once: the cost of all prefixes is that of one decode.
            partial = partial + codes[:, start:end] @ dictionary[start:end]
            errors.append((partial - target).pow(2).mean())
            start = end
        return errors

    def loss(self, x: torch.Tensor, out: SaeOutput, step_fraction: float) -> dict[str, torch.Tensor]:
        errors = self.prefix_errors(x, out)
        # The sum over prefixes, divided by their number: the same optimum, at the scale of one
        # reconstruction error, so the learning rate heuristic and AuxK weight fit as for other variants.
        return {"mse": errors[-1], "loss": torch.stack(errors).mean(), "prefix_mse_first": errors[0]}

    def decode_prefix(self, codes: torch.Tensor, n_groups: int) -> torch.Tensor:
        """Reconstruction (input units) from the first ``n_groups`` groups of ``codes`` only."""
        if not 1 <= n_groups <= len(self.group_sizes):
            raise ValueError(f"n_groups must be in 1..{len(self.group_sizes)}, got {n_groups}")
        kept = codes.clone()
        kept[..., self.prefix_ends[n_groups - 1] :] = 0
        return self.decode(kept)
