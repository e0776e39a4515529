"""What forwards and generation return."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ForwardOutput:
    logits: torch.Tensor  # (batch, seq, vocab); rows past a text's length are padding (see attention_mask)
    attention_mask: torch.Tensor  # (batch, seq), 1 for real tokens
    input_ids: torch.Tensor  # (batch, seq)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # with output_hidden_states=True


@dataclass
class GenerationOutput:
    texts: list[str]  # the continuations only, decoded
    sequences: torch.Tensor  # (batch, prompt + new tokens), left-padded prompts
    prompt_length: int  # columns of ``sequences`` that belong to the (padded) prompt
    new_tokens: list[list[int]] = field(default_factory=list)  # generated ids per input, up to EOS/stop
