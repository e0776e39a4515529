"""SAE training on stored runs, tensors and streams; save/load; checkpoints and resume."""

from __future__ import annotations

import pytest
import torch

from mi_crow.language_model import LanguageModel
from mi_crow.mechanistic.sae import (
    SAE_CLASSES,
    Sae,
    SaeTrainer,
    TopKSae,
    TrainingCancelled,
)
from mi_crow.store import ActivationRun


@pytest.fixture
def run(lm: LanguageModel, texts: list[str]) -> ActivationRun:
    return lm.save_activations(texts * 3, ["transformer_h_0"], shard_size=64, progress=False)


def test_topk_trains_to_a_useful_sae_and_reloads(lm: LanguageModel, run: ActivationRun):
    trainer = SaeTrainer(lm, "transformer_h_0", TopKSae, {"epochs": 15, "batch_size": 64, "k": 8}, progress=False)
    sae = trainer.train(run)
    final = trainer.epochs[-1]
    assert final["explained_variance"] > 0.7, final
    assert final["l0"] <= 8 + 1e-6
    assert {"mse", "l0", "explained_variance", "dead_fraction"} <= set(trainer.history[-1])
    sae_dir = lm.store.sae_dir(lm.model_id, sae.id)
    assert (sae_dir / "sae.safetensors").is_file() and (sae_dir / "metrics.json").is_file()
    assert [m["sae_id"] for m in lm.store.list_saes(lm.model_id)] == [sae.id]
    loaded = Sae.load(sae_dir)
    x = run.read_shard("transformer_h_0", 0)["activations"]
    assert isinstance(loaded, TopKSae) and loaded.layer == "transformer_h_0"
    assert torch.allclose(loaded.encode(x), sae.encode(x), atol=1e-6)
    assert loaded.training_record["final"]["explained_variance"] == pytest.approx(final["explained_variance"])


@pytest.mark.parametrize("name", sorted(SAE_CLASSES))
def test_every_variant_trains_saves_and_loads(name: str, lm: LanguageModel, run: ActivationRun):
    trainer = SaeTrainer(lm, "transformer_h_0", name, {"epochs": 4, "batch_size": 64}, progress=False)
    sae = trainer.train(run)
    assert trainer.epochs[-1]["explained_variance"] > 0.3
    loaded = Sae.load(lm.store.sae_dir(lm.model_id, sae.id))
    assert type(loaded).__name__ == name
    x = run.read_shard("transformer_h_0", 0)["activations"][:32]
    assert torch.allclose(loaded(x).x_hat, sae(x).x_hat, atol=1e-5)


def test_training_from_tensor_and_from_stream(lm: LanguageModel, run: ActivationRun):
    data = torch.cat([s["activations"] for s in run.iter_shards("transformer_h_0")])
    by_tensor = SaeTrainer(lm, "transformer_h_0", TopKSae, {"epochs": 3, "batch_size": 64}, progress=False)
    by_tensor.train(data)
    chunks = list(data.split(50))
    by_stream = SaeTrainer(lm, "transformer_h_0", TopKSae, {"epochs": 3, "batch_size": 64}, progress=False)
    by_stream.train(lambda: iter(chunks))
    assert by_stream.epochs[-1]["tokens"] == by_tensor.epochs[-1]["tokens"] == data.shape[0]
    once = SaeTrainer(lm, "transformer_h_0", TopKSae, {"epochs": 2, "batch_size": 64}, progress=False)
    with pytest.raises(ValueError, match="one epoch only"):
        once.train(iter(chunks))


def test_resume_after_interruption_matches_uninterrupted(lm: LanguageModel, run: ActivationRun):
    cfg = {"epochs": 3, "batch_size": 32, "checkpoint_every": 5, "log_every": 1}
    whole = SaeTrainer(lm, "transformer_h_0", TopKSae, cfg, progress=False, sae_id="whole").train(run)

    def stop_at_12(record: dict) -> bool:
        return not (record.get("phase") == "train" and record["step"] == 12)

    interrupted = SaeTrainer(lm, "transformer_h_0", TopKSae, cfg, progress=False, sae_id="resumed", on_step=stop_at_12)
    with pytest.raises(TrainingCancelled):
        interrupted.train(run)
    sae_dir = lm.store.sae_dir(lm.model_id, "resumed")
    assert (sae_dir / "checkpoints" / "last.pt").is_file()
    assert not (sae_dir / "sae.json").exists()  # nothing published before training finishes
    resumed = SaeTrainer(lm, "transformer_h_0", TopKSae, cfg, progress=False, sae_id="resumed").train(run, resume=True)
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    assert not (sae_dir / "checkpoints" / "last.pt").exists()


def test_resuming_a_published_sae_returns_it_untrained(lm: LanguageModel, run: ActivationRun):
    cfg = {"epochs": 1, "batch_size": 32}
    first = SaeTrainer(lm, "transformer_h_0", TopKSae, cfg, progress=False, sae_id="done").train(run, resume=True)
    sae_dir = lm.store.sae_dir(lm.model_id, "done")
    published = {p.name: p.read_bytes() for p in sae_dir.iterdir() if p.is_file()}
    records: list[dict] = []
    again = SaeTrainer(lm, "transformer_h_0", TopKSae, cfg, progress=False, sae_id="done", on_step=records.append)
    sae = again.train(run, resume=True)
    assert [r["phase"] for r in records] == ["published"]  # no training step ran
    assert {p.name: p.read_bytes() for p in sae_dir.iterdir() if p.is_file()} == published
    for (name, a), (_, b) in zip(first.state_dict().items(), sae.state_dict().items(), strict=True):
        assert torch.allclose(a.cpu(), b.cpu(), atol=1e-5), name  # as saved, not retrained
    assert again.epochs == first.training_record["epochs"]


def test_bad_training_input(lm: LanguageModel, run: ActivationRun):
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        SaeTrainer(lm, "transformer_h_0", TopKSae, {"epochz": 1})
    with pytest.raises(ValueError, match="unknown SAE class"):
        SaeTrainer(lm, "transformer_h_0", "NoSuchSae")
    wrong = SaeTrainer(lm, "transformer_h_0_attn_c_attn", TopKSae, {"epochs": 1}, progress=False)
    with pytest.raises((ValueError, KeyError), match="transformer_h_0_attn_c_attn"):
        wrong.train(run)  # the run has no such layer
    narrow = torch.randn(100, 7)
    with pytest.raises(ValueError, match="width"):
        SaeTrainer(lm, "transformer_h_0", TopKSae, {"epochs": 1}, progress=False).train(narrow)
    poisoned = torch.randn(64, lm.hidden_size("transformer_h_0"))
    poisoned[5, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        SaeTrainer(lm, "transformer_h_0", TopKSae, {"epochs": 1}, progress=False).train(poisoned)
    with pytest.raises(ValueError, match="k must be"):
        TopKSae(8, 4, k=5)


def test_trainer_finds_run_by_id_and_manifest_path(lm: LanguageModel, run: ActivationRun):
    by_id = SaeTrainer(lm, "transformer_h_0", TopKSae, {"epochs": 1, "batch_size": 64}, progress=False)
    assert by_id.train(run.run_id).layer == "transformer_h_0"
    by_path = SaeTrainer(None, None, TopKSae, {"epochs": 1, "batch_size": 64}, store=lm.store, progress=False)
    sae = by_path.train(str(run.manifest_path))
    assert sae.layer == "transformer_h_0" and sae.model_id == lm.model_id
