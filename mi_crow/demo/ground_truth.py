"""Ground truth of the demo corpus: how well an SAE recovers the planted concepts, and how well it steers them.

Recovery: each concept's best latent by token-level AUROC, and the fraction of concepts whose best latent
reaches ``RECOVERED_AUROC``. Steering efficacy: the concept's marker-word frequency in generations steered
by that latent versus unsteered ones, from the same prompts and the same sampling seed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedTokenizerBase

from mi_crow.demo.corpus import CONCEPTS, concept_token_mask
from mi_crow.hooks import LayerActivationDetector
from mi_crow.mechanistic.steering import Steering, SteeringMode

if TYPE_CHECKING:
    from mi_crow.language_model import LanguageModel
    from mi_crow.mechanistic.sae import Sae

RECOVERED_AUROC = 0.9
# Neutral openings: none names a concept, so whatever concept shows up in a continuation came from the model.
NEUTRAL_PROMPTS = ("the", "yesterday", "in the morning", "they said that", "after lunch", "we saw the")


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


# -- recovery ------------------------------------------------------------------------------------------


@dataclass
class TokenCodes:
    """Sparse codes of held-out text with the ground truth of each token and of the token after it."""

    codes: torch.Tensor  # (tokens, n_latents), padding dropped, texts one after another
    labels: torch.Tensor  # (tokens, n_concepts): the token is one of the concept's marker words
    next_labels: torch.Tensor  # (tokens, n_concepts): the next token of the same text is


def latent_codes(lm: LanguageModel, sae: Sae, layer: str, texts: Sequence[str], batch_size: int = 64) -> TokenCodes:
    """Codes of ``sae`` at ``layer`` over ``texts``, aligned with the planted labels."""
    detector = LayerActivationDetector(layer)
    codes = []
    with lm.hooks.attached(detector):
        for start in range(0, len(texts), batch_size):
            out = lm.forwards(list(texts[start : start + batch_size]))
            assert detector.activations is not None
            with torch.inference_mode():
                codes.append(sae.encode(detector.activations[out.attention_mask.bool()].to(sae.b_dec.device)).cpu())
    per_text = token_labels(texts, lm.tokenizer, lm.max_length)
    labels, all_codes = torch.cat(per_text), torch.cat(codes)
    if labels.shape[0] != all_codes.shape[0]:
        raise RuntimeError(f"{all_codes.shape[0]} token codes but {labels.shape[0]} token labels: tokenizations differ")
    return TokenCodes(all_codes, labels, next_token_labels(per_text))


def next_token_labels(per_text: Sequence[torch.Tensor]) -> torch.Tensor:
    """``token_labels`` shifted by one within each text: whether the *next* token is a concept's marker."""
    return torch.cat([torch.cat([t[1:], torch.zeros_like(t[:1])]) for t in per_text])  # the last token has none


@dataclass
class ConceptGroundTruth:
    concept: str
    latent: int  # the latent that detects the concept's tokens best
    auroc: float  # of that latent, on held-out text
    # The latent that best announces the concept's next token. Near the output a detecting latent says "this
    # token was an animal" (so it predicts what follows animals); the announcing one is what steering needs.
    next_latent: int = -1
    next_auroc: float = 0.5
    # Marker words per generated word, by how a latent was pushed ("unsteered" is the shared baseline).
    rates: dict[str, float] = field(default_factory=dict)

    @property
    def recovered(self) -> bool:
        return self.auroc >= RECOVERED_AUROC

    def lift(self, how: str) -> float:
        """How much steering ``how`` raised the concept's frequency over the unsteered generations."""
        return self.rates.get(how, 0.0) - self.rates.get("unsteered", 0.0)


