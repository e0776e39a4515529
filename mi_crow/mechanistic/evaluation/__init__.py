"""SAE evaluation: reconstruction quality, latent firing statistics and downstream cost of splicing the SAE in.

``evaluate_sae(lm, sae, held_out_texts)`` returns an ``EvalReport``; ``report.save(sae_dir)`` stores it as
``eval.json`` next to ``sae.safetensors``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mi_crow.datasets import as_text_dataset
from mi_crow.mechanistic.evaluation.downstream import SaeSpliceController, ZeroAblationController, evaluate_downstream
from mi_crow.mechanistic.evaluation.reconstruction import (
    ReconstructionStats,
    evaluate_reconstruction,
    reconstruction_from_activations,
)
from mi_crow.mechanistic.evaluation.report import DENSE_THRESHOLD, DENSITY_LOG10_EDGES, EVAL_FILE, EvalReport
from mi_crow.mechanistic.sae.modules import Sae

if TYPE_CHECKING:
    from mi_crow.language_model import LanguageModel

DEFAULT_MAX_TOKENS = 32_768


class LayerMismatchError(ValueError):
    """The SAE does not fit the layer it is evaluated on (another layer, or another width)."""


def resolve_eval_layer(lm: LanguageModel, sae: Sae, layer: str | None) -> str:
    """The stable name of the layer to evaluate on: ``layer`` or the SAE's own, checked against the SAE."""
    if not (layer or sae.layer):
        raise ValueError("the SAE records no layer; pass layer=")
    name = lm.resolve_layer(layer or sae.layer or "")
    if sae.layer and layer and lm.resolve_layer(sae.layer) != name:
        raise LayerMismatchError(f"SAE {sae.sae_id!r} was trained on layer {sae.layer!r}, not {name!r}")
    width = lm.hidden_size(name)
    if width != sae.d_in:
        raise LayerMismatchError(f"SAE {sae.sae_id!r} expects width {sae.d_in} but layer {name!r} has {width}")
    return name


def evaluate_sae(
    lm: LanguageModel,
    sae: Sae,
    texts_or_dataset: Any,
    *,
    layer: str | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    batch_size: int = 16,
    downstream: bool = True,
    dense_threshold: float = DENSE_THRESHOLD,
    max_length: int | None = None,
    progress: bool = True,
) -> EvalReport:
    """Evaluate ``sae`` on held-out texts (anything ``as_text_dataset`` takes) at its layer.

    Reconstruction runs over the first ``max_tokens`` non-padding tokens, harvested with a forward that
    stops at the layer; ``downstream`` adds clean / spliced / zero-ablated cross-entropy and KL over
    (at most) the same number of predicted tokens.
    """
    if max_tokens <= 0 or batch_size <= 0:
        raise ValueError(f"max_tokens and batch_size must be positive, got {max_tokens} and {batch_size}")
    name = resolve_eval_layer(lm, sae, layer)
    dataset = as_text_dataset(texts_or_dataset)
    was_training = sae.training
    sae.eval()
    try:
        recon = evaluate_reconstruction(
            lm,
            sae,
            dataset.batches(batch_size),
            name,
            max_tokens=max_tokens,
            max_length=max_length,
            dense_threshold=dense_threshold,
            progress=progress,
        )
        down: dict[str, Any] = {}
        if downstream:
            down = evaluate_downstream(
                lm, sae, dataset.batches(batch_size), name, max_tokens=max_tokens, max_length=max_length,
                progress=progress,
            )  # fmt: skip
    finally:
        sae.train(was_training)
    return EvalReport(
        layer=name,
        sae_id=sae.sae_id,
        model_id=sae.model_id or lm.model_id,
        source="texts",
        has_downstream=bool(down),
        **recon,
        **down,
    )


__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DENSE_THRESHOLD",
    "DENSITY_LOG10_EDGES",
    "EVAL_FILE",
    "EvalReport",
    "LayerMismatchError",
    "ReconstructionStats",
    "SaeSpliceController",
    "ZeroAblationController",
    "evaluate_downstream",
    "evaluate_reconstruction",
    "evaluate_sae",
    "reconstruction_from_activations",
    "resolve_eval_layer",
]
