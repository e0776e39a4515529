"""InferSae: run prompts with an SAE at its layer: strongest latents, per-token latents, steering, top texts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from mi_crow.hooks import LayerActivationDetector
from mi_crow.language_model import LanguageModel
from mi_crow.mechanistic.concepts import Concepts
from mi_crow.mechanistic.concepts.concepts import TOP_TEXTS_FILE
from mi_crow.services.common.convert import sae_info
from mi_crow.services.inference.generation import prompt_ids
from mi_crow.store import read_json
from mi_crow.v1 import common_pb2, inference_pb2

DEFAULT_TOP_K = 10


def steering(concepts: Concepts, request: inference_pb2.InferSaeRequest) -> Concepts | None:
    """The named config with the inline edits on top; None when nothing would change."""
    if request.concept_config:
        concepts.load_config(request.concept_config)  # NOT_FOUND names the saved configs
    for latent, edit in sorted(request.edits.items()):
        concepts.manipulate(latent, edit.scale, edit.bias)  # ConceptValidationError: INVALID_ARGUMENT
    return None if concepts.config.is_empty else concepts


def info(concepts: Concepts) -> common_pb2.SaeInfo:
    path = concepts.sae_dir / "sae.json"
    return sae_info(read_json(path) if path.is_file() else concepts.sae.metadata())


def _codes(concepts: Concepts, ids: Sequence[int]) -> torch.Tensor:
    """(tokens, n_latents) sparse codes at the SAE's layer, from one fresh forward without a KV cache."""
    lm = concepts.lm
    detector = LayerActivationDetector(concepts.layer)
    input_ids = torch.tensor([list(ids)], device=lm.device)
    with lm.hooks.attached(detector), torch.inference_mode():
        lm.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False)
        assert detector.activations is not None
        return concepts.sae.encode(detector.activations[0].to(concepts.sae.b_dec.device))


def _top(concepts: Concepts, values: torch.Tensor, k: int) -> list[inference_pb2.LatentActivation]:
    top = torch.topk(values.float(), min(k, values.shape[-1]))
    return [
        inference_pb2.LatentActivation(latent=i, activation=v, name=concepts.dictionary.name(i) or "")
        for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        if v > 0  # a latent that does not fire is not among the strongest, whatever the k
    ]


def run_prompt(
    concepts: Concepts,
    prompt: str,
    *,
    top_k: int,
    token_latents: bool,
    max_new_tokens: int,
    steer: Concepts | None,
) -> inference_pb2.SaeOutput:
    lm: LanguageModel = concepts.lm
    ids = prompt_ids(lm, prompt, max_new_tokens)
    out = inference_pb2.SaeOutput(prompt=prompt)
    new_ids: list[int] = []
    if max_new_tokens > 0:
        gen = lm.generate([prompt], max_new_tokens=max_new_tokens, concept_config=steer)
        out.text, new_ids = gen.texts[0], gen.new_tokens[0]
    # Latents describe what the SAE reads at its layer, before any steering edit of that layer's output.
    codes = _codes(concepts, ids + (new_ids if token_latents else []))
    out.top_latents.extend(_top(concepts, codes[: len(ids)].max(dim=0).values, top_k))
    if token_latents:
        for position, token in enumerate(ids + new_ids):
            out.token_latents.append(
                inference_pb2.TokenLatents(
                    token=lm.tokenizer.decode([token]),
                    position=position,
                    latents=_top(concepts, codes[position], top_k),
                )
            )
    return out


def save_top_texts(concepts: Concepts, prompts: Sequence[str], root: Path) -> str:
    concepts.collect_top_texts(list(prompts), progress=False)
    return str((concepts.dir / TOP_TEXTS_FILE).relative_to(root))
