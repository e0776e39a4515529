"""``build_dashboard``: per-latent top examples, quantile samples, density, logit effects and neighbours.

Two passes over the texts keep memory bounded whatever the corpus size:

1. Stream every text through the model (stopping each forward at the SAE's layer) and encode the layer
   with the SAE. Per latent keep only running counts, the top-k activations (value and location) and a
   uniform sample of its non-zero activations (bottom-R of random keys: a vectorised reservoir). Memory is
   ``n_latents * (top_k + R)`` numbers, never the corpus.
2. Pick the latents to show, then re-run only the texts those examples live in, to cut their token windows
   and read the latent's value on every token of each window.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from mi_crow.datasets import as_text_dataset
from mi_crow.language_model.harvest import iter_harvest
from mi_crow.mechanistic.dashboards.model import Dashboard, Example, LatentCard, QuantileBin
from mi_crow.mechanistic.sae.modules import Sae

if TYPE_CHECKING:
    from mi_crow.language_model import LanguageModel

# Locations are packed into one int64: sample index in the high bits, token position in the low ones.
_POS_BITS = 24
ProgressCallback = Callable[[float, str], bool | None]


class DashboardCancelled(RuntimeError):
    """The progress callback asked the build to stop."""


@dataclass
class _Pass1:
    n_tokens: int
    n_texts: int
    fired: torch.Tensor  # (L,) tokens with a non-zero value
    total: torch.Tensor  # (L,) sum of values
    top_vals: torch.Tensor  # (L, k) descending
    top_locs: torch.Tensor  # (L, k) packed locations, -1 for none
    res_keys: torch.Tensor  # (L, R) random keys of the sampled activations (-1: empty slot)
    res_vals: torch.Tensor  # (L, R)
    res_locs: torch.Tensor  # (L, R)


def _merge_top(
    vals: torch.Tensor, locs: torch.Tensor, new_vals: torch.Tensor, new_locs: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    cand_vals = torch.cat([vals, new_vals], dim=1)
    cand_locs = torch.cat([locs, new_locs], dim=1)
    top = torch.topk(cand_vals, k, dim=1)
    return top.values, torch.gather(cand_locs, 1, top.indices)


def _batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


def _first_pass(
    lm: LanguageModel,
    sae: Sae,
    layer: str,
    dataset: Any,
    *,
    top_k: int,
    reservoir: int,
    batch_size: int,
    max_length: int | None,
    max_tokens: int | None,
    seed: int,
    progress: bool,
    on_progress: ProgressCallback | None,
) -> _Pass1:
    device = sae.b_dec.device
    n = sae.n_latents
    gen = torch.Generator(device=device).manual_seed(seed)
    fired = torch.zeros(n, dtype=torch.long, device=device)
    total = torch.zeros(n, dtype=torch.float64, device=device)
    top_vals = torch.zeros(n, top_k, device=device)
    top_locs = torch.full((n, top_k), -1, dtype=torch.long, device=device)
    res_keys = torch.full((n, reservoir), -1.0, device=device)
    res_vals = torch.zeros(n, reservoir, device=device)
    res_locs = torch.full((n, reservoir), -1, dtype=torch.long, device=device)
    hint = dataset.length_hint()
    bar = tqdm(total=hint, unit="text", desc="dashboard: encode", disable=not progress)
    n_tokens = n_texts = 0
    harvest = iter_harvest(lm, dataset.batches(batch_size), [layer], max_length=max_length)
    try:
        for batch in harvest:
            acts = batch.activations[layer].to(device)
            codes = sae.encode(acts).float()  # (N, L)
            locs = ((batch.sample_index.to(device) << _POS_BITS) | batch.positions.to(device)).long()
            active = codes > 0
            fired += active.sum(0)
            total += codes.sum(0, dtype=torch.float64)
            kk = min(top_k, codes.shape[0])
            bt = torch.topk(codes.T, kk, dim=1)
            top_vals, top_locs = _merge_top(top_vals, top_locs, bt.values, locs[bt.indices], top_k)
            # Uniform sample of non-zero activations: a random key per (token, latent), keep the R largest.
            keys = torch.rand(codes.shape, generator=gen, device=device).masked_fill_(~active, -1.0).T
            rk = min(reservoir, codes.shape[0])
            br = torch.topk(keys, rk, dim=1)
            cand_vals = torch.gather(codes.T, 1, br.indices)
            merged = torch.topk(torch.cat([res_keys, br.values], dim=1), reservoir, dim=1)
            res_vals = torch.gather(torch.cat([res_vals, cand_vals], dim=1), 1, merged.indices)
            # A latent with fewer non-zero values than R also "samples" masked tokens (key -1): mark them empty.
            cand_locs = torch.where(br.values >= 0, locs[br.indices], -1)
            res_locs = torch.gather(torch.cat([res_locs, cand_locs], dim=1), 1, merged.indices)
            res_keys = merged.values
            n_tokens += codes.shape[0]
            n_texts += batch.n_samples
            bar.update(batch.n_samples)
            if on_progress is not None:
                frac = n_texts / hint if hint else 0.0
                if max_tokens:
                    frac = max(frac, n_tokens / max_tokens)
                if on_progress(0.9 * min(1.0, frac), f"encoded {n_texts} texts, {n_tokens} tokens") is False:
                    raise DashboardCancelled("dashboard build cancelled")
            if max_tokens is not None and n_tokens >= max_tokens:
                break
    finally:
        harvest.close()
        bar.close()
    if n_tokens == 0:
        raise ValueError("no tokens to build a dashboard from: the texts were empty")
    return _Pass1(n_tokens, n_texts, fired, total, top_vals, top_locs, res_keys, res_vals, res_locs)


def _select(p1: _Pass1, latents: Sequence[int] | None, max_latents: int | None, n_latents: int) -> list[int]:
    if latents is not None:
        chosen = [int(i) for i in latents]
        bad = [i for i in chosen if not 0 <= i < n_latents]
        if bad:
            raise ValueError(f"latents {bad} are out of range for an SAE with {n_latents} latents")
        return list(dict.fromkeys(chosen))
    fired = p1.fired.cpu()
    live = (fired > 0).nonzero().flatten()
    # Densest first; ties broken by latent id so the order is reproducible.
    order = sorted(live.tolist(), key=lambda i: (-int(fired[i]), i))
    return order[:max_latents] if max_latents else order


@dataclass
class _Ref:
    latent: int
    sample: int
    position: int
    value: float


def _sig(value: float) -> float:
    """Six significant digits: enough for display and checks, and keeps the JSON small."""
    return float(f"{value:.6g}")


def _ref(latent: int, loc: int, value: float) -> _Ref:
    return _Ref(latent, loc >> _POS_BITS, loc & ((1 << _POS_BITS) - 1), value)


def _windows(
    lm: LanguageModel,
    sae: Sae,
    layer: str,
    dataset: Any,
    refs: list[_Ref],
    chosen: list[int],
    *,
    window: int,
    batch_size: int,
    max_length: int | None,
    n_texts: int,
) -> dict[tuple[int, int, int], Example]:
    """Re-run only the texts that hold examples; return (latent, sample, position) -> Example."""
    wanted = sorted({r.sample for r in refs})
    if not wanted:
        return {}
    wanted_set = set(wanted)
    texts = (t for i, t in enumerate(itertools.islice(iter(dataset), n_texts)) if i in wanted_set)
    column = {latent: j for j, latent in enumerate(chosen)}
    index = torch.tensor(chosen, dtype=torch.long, device=sae.b_dec.device)
    by_sample: dict[int, list[_Ref]] = {}
    for r in refs:
        by_sample.setdefault(r.sample, []).append(r)
    tok = lm.tokenizer
    out: dict[tuple[int, int, int], Example] = {}
    for batch in iter_harvest(lm, _batched(texts, batch_size), [layer], max_length=max_length):
        codes = sae.encode(batch.activations[layer].to(sae.b_dec.device)).float()[:, index].cpu()
        ids = batch.token_ids
        # Rows are grouped by text; iter_harvest numbers the texts it ran 0, 1, ... (here: wanted's order).
        local, counts = torch.unique_consecutive(batch.sample_index, return_counts=True)
        ends = counts.cumsum(0).tolist()
        for j, n_rows, hi_row in zip(local.tolist(), counts.tolist(), ends, strict=True):
            lo_row = hi_row - n_rows
            sample = wanted[j]
            strings = tok.batch_decode([[t] for t in ids[lo_row:hi_row].tolist()])
            for r in by_sample[sample]:
                if r.position >= hi_row - lo_row:
                    continue  # cannot happen with the same tokenizer and max_length; skip rather than guess
                lo, hi = max(0, r.position - window), min(hi_row - lo_row, r.position + window + 1)
                vals = codes[lo_row + lo : lo_row + hi, column[r.latent]].tolist()
                out[(r.latent, sample, r.position)] = Example(
                    sample=sample,
                    position=r.position,
                    activation=vals[r.position - lo],
                    tokens=strings[lo:hi],
                    acts=[_sig(v) for v in vals],
                    center=r.position - lo,
                )
    return out


def logit_effects(lm: LanguageModel, sae: Sae, chosen: list[int], n: int) -> tuple[dict, dict, str | None]:
    """Tokens each latent's decoder direction promotes and suppresses through the unembedding.

    The direction is mapped back to the model's units (the SAE divides its output by ``input_scale``) and
    multiplied by the output embeddings: the *direct* effect on the logits of adding the latent to the
    residual stream. Not accounted for: the final layer norm (its per-token scale and centring change the
    magnitude, and its gain reweights dimensions) and every layer between the SAE's layer and the output,
    which can transform the direction. For a last-layer residual SAE it is a good first-order picture.
    """
    if not chosen:
        return {}, {}, None
    head = lm.model.get_output_embeddings()
    if head is None or getattr(head, "weight", None) is None:
        return {}, {}, "the model has no output embeddings: no promoted/suppressed tokens"
    w_u = head.weight.detach()
    if w_u.shape[1] != sae.d_in:
        return {}, {}, f"SAE width {sae.d_in} differs from the unembedding width {w_u.shape[1]}: no logit effects"
    with torch.no_grad():
        directions = (sae.dictionary[chosen] / sae.input_scale).float().to(w_u.device)
        effects = directions @ w_u.float().T  # (chosen, vocab)
        n = min(n, effects.shape[1])
        up = torch.topk(effects, n, dim=1)
        down = torch.topk(-effects, n, dim=1)
    tok = lm.tokenizer

    def named(ids: torch.Tensor, values: torch.Tensor, sign: float) -> list[tuple[str, float]]:
        id_list = ids.tolist()
        # A lone byte of a multi-byte character decodes to U+FFFD; its vocabulary entry says more.
        strings = [
            s if "\ufffd" not in s else str(tok.convert_ids_to_tokens(t))
            for s, t in zip(tok.batch_decode([[t] for t in id_list]), id_list, strict=True)
        ]
        return [(s, _sig(sign * v)) for s, v in zip(strings, values.tolist(), strict=True)]

    promoted = {latent: named(up.indices[r], up.values[r], 1.0) for r, latent in enumerate(chosen)}
    suppressed = {latent: named(down.indices[r], down.values[r], -1.0) for r, latent in enumerate(chosen)}
    return promoted, suppressed, None


def nearest_latents(sae: Sae, chosen: list[int], n: int) -> dict[int, list[tuple[int, float]]]:
    """The ``n`` latents whose decoder directions have the highest cosine with each chosen one (self excluded)."""
    if n <= 0 or sae.n_latents < 2 or not chosen:
        return {latent: [] for latent in chosen}
    with torch.no_grad():
        d = sae.dictionary.float()
        d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)
        sims = d[chosen] @ d.T
        sims[torch.arange(len(chosen)), torch.tensor(chosen)] = -math.inf
        top = torch.topk(sims, min(n, sae.n_latents - 1), dim=1)
    return {
        latent: [(int(i), _sig(float(v))) for i, v in zip(top.indices[r], top.values[r], strict=True)]
        for r, latent in enumerate(chosen)
    }


def _quantile_refs(vals: torch.Tensor, locs: torch.Tensor, latent: int, bins: int, per_bin: int):
    """Split a latent's sampled non-zero values into ``bins`` equal-count intervals; a few refs from each."""
    keep = locs >= 0
    vals, locs = vals[keep], locs[keep]
    if vals.numel() == 0:
        return []
    edges = torch.quantile(vals.double(), torch.linspace(0, 1, bins + 1, dtype=torch.float64)).tolist()
    out = []
    for b in range(bins):
        lo, hi = edges[b], edges[b + 1]
        inside = (vals >= lo) & ((vals < hi) if b < bins - 1 else (vals <= hi))
        picks = inside.nonzero().flatten()[:per_bin].tolist()  # the sample's order is already random
        refs = [_ref(latent, int(locs[i]), float(vals[i])) for i in picks]
        out.append((lo, hi, refs))
    return out


