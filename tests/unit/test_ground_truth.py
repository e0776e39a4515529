"""Planted-concept ground truth: best latents, recovery fraction, concept frequency and paired steering runs."""

from __future__ import annotations

import pytest
import torch

from mi_crow.demo.corpus import CONCEPTS
from mi_crow.demo.ground_truth import (
    ConceptGroundTruth,
    SteeringProbe,
    best_latents,
    concept_frequency,
    latent_codes,
    recovered_fraction,
    steering_efficacy,
)
from mi_crow.language_model import LanguageModel
from mi_crow.mechanistic.sae import TopKSae


def test_best_latents_and_recovered_fraction():
    scores = torch.full((5, len(CONCEPTS)), 0.5)
    scores[3, 0] = 0.95  # animals: recovered by latent 3
    scores[1, 1] = 0.89  # colors: best is latent 1, just short of recovered
    results = best_latents(scores)
    assert [r.concept for r in results] == list(CONCEPTS)
    assert (results[0].latent, results[0].auroc, results[0].recovered) == (3, pytest.approx(0.95), True)
    assert (results[1].latent, results[1].recovered) == (1, False)
    assert recovered_fraction(results) == pytest.approx(1 / len(CONCEPTS))


def test_concept_frequency_counts_marker_words_per_word():
    assert concept_frequency(["the cat and the dog", "a red fox"], "animals") == pytest.approx(3 / 8)
    assert concept_frequency(["the catalogue"], "animals") == 0.0  # whole words only
    assert concept_frequency([], "animals") == 0.0
    r = ConceptGroundTruth("animals", 0, 0.9, rates={"unsteered": 0.1, "add 8": 0.4})
    assert r.lift("add 8") == pytest.approx(0.3) and r.lift("missing") == pytest.approx(-0.1)


def test_steering_runs_are_paired_with_the_unsteered_run(lm: LanguageModel, texts: list[str]):
    torch.manual_seed(0)
    sae = TopKSae(64, 32, k=4).eval()
    sae.layer = "transformer_h_0"
    held_out = latent_codes(lm, sae, "transformer_h_0", ["the cat and the dog", "a red fox ran"])
    codes, labels = held_out.codes, held_out.labels
    assert codes.shape == (labels.shape[0], 32) and labels.shape[1] == len(CONCEPTS)
    animals = list(CONCEPTS).index("animals")
    # Each text's next-token labels are its labels shifted by one, never running into the following text.
    per_text = [len(lm.tokenizer(t)["input_ids"]) for t in ["the cat and the dog", "a red fox ran"]]
    assert labels[:, animals].sum() >= 3 and labels.sum() == labels[:, animals].sum() + labels[:, 1].sum()
    n = per_text[0]
    assert torch.equal(held_out.next_labels[: n - 1], labels[1:n])
    assert torch.equal(held_out.next_labels[n:-1], labels[n + 1 :])
    assert not held_out.next_labels[n - 1].any() and not held_out.next_labels[-1].any()
    assert labels[n - 1, animals]  # "dog" ends the first text
    results = best_latents(torch.rand(32, len(CONCEPTS)), torch.rand(32, len(CONCEPTS)))
    assert all(0 <= r.next_latent < 32 for r in results)
    probe = SteeringProbe(pushes=(("add", 0.0), ("scale", 1.0)), prompts=("the cat",), repeats=2, max_new_tokens=6)
    assert probe.generate(lm) == probe.generate(lm)  # seeded: a steered run differs only by its edit
    # A zero addition changes nothing and both runs share prompts and seed, so the frequencies are equal exactly.
    for r in steering_efficacy(lm, sae, results, probe, codes):
        assert set(r.rates) == {"unsteered", "add latent", "add next", "scale latent", "scale next"}
        assert r.lift("add latent") == 0.0 and r.lift("add next") == 0.0
    assert lm.hooks.torch_handle_count() == 0
