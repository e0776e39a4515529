"""Train overcomplete's TopKSAE with its own ``train_sae`` loop; print vectors/s and held-out explained variance."""

from __future__ import annotations

import time

import torch
from _common import emit, explained_variance, load_data, sae_args, sync


def main() -> None:
    args = sae_args(__doc__ or "")
    from importlib.metadata import version

    from overcomplete.sae import TopKSAE, train_sae

    train, held_out = load_data(args.data, args.device)

    def run(data: torch.Tensor) -> tuple[TopKSAE, float]:
        torch.manual_seed(args.seed)
        sync(args.device)
        t0 = time.perf_counter()
        sae = TopKSAE(data.shape[1], nb_concepts=args.n_latents, top_k=args.k, device=args.device)
        opt = torch.optim.Adam(sae.parameters(), lr=args.lr)
        order = torch.randperm(data.shape[0], device=data.device)
        # A plain list of shuffled batches: train_sae takes any iterable of tensors.
        batches = [data[idx] for idx in order.split(args.batch)]

        def mse(x, x_hat, pre_codes, codes, dictionary):
            return (x - x_hat).square().mean()

        device_type = torch.device(args.device).type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=args.bf16):
            train_sae(sae, batches, mse, opt, nb_epochs=1, monitoring=0, device=args.device)
        sync(args.device)
        return sae, time.perf_counter() - t0

    run(train[: args.batch * 2])  # warm-up, untimed
    sae, seconds = run(train)
    sae.eval()
    with torch.no_grad():
        ev = explained_variance(held_out, sae(held_out)[2])
    emit(
        side="overcomplete",
        version=version("overcomplete"),
        vectors_per_s=train.shape[0] / seconds,
        seconds=seconds,
        explained_variance=ev,
    )


if __name__ == "__main__":
    main()
