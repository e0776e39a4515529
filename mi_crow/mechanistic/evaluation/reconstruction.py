"""Reconstruction quality of an SAE over a window of tokens, accumulated batch by batch.

Every statistic comes from running sums in float64, so the result is exact for the window (not an average
of per-batch averages) and does not depend on how the window was cut into batches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from mi_crow.language_model.harvest import iter_harvest
from mi_crow.mechanistic.evaluation.report import DENSE_THRESHOLD, DENSITY_LOG10_EDGES
from mi_crow.mechanistic.sae.modules import Sae, SaeOutput

if TYPE_CHECKING:
    from mi_crow.language_model import LanguageModel


def _firing_counts(out: SaeOutput, n_latents: int) -> torch.Tensor:
    """(n_latents,) how many rows each latent fired on, without densifying top-k codes."""
    if out.codes is not None:
        return (out.codes > 0).sum(0).to(torch.float64)
    assert out.top_values is not None and out.top_indices is not None
    fired = out.top_indices[out.top_values > 0]
    return torch.bincount(fired, minlength=n_latents).to(torch.float64)


class ReconstructionStats:
    """Streaming accumulator: ``add`` activation batches (rows are tokens), then ``result``."""

    def __init__(self, sae: Sae, dense_threshold: float = DENSE_THRESHOLD) -> None:
        if not 0 < dense_threshold <= 1:
            raise ValueError(f"dense_threshold must be in (0, 1], got {dense_threshold}")
        self.sae = sae
        self.dense_threshold = dense_threshold
        device = sae.b_dec.device
        self.tokens = 0
        self.sum_x = torch.zeros(sae.d_in, dtype=torch.float64, device=device)
        self.sum_x2 = torch.zeros((), dtype=torch.float64, device=device)
        self.sq_err = torch.zeros((), dtype=torch.float64, device=device)
        self.active = torch.zeros((), dtype=torch.float64, device=device)
        self.fired = torch.zeros(sae.n_latents, dtype=torch.float64, device=device)

    @torch.inference_mode()
    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, self.sae.d_in).to(device=self.sae.b_dec.device, dtype=torch.float32)
        if x.shape[0] == 0:
            return
        if not bool(torch.isfinite(x).all()):
            raise ValueError("activations hold NaN or Inf values")
        out = self.sae(x)
        xd = x.double()
        fired = _firing_counts(out, self.sae.n_latents)
        self.tokens += x.shape[0]
        self.sum_x += xd.sum(0)
        self.sum_x2 += xd.pow(2).sum()
        self.sq_err += (xd - out.x_hat.double()).pow(2).sum()
        self.active += fired.sum()
        self.fired += fired

    def result(self) -> dict[str, Any]:
        if self.tokens == 0:
            raise ValueError("no tokens to evaluate: the texts or activations were empty")
        n = self.tokens
        total_var = float(self.sum_x2 - self.sum_x.pow(2).sum() / n)
        sq_err = float(self.sq_err)
        fvu = sq_err / total_var if total_var > 0 else float("nan")
        density = (self.fired / n).cpu()
        live = density > 0
        edges = torch.tensor(DENSITY_LOG10_EDGES, dtype=torch.float64)
        logd = density[live].log10().clamp(edges[0], edges[-1])
        # Bin i holds edges[i] <= log10 d < edges[i+1]; the last bin also takes d == 1 (log10 d == 0).
        idx = (torch.bucketize(logd, edges, right=True) - 1).clamp(0, len(edges) - 2)
        counts = torch.bincount(idx, minlength=len(edges) - 1)
        return {
            "tokens": n,
            "n_latents": self.sae.n_latents,
            "mse": sq_err / (n * self.sae.d_in),
            "explained_variance": 1.0 - fvu,
            "fvu": fvu,
            "l0": float(self.active) / n,
            "dead_fraction": float((~live).double().mean()),
            "dense_fraction": float((density > self.dense_threshold).double().mean()),
            "dense_threshold": self.dense_threshold,
            "latent_density": density.tolist(),
            "histogram_edges": list(DENSITY_LOG10_EDGES),
            "histogram_counts": [int(c) for c in counts.tolist()],
            "dead_latents": int((~live).sum()),
        }


def reconstruction_from_activations(
    sae: Sae,
    batches: Iterable[torch.Tensor],
    *,
    max_tokens: int | None = None,
    dense_threshold: float = DENSE_THRESHOLD,
) -> dict[str, Any]:
    """Reconstruction stats over stored activations (e.g. a run's held-out shards), first ``max_tokens`` rows."""
    stats = ReconstructionStats(sae, dense_threshold)
    for batch in batches:
        rows = batch.reshape(-1, sae.d_in)
        if max_tokens is not None:
            rows = rows[: max_tokens - stats.tokens]
        stats.add(rows)
        if max_tokens is not None and stats.tokens >= max_tokens:
            break
    return stats.result()


def harvested_rows(
    lm: LanguageModel,
    batches: Iterable[list[str]],
    layer: str,
    *,
    max_tokens: int,
    max_length: int | None = None,
) -> Iterator[tuple[torch.Tensor, int]]:
    """(rows, texts read) per batch from the stop-early harvest, cut at ``max_tokens`` real tokens in text order.

    Closing the generator (the window is full) closes the harvest, which takes its hooks off the model.
    """
    harvest = iter_harvest(lm, batches, [layer], max_length=max_length, dtype=torch.float32, stop_early=True)
    seen = 0
    with contextlib.closing(harvest):
        for hb in harvest:
            rows = hb.activations[layer][: max_tokens - seen]
            seen += rows.shape[0]
            cut = rows.shape[0] < hb.token_ids.shape[0]  # the window ends inside this batch
            yield rows, int(hb.sample_index[: rows.shape[0]].unique().numel()) if cut else hb.n_samples
            if seen >= max_tokens:
                return


def evaluate_reconstruction(
    lm: LanguageModel,
    sae: Sae,
    batches: Iterable[list[str]],
    layer: str,
    *,
    max_tokens: int,
    max_length: int | None = None,
    dense_threshold: float = DENSE_THRESHOLD,
    progress: bool = False,
) -> dict[str, Any]:
    """Reconstruction stats of ``sae`` on ``layer`` over the first ``max_tokens`` non-padding tokens."""
    stats = ReconstructionStats(sae, dense_threshold)
    texts = 0
    with tqdm(total=max_tokens, unit="tok", desc="evaluate reconstruction", disable=not progress) as bar:
        for rows, n_texts in harvested_rows(lm, batches, layer, max_tokens=max_tokens, max_length=max_length):
            stats.add(rows)
            texts += n_texts
            bar.update(rows.shape[0])
    out = stats.result()
    out["texts"] = texts
    return out
