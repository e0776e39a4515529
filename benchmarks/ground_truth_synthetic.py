"""Does each SAE variant recover a known dictionary? Synthetic ground truth, one row per variant.

Data: ``mi_crow.testing.synthetic.sparse_dictionary_data`` (unit-norm atoms, a few non-negative atoms per
sample, small noise). Each variant trains with ``SaeTrainer`` on a tensor; the rows report the mean over
true atoms of the best cosine with a learned decoder row (``mean_max_cosine``), the explained variance
and L0 on held-out samples, and the training time. ``random_mmcs`` is the chance level: a random
dictionary of the same size. Numbers are printed, never asserted (the tests assert the bound for TopK).

    .venv/bin/python -m benchmarks.ground_truth_synthetic [--full]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import torch

from mi_crow.mechanistic.sae import SAE_CLASSES, SaeTrainer
from mi_crow.mechanistic.sae.metrics import explained_variance, mean_max_cosine
from mi_crow.store import LocalStore
from mi_crow.testing.synthetic import random_dictionary, sparse_dictionary_data

# Per-variant sparsity settings for this data (3 active atoms per sample): the TopK family is given the
# true L0; the penalty variants a coefficient that reaches a comparable sparsity on it.
VARIANT_HYPERPARAMS: dict[str, dict[str, Any]] = {
    "TopKSae": {},
    "BatchTopKSae": {},
    "MatryoshkaSae": {},
    "L1Sae": {"l1_coefficient": 0.2},
    "JumpReLUSae": {"l0_coefficient": 0.05},
}


def _setting(quick: bool) -> dict[str, int]:
    if quick:
        return {"n_train": 8192, "n_eval": 2048, "d": 32, "n_atoms": 64, "active": 3, "n_latents": 128, "epochs": 10}
    return {"n_train": 32768, "n_eval": 4096, "d": 64, "n_atoms": 256, "active": 4, "n_latents": 512, "epochs": 15}


def run(quick: bool = True, variants: list[str] | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Train every variant (or ``variants``) on the same synthetic data; one result dict per variant."""
    s = _setting(quick)
    data = sparse_dictionary_data(s["n_train"] + s["n_eval"], s["d"], s["n_atoms"], s["active"], seed=seed)
    train, held_out = data.activations[: s["n_train"]], data.activations[s["n_train"] :]
    chance = mean_max_cosine(random_dictionary(s["n_latents"], s["d"], seed=seed + 1), data.atoms)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mi-crow-ground-truth-") as tmp:
        store = LocalStore(tmp)
        for name in variants or list(SAE_CLASSES):
            hyper = {
                "epochs": s["epochs"],
                "batch_size": 256,
                "n_latents": s["n_latents"],
                "k": s["active"],
                "lr": 3e-3,
                "seed": seed,
                "device": "cpu",
                **VARIANT_HYPERPARAMS.get(name, {}),
            }
            started = time.perf_counter()
            trainer = SaeTrainer(None, "synthetic", name, hyper, store=store, model_id="synthetic", progress=False)
            sae = trainer.train(train)
            seconds = time.perf_counter() - started
            with torch.no_grad():
                out = sae(held_out)
                rows.append(
                    {
                        "variant": name,
                        "mean_max_cosine": mean_max_cosine(sae.dictionary, data.atoms),
                        "explained_variance": explained_variance(held_out, out.x_hat),
                        "l0": float(out.l0()),
                        "seconds": seconds,
                        "random_mmcs": chance,
                        "n_atoms": s["n_atoms"],
                        "n_latents": s["n_latents"],
                        "true_l0": s["active"],
                    }
                )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| variant | mean max cosine | random dict | explained variance | L0 (true) | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['mean_max_cosine']:.3f} | {r['random_mmcs']:.3f} | "
            f"{r['explained_variance']:.3f} | {r['l0']:.1f} ({r['true_l0']}) | {r['seconds']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="larger data and dictionary (slower)")
    args = parser.parse_args()
    print(format_table(run(quick=not args.full)))
