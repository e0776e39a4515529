"""Train the seed's (mi-crow 1.0.0.post10) TopK SAE with its own trainer; print vectors/s and held-out EV.

The seed trains from a run in its store, so the data is first written there as one stored batch
(untimed), then ``TopKSae.train(store, run_id, layer, TopKSaeTrainingConfig(...))`` is timed.
"""

from __future__ import annotations

import logging
import tempfile
import time

import torch
from _common import emit, explained_variance, load_data, sae_args, sync

LAYER = "bench_layer"


def main() -> None:
    args = sae_args(__doc__ or "")
    from importlib.metadata import version

    from mi_crow.mechanistic.sae.modules.topk_sae import TopKSae, TopKSaeTrainingConfig
    from mi_crow.store import LocalStore

    logging.disable(logging.INFO)
    train, held_out = load_data(args.data)

    def run(data: torch.Tensor, store: LocalStore, run_id: str) -> tuple[TopKSae, float]:
        store.put_run_batch(run_id, 0, {"activations": data})
        torch.manual_seed(args.seed)
        sync(args.device)
        t0 = time.perf_counter()
        sae = TopKSae(n_latents=args.n_latents, n_inputs=data.shape[1], device=args.device)
        cfg = TopKSaeTrainingConfig(
            k=args.k,
            epochs=1,
            batch_size=args.batch,
            lr=args.lr,
            device=args.device,
            use_amp=args.bf16,  # its AMP path (on by default; off for the fp32 comparison on the CPU)
            amp_dtype=torch.bfloat16 if args.bf16 else None,
            monitoring=0,
        )
        sae.train(store, run_id, LAYER, cfg)
        sync(args.device)
        return sae, time.perf_counter() - t0

    with tempfile.TemporaryDirectory(prefix="seed_train_") as tmp:
        store = LocalStore(tmp)
        run(train[: args.batch * 2], store, "warmup")  # warm-up, untimed
        sae, seconds = run(train, store, "bench")
    engine = sae.sae_engine.eval()
    with torch.no_grad():
        ev = explained_variance(held_out, engine(held_out.to(args.device))[2].cpu())
    emit(
        side="seed",
        version=version("mi-crow"),
        vectors_per_s=train.shape[0] / seconds,
        seconds=seconds,
        explained_variance=ev,
    )


if __name__ == "__main__":
    main()
