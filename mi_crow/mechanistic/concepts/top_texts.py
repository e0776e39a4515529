"""Top activating texts per latent: the token contexts where each latent fires hardest.

Only real tokens and only positive sparse codes count, so a latent that never fires gets no "top texts"
(the seed ranked dense pre-activations and gave every latent some).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from mi_crow.datasets import as_text_dataset
from mi_crow.hooks import LayerActivationDetector
from mi_crow.mechanistic.sae.modules import Sae
from mi_crow.store.atomic import atomic_write_json, read_json

if TYPE_CHECKING:
    from mi_crow.language_model import LanguageModel


@dataclass
class TopText:
    activation: float
    sample_index: int
    position: int
    token: str
    text: str  # the window of tokens around the activating one
    marked: str  # the same window with the activating token wrapped in «»


class TopTexts:
    def __init__(self, sae_id: str | None, layer: str | None, per_latent: dict[int, list[TopText]], k: int):
        self.sae_id, self.layer, self.per_latent, self.k = sae_id, layer, per_latent, k

    def __getitem__(self, latent: int) -> list[TopText]:
        return self.per_latent.get(int(latent), [])

    def latents(self) -> list[int]:
        return sorted(self.per_latent)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sae_id": self.sae_id,
            "layer": self.layer,
            "k": self.k,
            "latents": {str(i): [asdict(t) for t in ts] for i, ts in sorted(self.per_latent.items())},
        }

    def save(self, path: str | Path) -> Path:
        atomic_write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> TopTexts:
        data = read_json(path)
        per = {int(i): [TopText(**t) for t in ts] for i, ts in data["latents"].items()}
        return cls(data.get("sae_id"), data.get("layer"), per, int(data.get("k", 0)))


def collect_top_texts(
    lm: LanguageModel,
    sae: Sae,
    dataset: Any,
    *,
    k: int = 10,
    batch_size: int = 16,
    max_length: int | None = None,
    window: int = 8,
    sample_limit: int | None = None,
    layer: str | None = None,
    progress: bool = True,
) -> TopTexts:
    """Run ``dataset`` through the model, encode ``layer`` with the SAE, keep each latent's top ``k`` tokens."""
    layer = lm.resolve_layer(layer or sae.layer or "")
    texts = as_text_dataset(dataset, sample_limit=sample_limit)
    device = sae.b_dec.device
    best_vals = torch.zeros(sae.n_latents, k, device=device)
    best_ids = torch.full((sae.n_latents, k), -1, dtype=torch.long, device=device)
    token_rows: list[torch.Tensor] = []  # real token ids of each sample, to rebuild windows at the end
    where: list[tuple[int, int]] = []  # global token id -> (sample, position)
    detector = LayerActivationDetector(layer)
    n_samples = 0
    bar = tqdm(total=texts.length_hint(), unit="text", desc="top texts", disable=not progress)
    with lm.hooks.attached(detector), torch.inference_mode():
        for batch in texts.batches(batch_size):
            enc = lm.tokenize(batch, max_length=max_length)
            lm.model(**enc, use_cache=False)
            mask = enc["attention_mask"].bool()
            assert detector.activations is not None
            acts = detector.activations[mask].to(device)
            codes = sae.encode(acts)
            base = len(where)
            for row in range(mask.shape[0]):
                ids = enc["input_ids"][row][mask[row]].cpu()
                token_rows.append(ids)
                where.extend((n_samples + row, p) for p in range(ids.shape[0]))
            ids = torch.arange(base, base + codes.shape[0], device=device)
            cand_vals = torch.cat([best_vals, codes.T], dim=1)
            cand_ids = torch.cat([best_ids, ids.expand(sae.n_latents, -1)], dim=1)
            top = torch.topk(cand_vals, k, dim=1)
            best_vals, best_ids = top.values, torch.gather(cand_ids, 1, top.indices)
            n_samples += mask.shape[0]
            bar.update(mask.shape[0])
    bar.close()
    tok = lm.tokenizer
    per_latent: dict[int, list[TopText]] = {}
    for latent in (best_vals[:, 0] > 0).nonzero().flatten().tolist():
        entries = []
        for val, gid in zip(best_vals[latent].tolist(), best_ids[latent].tolist(), strict=True):
            if val <= 0 or gid < 0:
                continue
            sample, pos = where[gid]
            ids = token_rows[sample]
            lo, hi = max(0, pos - window), min(ids.shape[0], pos + window + 1)
            left, here, right = (
                tok.decode(ids[lo:pos], skip_special_tokens=True),
                tok.decode(ids[pos : pos + 1]),
                tok.decode(ids[pos + 1 : hi], skip_special_tokens=True),
            )
            entries.append(TopText(val, sample, pos, here, left + here + right, f"{left}«{here}»{right}"))
        per_latent[latent] = entries
    return TopTexts(sae.sae_id, layer, per_latent, k)
