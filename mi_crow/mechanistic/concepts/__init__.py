"""Concepts: top texts per latent, a concept dictionary, configs, and SAE steering."""

from mi_crow.mechanistic.concepts.concepts import Concepts
from mi_crow.mechanistic.concepts.config import ConceptConfig
from mi_crow.mechanistic.concepts.dictionary import Concept, ConceptDictionary
from mi_crow.mechanistic.concepts.errors import ConceptValidationError
from mi_crow.mechanistic.concepts.steering import SaeSteeringController
from mi_crow.mechanistic.concepts.top_texts import TopText, TopTexts, collect_top_texts

__all__ = [
    "Concept",
    "ConceptConfig",
    "ConceptDictionary",
    "ConceptValidationError",
    "Concepts",
    "SaeSteeringController",
    "TopText",
    "TopTexts",
    "collect_top_texts",
]
