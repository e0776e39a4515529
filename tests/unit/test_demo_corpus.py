"""The synthetic corpus must be reproducible and its concept labels exactly true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mi_crow.demo.corpus import (
    CONCEPTS,
    Sample,
    concept_token_mask,
    concepts_in,
    generate_corpus,
    read_corpus,
    write_corpus,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def corpus() -> list[Sample]:
    return generate_corpus(1000, seed=3)


def test_same_seed_same_corpus() -> None:
    assert generate_corpus(200, seed=7) == generate_corpus(200, seed=7)


def test_different_seed_different_corpus() -> None:
    assert generate_corpus(200, seed=7) != generate_corpus(200, seed=8)


def test_global_random_state_is_irrelevant() -> None:
    import random

    random.seed(1)
    first = generate_corpus(50, seed=0)
    random.seed(2)
    assert generate_corpus(50, seed=0) == first


def test_marker_words_are_unique_across_concepts() -> None:
    words = [w for ws in CONCEPTS.values() for w in ws]
    assert len(words) == len(set(words))
    assert 6 <= len(CONCEPTS) <= 10
    assert all(8 <= len(ws) <= 15 for ws in CONCEPTS.values())


def test_labels_match_marker_words(corpus: list[Sample]) -> None:
    for sample in corpus:
        for concept, words in CONCEPTS.items():
            spans = concept_token_mask(sample.text, concept)
            assert (concept in sample.concepts) == bool(spans), (sample, concept)
            for start, end in spans:
                assert sample.text[start:end].lower() in words
                # Spans cover whole words, never a piece of a longer word.
                assert start == 0 or not sample.text[start - 1].isalnum()
                assert end == len(sample.text) or not sample.text[end].isalnum()


def test_spans_find_every_marker_occurrence(corpus: list[Sample]) -> None:
    for sample in corpus[:200]:
        for concept, words in CONCEPTS.items():
            expected = sum(1 for w in re.findall(r"[a-z']+", sample.text.lower()) if w in words)
            assert len(concept_token_mask(sample.text, concept)) == expected


def test_every_concept_occurs(corpus: list[Sample]) -> None:
    seen = {c for s in corpus for c in s.concepts}
    assert seen == set(CONCEPTS)


def test_samples_are_short(corpus: list[Sample]) -> None:
    lengths = [len(s.text.split()) for s in corpus]
    assert min(lengths) >= 8
    assert max(lengths) <= 30


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5, 1.0])
def test_neutral_fraction_is_honoured(fraction: float) -> None:
    samples = generate_corpus(400, seed=1, neutral_fraction=fraction)
    neutral = [s for s in samples if not s.concepts]
    assert len(neutral) == round(400 * fraction)
    for s in neutral:
        assert all(not concept_token_mask(s.text, c) for c in CONCEPTS)


def test_invalid_arguments_rejected() -> None:
    with pytest.raises(ValueError):
        generate_corpus(10, neutral_fraction=1.5)
    with pytest.raises(ValueError):
        generate_corpus(-1)
    with pytest.raises(KeyError):
        concept_token_mask("a cat", "vehicles")


def test_mask_matches_whole_words_case_insensitively() -> None:
    text = "The Red cat read a catalog near the redwood; red!"
    assert concept_token_mask(text, "colors") == [(4, 7), (45, 48)]
    assert concept_token_mask(text, "animals") == [(8, 11)]
    assert concepts_in(text) == ("animals", "colors")
    assert concepts_in("nothing to see here") == ()


def test_jsonl_round_trip(tmp_path: Path, corpus: list[Sample]) -> None:
    path = write_corpus(corpus[:50], tmp_path / "sub" / "corpus.jsonl")
    assert path.read_text(encoding="utf-8").count("\n") == 50
    assert read_corpus(path) == corpus[:50]