def best_latents(scores: torch.Tensor, next_scores: torch.Tensor | None = None) -> list[ConceptGroundTruth]:
    """Per planted concept (in ``CONCEPTS`` order), the latents with the highest AUROC."""
    out = []
    for c, concept in enumerate(CONCEPTS):
        latent = int(scores[:, c].argmax())
        result = ConceptGroundTruth(concept, latent, float(scores[latent, c]))
        if next_scores is not None:
            result.next_latent = int(next_scores[:, c].argmax())
            result.next_auroc = float(next_scores[result.next_latent, c])
        out.append(result)
    return out


def recovered_fraction(results: Sequence[ConceptGroundTruth]) -> float:
    return sum(r.recovered for r in results) / max(1, len(results))


# -- steering efficacy -----------------------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z']+")


def concept_frequency(texts: Sequence[str], concept: str) -> float:
    """Marker words of ``concept`` per word over all ``texts``."""
    words = sum(len(_WORD.findall(t)) for t in texts)
    return sum(len(concept_token_mask(t, concept)) for t in texts) / max(1, words)


@dataclass(frozen=True)
class SteeringProbe:
    """How latents are pushed, and how the generations they are measured on are made.

    ``add`` values are multiples of the latent's mean code where it fires on held-out text (latents differ
    in scale), ``scale`` values plain factors.
    """

    pushes: tuple[tuple[str, float], ...] = (("add", 4.0), ("scale", 8.0))  # (mode, value)
    prompts: tuple[str, ...] = NEUTRAL_PROMPTS
    repeats: int = 2  # each prompt sampled this many times (one batch, one seed)
    max_new_tokens: int = 16
    temperature: float = 0.8
    seed: int = 0

    def generate(self, lm: LanguageModel) -> list[str]:
        prompts = list(self.prompts) * self.repeats
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": True}
        return lm.generate(prompts, temperature=self.temperature, seed=self.seed, **kwargs).texts


def mean_active(codes: torch.Tensor, latent: int) -> float:
    """A latent's mean code where it fires (1.0 if it never does)."""
    col = codes[:, latent]
    fired = col[col > 0]
    return float(fired.mean()) if len(fired) else 1.0


def steering_efficacy(
    lm: LanguageModel,
    sae: Sae,
    results: Sequence[ConceptGroundTruth],
    probe: SteeringProbe | None = None,
    codes: torch.Tensor | None = None,
) -> list[ConceptGroundTruth]:
    """Fill each result's ``rates``: unsteered, and steered by its latent(s) in every way of ``probe.pushes``.

    Keys: ``"unsteered"``, ``"<mode> latent"`` and, when a next-token latent is known, ``"<mode> next"``.
    Every generation uses the same prompts and seed, so steered and unsteered runs differ only by the edit
    (the pairing ``mi_crow.mechanistic.steering.generate_compare`` makes; the unsteered run is shared here).
    ``codes`` (held-out codes) set the unit of ``add``; without them it is one code unit.
    """
    probe = probe or SteeringProbe()
    plain = probe.generate(lm)
    for r in results:
        r.rates["unsteered"] = concept_frequency(plain, r.concept)
        latents = {"latent": r.latent} | ({"next": r.next_latent} if r.next_latent >= 0 else {})
        for mode, value in probe.pushes:
            for which, latent in latents.items():
                unit = mean_active(codes, latent) if codes is not None and mode == "add" else 1.0
                with Steering().edit(sae, latent, SteeringMode(mode), value * unit).applied(lm):
                    steered = probe.generate(lm)
                r.rates[f"{mode} {which}"] = concept_frequency(steered, r.concept)
    return list(results)


def evaluate_ground_truth(
    lm: LanguageModel,
    sae: Sae,
    layer: str,
    eval_texts: Sequence[str],
    probe: SteeringProbe | None = None,
) -> list[ConceptGroundTruth]:
    """Recovery (best latents and AUROCs per concept) and steering efficacy of ``sae`` at ``layer``."""
    held_out = latent_codes(lm, sae, layer, eval_texts)
    results = best_latents(
        auroc_matrix(held_out.codes, held_out.labels), auroc_matrix(held_out.codes, held_out.next_labels)
    )
    return steering_efficacy(lm, sae, results, probe, held_out.codes)
