"""SAE evaluation: exact reconstruction statistics, firing densities, downstream CE/KL, and clean hooks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mi_crow.mechanistic import EvalReport, evaluate_sae
from mi_crow.mechanistic.evaluation import (
    DENSITY_LOG10_EDGES,
    LayerMismatchError,
    ReconstructionStats,
    evaluate_downstream,
    evaluate_reconstruction,
    reconstruction_from_activations,
)
from mi_crow.mechanistic.sae import L1Sae, TopKSae

LAYER = "transformer_h_0"


def identity_sae(d: int, layer: str = LAYER) -> L1Sae:
    """A ReLU SAE that reconstructs exactly: latents relu(x) and relu(-x), decoded as +x and -x."""
    sae = L1Sae(d, 2 * d)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.net.encoder.final_block[0].weight.copy_(torch.cat([eye, -eye]))
        sae.net.encoder.final_block[0].bias.zero_()
        sae.net.dictionary._weights.copy_(torch.cat([eye, -eye]))
    sae.layer, sae.sae_id = layer, "sae-identity"
    sae.eval()
    sae.refresh()
    return sae


def random_topk(d: int, layer: str = LAYER, seed: int = 0) -> TopKSae:
    torch.manual_seed(seed)
    sae = TopKSae(d, 4 * d, k=8)
    sae.layer, sae.sae_id = layer, "sae-random"
    return sae.eval()


def test_identity_sae_recovers_all_loss_and_zero_ablation_does_not(lm, texts):
    report = evaluate_sae(lm, identity_sae(64), texts, progress=False)
    assert report.has_downstream and report.layer == LAYER and report.texts == len(texts)
    assert report.explained_variance == pytest.approx(1.0, abs=1e-6) and report.mse < 1e-10
    assert report.ce_sae == pytest.approx(report.ce_clean, abs=1e-6)
    assert report.ce_recovered == pytest.approx(1.0, abs=1e-3)
    assert abs(report.kl_sae) < 1e-6
    assert report.kl_zero > 1e-4 and report.ce_zero != pytest.approx(report.ce_clean, abs=1e-6)
    assert lm.hooks.torch_handle_count() == 0  # every splice/ablation/capture hook came off


def test_random_sae_recovers_less_than_identity(lm, texts):
    report = evaluate_sae(lm, random_topk(64), texts, progress=False)
    assert report.kl_sae > 1e-4 and report.ce_recovered < 0.99
    assert report.l0 == pytest.approx(8.0)  # TopK: exactly k active latents per token


def test_padding_excluded_results_do_not_depend_on_batch_size(lm, texts):
    sae = random_topk(64)
    one = evaluate_sae(lm, sae, texts, batch_size=1, progress=False)
    four = evaluate_sae(lm, sae, texts, batch_size=4, progress=False)
    real_tokens = sum(len(lm.tokenizer(t)["input_ids"]) for t in texts)
    assert one.tokens == four.tokens == real_tokens
    assert one.downstream_tokens == four.downstream_tokens == real_tokens - len(texts)
    assert one.histogram_counts == four.histogram_counts
    for key in ("mse", "fvu", "l0", "dead_fraction", "dense_fraction", "ce_clean", "ce_sae", "ce_zero", "kl_sae"):
        assert getattr(one, key) == pytest.approx(getattr(four, key), rel=1e-4, abs=1e-7), key
    assert one.latent_density == pytest.approx(four.latent_density, abs=1e-9)


def test_token_window_is_cut_in_text_order(lm, texts):
    sae = random_topk(64)
    small = evaluate_sae(lm, sae, texts, max_tokens=13, batch_size=4, progress=False)
    assert small.tokens == 13 and small.downstream_tokens == 13
    first = len(lm.tokenizer(texts[0])["input_ids"])
    only_first = evaluate_sae(lm, sae, texts[:1], max_tokens=first, progress=False, downstream=False)
    cut = evaluate_sae(lm, sae, texts, max_tokens=first, batch_size=3, progress=False, downstream=False)
    assert cut.tokens == only_first.tokens == first and cut.mse == pytest.approx(only_first.mse, rel=1e-6)
    assert cut.texts == only_first.texts == 1


def test_dead_and_dense_fractions_and_histogram_on_a_constructed_case():
    # Latent 0 fires on every row, latent 1 on 1 row of 20, latents 2 and 3 never.
    sae = L1Sae(2, 4)
    with torch.no_grad():
        sae.net.encoder.final_block[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, 0.0]]))
        sae.net.encoder.final_block[0].bias.copy_(torch.tensor([0.0, 0.0, 0.0, -1.0]))
    sae.eval()
    x = torch.zeros(20, 2)
    x[:, 0] = torch.linspace(1.0, 2.0, 20)
    x[7, 1] = 3.0
    stats = ReconstructionStats(sae, dense_threshold=0.1)
    for part in x.split(6):  # streamed in uneven parts
        stats.add(part)
    out = stats.result()
    assert out["tokens"] == 20 and out["latent_density"] == pytest.approx([1.0, 0.05, 0.0, 0.0])
    assert out["dead_fraction"] == 0.5 and out["dense_fraction"] == 0.25 and out["dead_latents"] == 2
    assert sum(out["histogram_counts"]) + out["dead_latents"] == sae.n_latents
    assert len(out["histogram_counts"]) == len(DENSITY_LOG10_EDGES) - 1
    nonzero = {i: c for i, c in enumerate(out["histogram_counts"]) if c}
    assert nonzero == {11: 1, 13: 1}  # log10(0.05) = -1.3 in [-1.5, -1); log10(1) = 0 in the last bin
    assert out["l0"] == pytest.approx(21 / 20)
    with torch.no_grad():
        x_hat = sae(x).x_hat.double()
    xd = x.double()
    fvu = float((xd - x_hat).pow(2).sum() / (xd - xd.mean(0)).pow(2).sum())
    assert out["fvu"] == pytest.approx(fvu, rel=1e-9) and out["explained_variance"] == pytest.approx(1 - fvu)
    whole = reconstruction_from_activations(sae, [x])
    assert whole["fvu"] == pytest.approx(out["fvu"], rel=1e-12)


def test_histogram_sums_to_n_latents_on_a_model(lm, texts):
    report = evaluate_sae(lm, random_topk(64), texts, downstream=False, progress=False)
    assert not report.has_downstream and report.ce_clean is None
    assert sum(report.histogram_counts) + report.dead_latents == report.n_latents == 256
    assert report.dead_fraction == pytest.approx(report.dead_latents / 256)
    assert len(report.latent_density) == 256


def test_layer_mismatch_is_refused(lm, texts):
    with pytest.raises(LayerMismatchError, match="trained on layer"):
        evaluate_sae(lm, random_topk(64), texts, layer="transformer_h_1", progress=False)
    with pytest.raises(LayerMismatchError, match="width"):
        evaluate_sae(lm, random_topk(32), texts, progress=False)
    with pytest.raises(ValueError, match=r"no tokens|empty|samples"):
        evaluate_sae(lm, random_topk(64), [], progress=False)


class _Exploding(L1Sae):
    def sparsify(self, pre_codes: torch.Tensor):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")


def test_hooks_come_off_when_a_forward_fails(lm, texts):
    sae = _Exploding(64, 128)
    batches = [texts[:4]]
    with pytest.raises(RuntimeError, match="boom"):
        evaluate_downstream(lm, sae, batches, LAYER, max_tokens=100)
    assert lm.hooks.torch_handle_count() == 0
    with pytest.raises(RuntimeError, match="boom"):
        evaluate_reconstruction(lm, sae, batches, LAYER, max_tokens=100)
    assert lm.hooks.torch_handle_count() == 0
    evaluate_reconstruction(lm, random_topk(64), [texts[:4], texts[4:8]], LAYER, max_tokens=5)  # stops early
    assert lm.hooks.torch_handle_count() == 0


def test_report_round_trip_and_atomic_save(lm, texts, tmp_path: Path):
    report = evaluate_sae(lm, random_topk(64), texts[:6], progress=False)
    report.ce_recovered = math.nan  # undefined numbers are stored as null, not as invalid JSON
    path = report.save(tmp_path)
    assert path == tmp_path / "eval.json" and "NaN" not in path.read_text()
    loaded = EvalReport.load(tmp_path)
    assert loaded.ce_recovered is None and loaded.histogram_counts == report.histogram_counts
    assert loaded.to_dict() == report.to_dict()
    assert not list(tmp_path.glob("*.tmp*"))
    with pytest.raises(FileNotFoundError):
        EvalReport.load(tmp_path / "nowhere")


def test_cli_evaluate_stores_the_report(gpt2_dir: Path, tmp_path: Path, texts):
    from typer.testing import CliRunner

    from mi_crow.cli import app
    from mi_crow.store import LocalStore

    store = LocalStore(tmp_path / "cli-store")
    sae = random_topk(64)
    sae.sae_id = "sae-cli"
    sae_dir = sae.save(store.sae_dir(str(gpt2_dir), "sae-cli"))
    data = tmp_path / "held_out.txt"
    data.write_text("\n".join(texts[:6]) + "\n")
    args = ["evaluate", str(gpt2_dir), "sae-cli", str(data), "--max-tokens", "20", "--store", str(store.root)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = result.output  # progress bars (stderr) share the line the JSON starts on
    printed = json.loads(out[out.rindex('{"layer"') :].splitlines()[0])
    assert printed["tokens"] == 20 and printed["has_downstream"] and "latent_density" not in printed
    assert EvalReport.load(sae_dir).tokens == 20
