"""A unified interface to HuggingFace causal LMs: loading, stable layer names, forwards, generation."""

from mi_crow.language_model.aliases import DEFAULT_ALIASES, alias_table, resolve_alias
from mi_crow.language_model.errors import HarvestCancelled, ModelLoadError, UnknownLayerError
from mi_crow.language_model.language_model import LanguageModel
from mi_crow.language_model.layers import LayerInfo, layer_name
from mi_crow.language_model.outputs import ForwardOutput, GenerationOutput

__all__ = [
    "DEFAULT_ALIASES",
    "ForwardOutput",
    "GenerationOutput",
    "HarvestCancelled",
    "LanguageModel",
    "LayerInfo",
    "ModelLoadError",
    "UnknownLayerError",
    "alias_table",
    "layer_name",
    "resolve_alias",
]
