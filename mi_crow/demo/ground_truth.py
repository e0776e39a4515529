"""Scoring latents against the planted concepts of the demo corpus (token-level AUROC)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from mi_crow.demo.corpus import CONCEPTS, concept_token_mask


def token_labels(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[torch.Tensor]:
    """Per text, a (n_tokens, n_concepts) bool tensor: which concept's marker word each token overlaps."""
    names = list(CONCEPTS)
    out = []
    for text in texts:
        enc = tokenizer(text, return_offsets_mapping=True, truncation=True, max_length=max_length)
        offsets = enc["offset_mapping"]
        labels = torch.zeros(len(offsets), len(names), dtype=torch.bool)
        for c, concept in enumerate(names):
            for start, end in concept_token_mask(text, concept):
                for t, (a, b) in enumerate(offsets):
                    if a < end and b > start and b > a:
                        labels[t, c] = True
        out.append(labels)
    return out


def auroc_matrix(codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(n_latents, n_concepts) AUROC of each latent's activation at detecting each concept's tokens.

    Tie-aware (sparse codes are mostly zero, so ties are the common case): average ranks per value.
    """
    n, n_latents = codes.shape
    labels_f = labels.float()
    n_pos = labels_f.sum(0)
    n_neg = n - n_pos
    out = torch.full((n_latents, labels.shape[1]), 0.5)
    for j in range(n_latents):
        col = codes[:, j]
        if not bool((col > 0).any()):
            continue
        _, inverse, counts = torch.unique(col, return_inverse=True, return_counts=True)
        ends = counts.cumsum(0).float()
        avg_rank = ends - (counts.float() - 1) / 2  # 1-based average rank of each distinct value
        ranks = avg_rank[inverse]
        pos_rank_sum = ranks @ labels_f
        out[j] = (pos_rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg).clamp_min(1)
    return out
