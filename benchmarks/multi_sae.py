"""Several SAEs from one forward: ``MultiSaeTrainer`` with one TopK SAE per block vs the same SAEs trained
the usual way, one layer at a time (harvest the layer to a stored run, then ``SaeTrainer`` on it).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import Row, alternate, skipped

BATCH_SIZE = 32
HYPER = {"epochs": 1, "batch_size": 1024, "k": 32, "n_latents": 1024, "log_every": 10**9}


def bench_multi_sae(model_dir: Path, texts: list[str], repeats: int, device: str | None = None) -> Row:
    from mi_crow.language_model import LanguageModel
    from mi_crow.mechanistic.sae import SaeTrainer, TopKSae
    from mi_crow.store import LocalStore

    try:
        from mi_crow.mechanistic.sae.multi import MultiSaeTrainer, SaeSpec
    except ImportError as exc:  # the API lands separately; keep the row visible until it does
        return skipped("multi-sae", 0.0, f"pending: {exc}")

    lm = LanguageModel(str(model_dir), device=device)
    layers = [f"transformer_h_{i}" for i in range(len(lm.model.transformer.h))]
    n_tokens = sum(
        int(lm.tokenize(texts[i : i + BATCH_SIZE])["attention_mask"].sum()) for i in range(0, len(texts), BATCH_SIZE)
    )
    hp = {**HYPER, "device": device} if device else HYPER

    def ours() -> float:
        with tempfile.TemporaryDirectory(prefix="mi_crow_bench_multi_") as tmp:
            specs = [SaeSpec(layer, TopKSae, hp) for layer in layers]
            t0 = time.perf_counter()
            MultiSaeTrainer(lm, specs, store=LocalStore(tmp), progress=False).train(texts, batch_size=BATCH_SIZE)
            return n_tokens / (time.perf_counter() - t0)

    def separate() -> float:
        with tempfile.TemporaryDirectory(prefix="mi_crow_bench_multi_ref_") as tmp:
            store = LocalStore(tmp)
            t0 = time.perf_counter()
            for layer in layers:
                run = lm.save_activations(texts, [layer], batch_size=BATCH_SIZE, progress=False, store=store)
                SaeTrainer(lm, layer, TopKSae, hp, store=store, progress=False).train(run)
            return n_tokens / (time.perf_counter() - t0)

    ours_r, ref_r = alternate([ours, separate], repeats)
    # Each separate harvest stops after its own block, so together they run (1 + 2 + ... + L) / L trunk
    # forwards, not L: that, not L, bounds what sharing the forward can save, even if training were free.
    bound = (len(layers) + 1) / 2
    note = (
        f"{len(layers)} TopK SAEs ({HYPER['n_latents']} latents, k {HYPER['k']}) on {len(layers)} blocks, "
        f"{len(texts)} texts, {n_tokens} tokens; ours: MultiSaeTrainer, one forward per batch; "
        f"ref: {len(layers)} x (save_activations of one layer, which stops after that block, + SaeTrainer on "
        f"the run); target 0.7 x L; bound with free training: (L + 1) / 2 = {bound:.1f}"
    )
    return Row("multi-sae", "tok/s", statistics.median(ours_r), statistics.median(ref_r), 0.7 * len(layers), note)
