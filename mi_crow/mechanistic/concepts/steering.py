"""Steering by a concept config: per-latent scale and bias applied inside the SAE, keeping its error term.

``out = decode(edit(encode(x))) + (x - decode(encode(x)))``: with no edits this is ``x`` up to float
rounding, so the model only changes where a latent is deliberately scaled. The work is done by
``mi_crow.mechanistic.steering.SaeEditController``; this class keeps the config it was built from.
"""

from __future__ import annotations

from mi_crow.mechanistic.concepts.config import ConceptConfig
from mi_crow.mechanistic.sae.modules import Sae
from mi_crow.mechanistic.steering.controller import SaeEditController


class SaeSteeringController(SaeEditController):
    kind = "sae_steering_controller"

    def __init__(self, sae: Sae, config: ConceptConfig, layer: str | None = None, *, name: str | None = None):
        super().__init__(sae, layer, scales=config.scales, biases=config.biases, name=name)
        self.config = config
