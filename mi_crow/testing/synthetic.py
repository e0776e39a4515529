"""Activations with a known sparse dictionary: the ground truth an SAE should recover.

Each sample is a non-negative combination of a few unit-norm atoms plus small Gaussian noise, the
generative model SAEs assume (Sharkey et al. 2022). Training an SAE on it and comparing its decoder with
the true atoms (``mean_max_cosine``) checks that a variant learns features, not only reconstructions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SyntheticData:
    activations: torch.Tensor  # (n_samples, d) the data to train on
    atoms: torch.Tensor  # (n_atoms, d) unit-norm true dictionary
    codes: torch.Tensor  # (n_samples, n_atoms) non-negative true codes, sparse


def sparse_dictionary_data(
    n_samples: int = 8192,
    d: int = 32,
    n_atoms: int = 64,
    active: int = 3,
    noise: float = 0.01,
    seed: int = 0,
) -> SyntheticData:
    """``n_samples`` rows, each with exactly ``active`` atoms at magnitudes in [0.5, 1.5), plus noise.

    Magnitudes start at 0.5 so every active atom is clearly present (a near-zero one would be
    unrecoverable noise); ``noise`` is the per-dimension standard deviation.
    """
    if not 0 < active <= n_atoms or d <= 0 or n_samples <= 0:
        raise ValueError(f"need 0 < active <= n_atoms and positive sizes, got {active=}, {n_atoms=}, {d=}")
    gen = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d, generator=gen)
    atoms = atoms / atoms.norm(dim=1, keepdim=True)
    chosen = torch.rand(n_samples, n_atoms, generator=gen).argsort(dim=1)[:, :active]
    magnitudes = 0.5 + torch.rand(n_samples, active, generator=gen)
    codes = torch.zeros(n_samples, n_atoms).scatter_(1, chosen, magnitudes)
    activations = codes @ atoms + noise * torch.randn(n_samples, d, generator=gen)
    return SyntheticData(activations=activations, atoms=atoms, codes=codes)


def random_dictionary(n_latents: int, d: int, seed: int = 1) -> torch.Tensor:
    """Unit-norm random directions: the chance level for ``mean_max_cosine``."""
    rows = torch.randn(n_latents, d, generator=torch.Generator().manual_seed(seed))
    return rows / rows.norm(dim=1, keepdim=True)
