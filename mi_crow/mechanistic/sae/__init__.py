"""Sparse autoencoders: variants (``modules``), the trainer and its configuration."""

from mi_crow.mechanistic.sae.config import TrainingConfig
from mi_crow.mechanistic.sae.modules import SAE_CLASSES, BatchTopKSae, JumpReLUSae, L1Sae, ReluSae, Sae, TopKSae
from mi_crow.mechanistic.sae.trainer import SaeTrainer, TrainingCancelled

__all__ = [
    "SAE_CLASSES",
    "BatchTopKSae",
    "JumpReLUSae",
    "L1Sae",
    "ReluSae",
    "Sae",
    "SaeTrainer",
    "TopKSae",
    "TrainingCancelled",
    "TrainingConfig",
]
