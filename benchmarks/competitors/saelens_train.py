"""Train a SAELens TopK SAE with SAELens's own ``SAETrainer`` on a tensor; print vectors/s and held-out EV.

``SAETrainer`` takes any iterator of activation batches as its data provider, so no model or
ActivationsStore is needed to train on given activations.
"""

from __future__ import annotations

import contextlib
import io
import time

import torch
from _common import emit, explained_variance, load_data, sae_args, sync


def main() -> None:
    args = sae_args(__doc__ or "")
    from importlib.metadata import version

    from sae_lens import SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    train, held_out = load_data(args.data, args.device)

    def run(data: torch.Tensor) -> tuple[TopKTrainingSAE, float]:
        torch.manual_seed(args.seed)
        sync(args.device)
        t0 = time.perf_counter()
        cfg = TopKTrainingSAEConfig(d_in=data.shape[1], d_sae=args.n_latents, k=args.k, device=args.device)
        sae = TopKTrainingSAE(cfg)
        order = torch.randperm(data.shape[0], device=data.device)
        provider = (data[idx] for idx in order.split(args.batch))
        trainer_cfg = SAETrainerConfig(
            total_training_samples=data.shape[0] // args.batch * args.batch,
            train_batch_size_samples=args.batch,
            lr=args.lr,
            lr_end=args.lr,  # constant schedule (the runner config sets this; the trainer config does not)
            device=args.device,
            autocast=args.bf16,
        )
        with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
            SAETrainer(trainer_cfg, sae, provider).fit()
        sync(args.device)
        return sae, time.perf_counter() - t0

    run(train[: args.batch * 2])  # warm-up, untimed
    sae, seconds = run(train)
    with torch.no_grad():
        ev = explained_variance(held_out, sae.decode(sae.encode(held_out)))
    steps = train.shape[0] // args.batch
    emit(
        side="sae-lens",
        version=version("sae-lens"),
        vectors_per_s=steps * args.batch / seconds,
        seconds=seconds,
        explained_variance=ev,
    )


if __name__ == "__main__":
    main()
