"""Sparse autoencoders: variants (``modules``), the trainer and its configuration."""

from mi_crow.mechanistic.sae.config import TrainingConfig
from mi_crow.mechanistic.sae.modules import (
    SAE_CLASSES,
    BatchTopKSae,
    JumpReLUSae,
    L1Sae,
    MatryoshkaSae,
    ReluSae,
    Sae,
    TopKSae,
)
from mi_crow.mechanistic.sae.multi import MultiSaeTrainer, SaeSpec
from mi_crow.mechanistic.sae.trainer import SaeTrainer, TrainingCancelled

__all__ = [
    "SAE_CLASSES",
    "BatchTopKSae",
    "JumpReLUSae",
    "L1Sae",
    "MatryoshkaSae",
    "MultiSaeTrainer",
    "ReluSae",
    "Sae",
    "SaeSpec",
    "SaeTrainer",
    "TopKSae",
    "TrainingCancelled",
    "TrainingConfig",
]
