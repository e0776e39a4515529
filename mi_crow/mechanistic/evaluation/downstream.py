"""What splicing an SAE into the model costs downstream: next-token cross-entropy and KL to the clean model.

Each batch runs three times: clean, with the SAE's layer output replaced by its reconstruction, and with
that output zeroed. Hooks live only inside ``with`` blocks, so they come off also when a forward fails.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mi_crow.hooks import Controller, HookType
from mi_crow.mechanistic.sae.modules import Sae

if TYPE_CHECKING:
    from mi_crow.language_model import LanguageModel


class SaeSpliceController(Controller):
    """Replaces a layer's output by the SAE's reconstruction of it (the SAE's error term is dropped)."""

    kind = "sae_splice_controller"

    def __init__(self, sae: Sae, layer: str, *, name: str | None = None) -> None:
        super().__init__(layer, HookType.FORWARD, name=name)
        self.sae = sae

    def modify(self, tensor: torch.Tensor, module: nn.Module, context: dict[str, Any]) -> torch.Tensor:
        x_hat = self.sae(tensor.to(device=self.sae.b_dec.device, dtype=self.sae.b_dec.dtype)).x_hat
        return x_hat.to(device=tensor.device, dtype=tensor.dtype)


class ZeroAblationController(Controller):
    """Replaces a layer's output by zeros: the baseline an SAE must beat."""

    kind = "zero_ablation_controller"

    def __init__(self, layer: str, *, name: str | None = None) -> None:
        super().__init__(layer, HookType.FORWARD, name=name)

    def modify(self, tensor: torch.Tensor, module: nn.Module, context: dict[str, Any]) -> torch.Tensor:
        return torch.zeros_like(tensor)


class _Sums:
    def __init__(self) -> None:
        self.tokens = 0
        self.ce = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
        self.kl = {"sae": 0.0, "zero": 0.0}


def _add_row(sums: _Sums, logits: dict[str, torch.Tensor], targets: torch.Tensor) -> None:
    """One text's positions (already cut to the window): CE of each run, KL of the edited runs to the clean."""
    logp = {k: F.log_softmax(v.double(), dim=-1) for k, v in logits.items()}
    for key, lp in logp.items():
        sums.ce[key] += float(-lp.gather(-1, targets[:, None]).sum())
    p_clean = logp["clean"].exp()
    for key in ("sae", "zero"):
        sums.kl[key] += float((p_clean * (logp["clean"] - logp[key])).sum())
    sums.tokens += targets.shape[0]


def evaluate_downstream(
    lm: LanguageModel,
    sae: Sae,
    batches: Iterable[list[str]],
    layer: str,
    *,
    max_tokens: int,
    max_length: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """CE (nats/token) of the clean, SAE-spliced and zero-ablated model, CE recovered and mean KLs.

    Counted positions are those whose next token is a real token, in text order, up to ``max_tokens``.
    """
    splice = SaeSpliceController(sae, layer)
    zero = ZeroAblationController(layer)
    sums = _Sums()
    texts = 0
    with tqdm(total=max_tokens, unit="tok", desc="evaluate downstream", disable=not progress) as bar:
        for batch in batches:
            enc = lm.tokenize(batch, max_length=max_length)  # right-padded: real tokens come first in each row
            logits: dict[str, torch.Tensor] = {}
            with torch.inference_mode():
                logits["clean"] = lm.model(**enc, use_cache=False).logits
                with lm.hooks.attached(splice):
                    logits["sae"] = lm.model(**enc, use_cache=False).logits
                with lm.hooks.attached(zero):
                    logits["zero"] = lm.model(**enc, use_cache=False).logits
            lengths = enc["attention_mask"].sum(1).tolist()
            for row, length in enumerate(lengths):
                texts += 1
                n = min(int(length) - 1, max_tokens - sums.tokens)
                if n <= 0:
                    continue
                targets = enc["input_ids"][row, 1 : n + 1]
                _add_row(sums, {k: v[row, :n] for k, v in logits.items()}, targets)
                bar.update(n)
                if sums.tokens >= max_tokens:
                    break
            if sums.tokens >= max_tokens:
                break
    if sums.tokens == 0:
        raise ValueError("no next-token predictions to evaluate: every text has fewer than two tokens")
    ce = {k: v / sums.tokens for k, v in sums.ce.items()}
    denominator = ce["zero"] - ce["clean"]
    return {
        "ce_clean": ce["clean"],
        "ce_sae": ce["sae"],
        "ce_zero": ce["zero"],
        "ce_recovered": (ce["zero"] - ce["sae"]) / denominator if abs(denominator) > 1e-12 else float("nan"),
        "kl_sae": sums.kl["sae"] / sums.tokens,
        "kl_zero": sums.kl["zero"] / sums.tokens,
        "downstream_tokens": sums.tokens,
        "downstream_texts": texts,
    }
