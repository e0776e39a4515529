"""Side-by-side generation: each prompt continued without and with steering, from the same sampling seed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mi_crow.mechanistic.steering.spec import Steering

if TYPE_CHECKING:
    from mi_crow.language_model import LanguageModel


@dataclass
class ComparedGeneration:
    prompt: str
    unsteered: str
    steered: str
    unsteered_tokens: list[int]
    steered_tokens: list[int]

    @property
    def changed(self) -> bool:
        return self.unsteered_tokens != self.steered_tokens


def generate_compare(
    lm: LanguageModel,
    prompts: Sequence[str],
    steering: Steering | None,
    *,
    seed: int = 0,
    **generate_kwargs: Any,
) -> list[ComparedGeneration]:
    """Continue ``prompts`` twice with ``lm.generate`` (same options, same seed): as is, then steered.

    Everything else attached to ``lm`` acts on both runs, so the only difference is the steering; with no
    edits the two continuations are identical.
    """
    if "seed" in generate_kwargs or "concept_config" in generate_kwargs:
        raise TypeError("pass seed as a keyword of generate_compare and steer through `steering` only")
    steering = steering or Steering()
    steering.layers(lm)  # bad edits fail before any generation
    plain = lm.generate(prompts, seed=seed, **generate_kwargs)
    with steering.applied(lm):
        steered = lm.generate(prompts, seed=seed, **generate_kwargs)
    return [
        ComparedGeneration(p, a, b, ta, tb)
        for p, a, b, ta, tb in zip(
            prompts, plain.texts, steered.texts, plain.new_tokens, steered.new_tokens, strict=True
        )
    ]