def build_dashboard(
    lm: LanguageModel,
    sae: Sae,
    texts_or_dataset: Any,
    *,
    latents: Sequence[int] | None = None,
    max_latents: int | None = 256,
    top_k: int = 10,
    window: int = 8,
    quantile_bins: int = 5,
    samples_per_bin: int = 3,
    n_logits: int = 10,
    n_neighbours: int = 5,
    max_tokens: int | None = 1_000_000,
    batch_size: int = 16,
    max_length: int | None = None,
    layer: str | None = None,
    seed: int = 0,
    progress: bool = True,
    on_progress: ProgressCallback | None = None,
) -> Dashboard:
    """Build feature dashboards of ``sae`` (trained on ``layer`` of ``lm``) over texts or a dataset.

    ``latents`` picks the latents to show; by default every latent that fired, densest first, capped at
    ``max_latents``. ``max_tokens`` bounds the tokens read (the first pass stops after the batch that
    reaches it). ``on_progress(fraction, message)`` may return False to cancel.
    """
    for name, value in (("top_k", top_k), ("quantile_bins", quantile_bins), ("batch_size", batch_size)):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    for name, value in (("window", window), ("samples_per_bin", samples_per_bin), ("n_logits", n_logits)):
        if value < 0:
            raise ValueError(f"{name} must not be negative, got {value}")
    layer = lm.resolve_layer(layer or sae.layer or "")
    dataset = as_text_dataset(texts_or_dataset)
    reservoir = max(1, quantile_bins * samples_per_bin * 4)
    sae.eval()
    with torch.inference_mode():
        p1 = _first_pass(
            lm, sae, layer, dataset, top_k=top_k, reservoir=reservoir, batch_size=batch_size,
            max_length=max_length, max_tokens=max_tokens, seed=seed, progress=progress, on_progress=on_progress,
        )  # fmt: skip
    chosen = _select(p1, latents, max_latents, sae.n_latents)
    kept = ("top_vals", "top_locs", "res_vals", "res_locs", "fired", "total")
    p1_cpu = {name: getattr(p1, name).cpu() for name in kept}  # one copy each, not one sync per latent
    refs: list[_Ref] = []
    tops: dict[int, list[_Ref]] = {}
    bins: dict[int, list[tuple[float, float, list[_Ref]]]] = {}
    for latent in chosen:
        vals, locs = p1_cpu["top_vals"][latent], p1_cpu["top_locs"][latent]
        tops[latent] = [
            _ref(latent, loc, v) for v, loc in zip(vals.tolist(), locs.tolist(), strict=True) if v > 0 and loc >= 0
        ]
        bins[latent] = _quantile_refs(
            p1_cpu["res_vals"][latent], p1_cpu["res_locs"][latent], latent, quantile_bins, samples_per_bin
        )
        refs += tops[latent] + [r for _, _, rs in bins[latent] for r in rs]
    if on_progress is not None and on_progress(0.9, f"cutting windows for {len(chosen)} latents") is False:
        raise DashboardCancelled("dashboard build cancelled")
    with torch.inference_mode():
        examples = _windows(
            lm, sae, layer, dataset, refs, chosen, window=window, batch_size=batch_size,
            max_length=max_length, n_texts=p1.n_texts,
        )  # fmt: skip
    promoted, suppressed, note = logit_effects(lm, sae, chosen, n_logits) if n_logits else ({}, {}, None)
    neighbours = nearest_latents(sae, chosen, n_neighbours)

    def found(rs: list[_Ref]) -> list[Example]:
        return [examples[key] for r in rs if (key := (r.latent, r.sample, r.position)) in examples]

    cards: dict[int, LatentCard] = {}
    for latent in chosen:
        fired = int(p1_cpu["fired"][latent])
        top = sorted(found(tops[latent]), key=lambda e: (-e.activation, e.sample, e.position))
        cards[latent] = LatentCard(
            latent=latent,
            density=fired / p1.n_tokens,
            n_fired=fired,
            max_activation=float(p1_cpu["top_vals"][latent][0]),
            mean_activation=float(p1_cpu["total"][latent]) / fired if fired else 0.0,
            top_examples=top,
            quantiles=[QuantileBin(lo, hi, found(rs)) for lo, hi, rs in bins[latent]],
            promoted=promoted.get(latent, []),
            suppressed=suppressed.get(latent, []),
            neighbours=neighbours[latent],
        )
    config = {
        "top_k": top_k, "window": window, "quantile_bins": quantile_bins, "samples_per_bin": samples_per_bin,
        "n_logits": n_logits, "n_neighbours": n_neighbours, "max_tokens": max_tokens, "max_latents": max_latents,
        "max_length": max_length, "seed": seed, "dataset": dataset.describe(),
    }  # fmt: skip
    if on_progress is not None:
        on_progress(1.0, f"dashboard of {len(cards)} latents built")
    return Dashboard(
        sae_id=sae.sae_id,
        model_id=sae.model_id or lm.model_id,
        layer=layer,
        n_latents=sae.n_latents,
        n_tokens=p1.n_tokens,
        n_texts=p1.n_texts,
        n_fired_latents=int((p1.fired > 0).sum()),
        latents=cards,
        config=config,
        notes=[note] if note else [],
    )
