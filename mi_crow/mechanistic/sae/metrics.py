"""Reconstruction and sparsity metrics."""

from __future__ import annotations

import torch


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """1 - FVU: share of the variance of ``x`` (around its batch mean) that ``x_hat`` reconstructs."""
    x = x.float()
    resid = (x - x_hat.float()).pow(2).sum()
    total = (x - x.mean(0, keepdim=True)).pow(2).sum().clamp_min(1e-12)
    return float(1 - resid / total)


def mse(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return float((x.float() - x_hat.float()).pow(2).mean())


class EpochStats:
    """Token-weighted averages of per-batch metrics over an epoch, plus sums for an exact EV."""

    def __init__(self) -> None:
        self.tokens = 0
        self.sums: dict[str, float] = {}
        self.sq_err = 0.0
        self.sum_x: torch.Tensor | None = None
        self.sum_x2 = 0.0

    def add(self, x: torch.Tensor, x_hat: torch.Tensor, **metrics: float) -> None:
        n = x.shape[0]
        self.tokens += n
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v * n
        xf = x.float()
        self.sq_err += float((xf - x_hat.float()).pow(2).sum())
        s = xf.sum(0)
        self.sum_x = s if self.sum_x is None else self.sum_x + s
        self.sum_x2 += float(xf.pow(2).sum())

    def summary(self) -> dict[str, float]:
        out = {k: v / max(self.tokens, 1) for k, v in self.sums.items()}
        if self.sum_x is not None and self.tokens:
            total_var = self.sum_x2 - float(self.sum_x.pow(2).sum()) / self.tokens
            out["explained_variance"] = 1 - self.sq_err / max(total_var, 1e-12)
            out["fvu"] = 1 - out["explained_variance"]
        out["tokens"] = float(self.tokens)
        return out


def mean_max_cosine(learned: torch.Tensor, true: torch.Tensor) -> float:
    """For each true atom, the best cosine with any learned row, averaged (1.0: every atom recovered).

    ``learned`` is ``(n_latents, d)`` (an SAE's decoder rows), ``true`` is ``(n_atoms, d)``. Sign counts:
    a learned row opposite to an atom does not recover it, as codes are non-negative.
    """
    if learned.ndim != 2 or true.ndim != 2 or learned.shape[1] != true.shape[1]:
        raise ValueError(f"need (n, d) and (m, d) dictionaries, got {tuple(learned.shape)} and {tuple(true.shape)}")
    a = learned.float() / learned.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = true.float() / true.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    return float((b @ a.T).max(dim=1).values.mean().detach())
