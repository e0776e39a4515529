"""SAE variants, one file each, all sharing ``Sae``'s save/load and encode/decode."""

from mi_crow.mechanistic.sae.modules.base import Sae, SaeOutput
from mi_crow.mechanistic.sae.modules.batch_topk import BatchTopKSae
from mi_crow.mechanistic.sae.modules.jumprelu import JumpReLUSae
from mi_crow.mechanistic.sae.modules.l1 import L1Sae, ReluSae
from mi_crow.mechanistic.sae.modules.matryoshka import MatryoshkaSae
from mi_crow.mechanistic.sae.modules.topk import TopKSae

SAE_CLASSES: dict[str, type[Sae]] = {
    cls.__name__: cls for cls in (TopKSae, BatchTopKSae, L1Sae, JumpReLUSae, MatryoshkaSae)
}

__all__ = [
    "SAE_CLASSES",
    "BatchTopKSae",
    "JumpReLUSae",
    "L1Sae",
    "MatryoshkaSae",
    "ReluSae",
    "Sae",
    "SaeOutput",
    "TopKSae",
]
