"""Steering through SAEs: scale, add or ablate latents on one or several layers, and compare generations."""

from mi_crow.mechanistic.steering.compare import ComparedGeneration, generate_compare
from mi_crow.mechanistic.steering.controller import SaeEditController, decoder_direction
from mi_crow.mechanistic.steering.spec import Steering, SteeringEdit, SteeringMode, SteeringSpec

__all__ = [
    "ComparedGeneration",
    "SaeEditController",
    "Steering",
    "SteeringEdit",
    "SteeringMode",
    "SteeringSpec",
    "decoder_direction",
    "generate_compare",
]
