"""Synthetic ground truth: known sparse dictionaries, the recovery metric, and TopK recovering the atoms."""

from __future__ import annotations

import pytest
import torch

from benchmarks.ground_truth_synthetic import format_table, run
from mi_crow.mechanistic.sae.metrics import mean_max_cosine
from mi_crow.testing.synthetic import random_dictionary, sparse_dictionary_data


def test_data_is_a_seeded_sparse_nonnegative_mix_of_unit_atoms():
    a = sparse_dictionary_data(n_samples=500, d=16, n_atoms=40, active=3, noise=0.0, seed=7)
    b = sparse_dictionary_data(n_samples=500, d=16, n_atoms=40, active=3, noise=0.0, seed=7)
    assert torch.equal(a.activations, b.activations) and torch.equal(a.atoms, b.atoms)
    assert not torch.equal(a.atoms, sparse_dictionary_data(500, 16, 40, 3, seed=8).atoms)
    assert torch.allclose(a.atoms.norm(dim=1), torch.ones(40), atol=1e-6)
    assert ((a.codes > 0).sum(dim=1) == 3).all() and (a.codes >= 0).all()
    assert torch.allclose(a.activations, a.codes @ a.atoms, atol=1e-6)  # noise=0: exactly the mix
    noisy = sparse_dictionary_data(n_samples=500, d=16, n_atoms=40, active=3, noise=0.05, seed=7)
    assert 0.03 < float((noisy.activations - noisy.codes @ noisy.atoms).std()) < 0.07
    with pytest.raises(ValueError, match="active"):
        sparse_dictionary_data(n_samples=10, d=4, n_atoms=3, active=5)


def test_mean_max_cosine():
    atoms = random_dictionary(20, 64, seed=0)
    learned = torch.cat([atoms[torch.randperm(20)] * 3.0, random_dictionary(10, 64, seed=1)])
    assert mean_max_cosine(learned, atoms) == pytest.approx(1.0, abs=1e-6)  # order and norm do not matter
    assert mean_max_cosine(-atoms, atoms) < 0.5  # a flipped atom is not a recovered one
    half = atoms.clone()
    half[10:] = random_dictionary(10, 64, seed=2)
    assert mean_max_cosine(half, atoms) < mean_max_cosine(atoms, atoms)
    with pytest.raises(ValueError, match="dictionaries"):
        mean_max_cosine(torch.zeros(3, 4), torch.zeros(3, 5))


def test_topk_recovers_the_true_atoms_far_above_chance():
    rows = run(quick=True, variants=["TopKSae"])
    assert len(rows) == 1
    row = rows[0]
    assert {"variant", "mean_max_cosine", "explained_variance", "l0", "seconds"} <= set(row)
    assert row["variant"] == "TopKSae"
    assert row["random_mmcs"] < 0.5
    assert row["mean_max_cosine"] > 0.8, row
    assert row["explained_variance"] > 0.6 and row["l0"] <= 3 + 1e-6
    assert "| TopKSae |" in format_table(rows)
