"""Every SAE variant's objective: loss goes down, Matryoshka prefixes, AuxK revival, unit-norm decoders."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from mi_crow.mechanistic.sae import SAE_CLASSES, BatchTopKSae, MatryoshkaSae, Sae, SaeTrainer, TopKSae, TrainingConfig
from mi_crow.mechanistic.sae.fit import SaeFit
from mi_crow.mechanistic.sae.metrics import explained_variance
from mi_crow.mechanistic.sae.modules.matryoshka import default_group_sizes
from mi_crow.store import LocalStore
from mi_crow.testing.synthetic import sparse_dictionary_data

CPU = torch.device("cpu")
TOPK_FAMILY = (TopKSae, BatchTopKSae)  # MatryoshkaSae is a BatchTopKSae


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    return sparse_dictionary_data(n_samples=2048, d=16, n_atoms=32, active=3, seed=0).activations


def _fit(sae: Sae, **cfg: object) -> SaeFit:
    config = TrainingConfig(**{"batch_size": 128, "lr": 3e-3, "lr_warmup_steps": 0, **cfg})  # type: ignore[arg-type]
    sae.train()
    return SaeFit(sae, config, CPU, None)


def _build(name: str) -> Sae:
    torch.manual_seed(0)
    cls = SAE_CLASSES[name]
    kwargs = {"k": 4} if issubclass(cls, TOPK_FAMILY) else {}
    return cls(16, 64, **kwargs)


@pytest.mark.parametrize("name", sorted(SAE_CLASSES))
def test_each_variant_lowers_its_loss_and_keeps_unit_norm_decoder_rows(name: str, data: torch.Tensor):
    sae = _build(name)
    fit = _fit(sae, sparsity_warmup_steps=1)  # full penalty from the start: the loss is one objective
    losses = []
    for _ in range(3):
        for batch in data.split(128):
            _, _, metrics = fit.train_step(batch)
            losses.append(metrics.get("loss", metrics["mse"]))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (name, first, last)
    norms = sae.net.dictionary._weights.detach().norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5), (name, norms.min(), norms.max())


def test_without_the_constraint_decoder_rows_drift(data: torch.Tensor):
    # The check above is not vacuous: Adam moves rows off the unit sphere unless they are renormalized.
    sae = _build("TopKSae")
    fit = _fit(sae, normalize_decoder=False)
    for batch in data.split(128):
        fit.train_step(batch)
    norms = sae.net.dictionary._weights.detach().norm(dim=1)
    assert (norms - 1).abs().max() > 1e-3


def _prefix_evs(sae: Sae, data: torch.Tensor, ends: list[int]) -> list[float]:
    fit = _fit(sae)
    for _ in range(4):
        for batch in data.split(128):
            fit.train_step(batch)
    sae.eval()
    x = data[:512]
    with torch.no_grad():
        codes = sae.encode(x)
        evs = []
        for end in ends:
            kept = codes.clone()
            kept[:, end:] = 0
            evs.append(explained_variance(x, sae.decode(kept)))
    return evs


def test_matryoshka_prefixes_reconstruct_better_with_more_groups(data: torch.Tensor):
    torch.manual_seed(0)
    sae = MatryoshkaSae(16, 64, k=4, group_sizes=[4, 12, 16, 32])
    evs = _prefix_evs(sae, data, sae.prefix_ends)
    x = data[:512]
    with torch.no_grad():
        errors = [float(e) for e in sae.prefix_errors(x, sae(x))]
        assert evs == [explained_variance(x, sae.decode_prefix(sae.encode(x), n)) for n in range(1, 5)]
        assert evs[-1] == pytest.approx(explained_variance(x, sae(x).x_hat), abs=1e-5)
    assert all(b > a for a, b in itertools.pairwise(evs)), evs
    assert all(b < a for a, b in itertools.pairwise(errors)), errors
    # The nested loss is what makes a prefix useful on its own: the same first latents of a plain
    # BatchTopK SAE, trained alike, reconstruct far less.
    torch.manual_seed(0)
    plain = _prefix_evs(BatchTopKSae(16, 64, k=4), data, sae.prefix_ends)
    assert evs[0] > plain[0] and evs[1] > plain[1] + 0.1, (evs, plain)


def test_matryoshka_groups_validation_and_defaults():
    assert default_group_sizes(128) == [8, 8, 16, 32, 64]
    assert sum(default_group_sizes(100)) == 100
    with pytest.raises(ValueError, match="sum to n_latents"):
        MatryoshkaSae(8, 32, k=2, group_sizes=[8, 8])
    with pytest.raises(ValueError, match="n_groups"):
        MatryoshkaSae(8, 32, k=2).decode_prefix(torch.zeros(1, 32), 0)


def test_matryoshka_save_load_round_trip(data: torch.Tensor, tmp_path: Path):
    store = LocalStore(tmp_path / "store")
    trainer = SaeTrainer(
        None,
        "synthetic_layer",
        "MatryoshkaSae",
        {"epochs": 2, "batch_size": 128, "n_latents": 64, "k": 4, "group_sizes": [8, 24, 32]},
        store=store,
        model_id="synthetic",
        progress=False,
    )
    sae = trainer.train(data)
    loaded = Sae.load(store.sae_dir("synthetic", sae.id))
    assert isinstance(loaded, MatryoshkaSae)
    assert loaded.group_sizes == [8, 24, 32] and loaded.k == 4
    assert float(loaded.threshold) == pytest.approx(float(sae.threshold))
    x = data[:64]
    assert torch.allclose(loaded.encode(x), sae.encode(x), atol=1e-6)
    codes = sae.encode(x)
    assert torch.allclose(loaded.decode_prefix(codes, 1), sae.decode_prefix(codes, 1), atol=1e-6)
    assert "loss" in trainer.history[-1]  # the nested objective is logged next to the full-width mse


def _revival_run(data: torch.Tensor, auxk_alpha: float) -> tuple[float, float]:
    torch.manual_seed(0)
    sae = TopKSae(16, 64, k=4)
    with torch.no_grad():
        # Half the latents start with encoder rows 10x too short: they never win a top-k slot and,
        # without AuxK, never get a gradient to grow out of it.
        sae.net.encoder.final_block[0].weight[32:] *= 0.1
    fit = _fit(sae, auxk_alpha=auxk_alpha, dead_tokens_threshold=256)
    dead_early = 0.0
    for epoch in range(4):
        for batch in data.split(128):
            fit.train_step(batch)
        if epoch == 0:
            dead_early = fit.dead_fraction()
    return dead_early, fit.dead_fraction()


def test_auxk_revives_dead_latents(data: torch.Tensor):
    early_without, dead_without = _revival_run(data, auxk_alpha=0.0)
    _, dead_with = _revival_run(data, auxk_alpha=1 / 32)
    assert early_without >= 0.4 and dead_without >= 0.4  # the constructed latents are dead and stay dead
    assert dead_with < dead_without - 0.25, (dead_with, dead_without)


def test_auxk_only_for_the_topk_family(data: torch.Tensor):
    dead = torch.ones(64, dtype=torch.bool)
    x = data[:32]
    for name in sorted(SAE_CLASSES):
        sae = _build(name)
        aux = sae.aux_loss(x, sae(x), dead, 8)
        assert (aux is not None) == issubclass(SAE_CLASSES[name], TOPK_FAMILY), name
        if aux is not None:
            assert torch.isfinite(aux) and aux > 0
