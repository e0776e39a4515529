"""Self-contained demo assets: a labelled synthetic corpus and a tiny GPT-2 trained on it."""

from mi_crow.demo.corpus import (
    CONCEPTS,
    Sample,
    concept_token_mask,
    concepts_in,
    generate_corpus,
    read_corpus,
    write_corpus,
)

__all__ = [
    "CONCEPTS",
    "Sample",
    "concept_token_mask",
    "concepts_in",
    "generate_corpus",
    "read_corpus",
    "write_corpus",
]
