"""Helpers for tests: tiny offline checkpoints of the supported architectures."""

from mi_crow.testing.tiny_models import ARCHITECTURES, build_tiny_model, build_tiny_tokenizer, tiny_config

__all__ = ["ARCHITECTURES", "build_tiny_model", "build_tiny_tokenizer", "tiny_config"]
