"""Several SAEs trained from one forward pass per batch of texts (MultiSaeTrainer)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mi_crow.language_model import LanguageModel
from mi_crow.language_model.harvest import stream_activations
from mi_crow.mechanistic.sae import MultiSaeTrainer, Sae, SaeSpec, TrainingCancelled
from mi_crow.mechanistic.sae.metrics import explained_variance
from mi_crow.store import LocalStore


def _specs() -> list[SaeSpec]:
    return [
        SaeSpec("transformer_h_0", "TopKSae", {"epochs": 8, "batch_size": 64, "k": 8}, sae_id="h0-topk-small"),
        SaeSpec(
            "transformer_h_0",
            "MatryoshkaSae",
            {"epochs": 8, "batch_size": 32, "k": 8, "n_latents": 256, "group_sizes": [32, 96, 128]},
            sae_id="h0-matryoshka",
        ),
        SaeSpec("transformer_h_1", "BatchTopKSae", {"epochs": 8, "batch_size": 64, "k": 8}, sae_id="h1-batchtopk"),
    ]


def test_one_forward_per_batch_trains_every_sae(lm: LanguageModel, texts: list[str]):
    data = texts * 3  # 72 texts -> 9 forward batches of 8 per epoch
    trainer = MultiSaeTrainer(lm, _specs(), progress=False)
    forwards, head_calls = [], []
    pre = lm.model.register_forward_pre_hook(lambda *_: forwards.append(1))
    head = lm.model.lm_head.register_forward_pre_hook(lambda *_: head_calls.append(1))
    try:
        saes = trainer.train(data, batch_size=8)
    finally:
        pre.remove()
        head.remove()
    assert len(forwards) == 8 * 9  # epochs x text batches: one forward feeds all three SAEs
    assert not head_calls  # the forward stops at the deepest layer wanted (transformer_h_1)

    batch = next(stream_activations(lm, data[:24], ["transformer_h_0", "transformer_h_1"], batch_size=24))
    for sae, spec, t in zip(saes, _specs(), trainer.trainers, strict=True):
        x = batch.activations[sae.layer]
        untrained = t.build_sae(x.shape[1])
        untrained.init_from_data(x)
        untrained.eval()
        with torch.no_grad():
            ev_before = explained_variance(x, untrained(x).x_hat)
            ev_after = explained_variance(x, sae(x).x_hat)
        assert ev_after > 0.6 and ev_after > ev_before + 0.2, (spec.sae_id, ev_before, ev_after)
        # Saved like SaeTrainer's, listed under the model, with its own layer and step count.
        loaded = Sae.load(lm.store.sae_dir(lm.model_id, spec.sae_id))
        assert type(loaded).__name__ == spec.sae_class and loaded.layer == spec.layer
        assert torch.allclose(loaded(x[:16]).x_hat, sae(x[:16]).x_hat, atol=1e-5)
        steps_per_epoch = -(-batch_tokens(lm, data) // t.config.batch_size)
        assert loaded.training_record["steps"] == steps_per_epoch * 8
        assert len(t.epochs) == 8
    assert {m["sae_id"] for m in lm.store.list_saes(lm.model_id)} == {s.sae_id for s in _specs()}


def batch_tokens(lm: LanguageModel, data: list[str]) -> int:
    return sum(int(lm.tokenize(data[i : i + 8])["attention_mask"].sum()) for i in range(0, len(data), 8))


def test_cancel_and_resume_from_epoch_checkpoints(lm: LanguageModel, texts: list[str]):
    specs = [
        SaeSpec("transformer_h_0", "TopKSae", {"epochs": 3, "batch_size": 64, "k": 4}, sae_id="a"),
        SaeSpec("transformer_h_1", "TopKSae", {"epochs": 2, "batch_size": 64, "k": 4}, sae_id="b"),
    ]
    seen: list[tuple[str, str]] = []

    def stop_in_epoch_2(record: dict) -> bool:
        seen.append((record["sae_id"], record["layer"]))
        return not (record.get("phase") == "train" and record["epoch"] == 2)

    with pytest.raises(TrainingCancelled):
        MultiSaeTrainer(lm, specs, progress=False, on_step=stop_in_epoch_2).train(texts * 2, batch_size=8, resume=True)
    assert ("a", "transformer_h_0") in seen and ("b", "transformer_h_1") in seen
    assert not (lm.store.sae_dir(lm.model_id, "a") / "sae.json").exists()
    resumed = MultiSaeTrainer(lm, specs, progress=False)
    saes = resumed.train(texts * 2, batch_size=8, resume=True)
    assert [len(t.epochs) for t in resumed.trainers] == [3, 2]
    assert all(not (lm.store.sae_dir(lm.model_id, s.sae_id) / "checkpoints" / "last.pt").exists() for s in saes)


def test_bad_specs(lm: LanguageModel):
    with pytest.raises(ValueError, match="at least one"):
        MultiSaeTrainer(lm, [])
    with pytest.raises(ValueError, match="ids must differ"):
        MultiSaeTrainer(lm, [SaeSpec("transformer_h_0", sae_id="x"), SaeSpec("transformer_h_1", sae_id="x")])


def test_rows_from_a_stream_train_every_sae_without_a_model(lm: LanguageModel, texts: list[str], tmp_path: Path):
    layers = ["transformer_h_0", "transformer_h_1"]
    batches = list(stream_activations(lm, texts * 2, layers, batch_size=8))
    opened: list[list[str]] = []

    def pieces(wanted: list[str]) -> Iterator[tuple[str, torch.Tensor]]:  # what a live stream of both layers gives
        opened.append(list(wanted))
        for batch in batches:
            yield from ((layer, batch.activations[layer]) for layer in wanted if layer in batch.activations)

    specs = [
        SaeSpec("transformer_h_0", "TopKSae", {"epochs": 6, "batch_size": 64, "k": 8}, sae_id="s.h0"),
        SaeSpec("transformer_h_1", "TopKSae", {"epochs": 6, "batch_size": 64, "k": 8}, sae_id="s.h1"),
    ]
    store = LocalStore(tmp_path / "store")
    trainer = MultiSaeTrainer(None, specs, store=store, model_id="tiny", progress=False)
    saes = trainer.train_stream(pieces, source={"dataset": "test"}, resume=True)
    assert opened == [layers] * 6  # one stream per epoch (the first also told the widths), never one per SAE
    for sae, layer in zip(saes, layers, strict=True):
        x = torch.cat([b.activations[layer] for b in batches])
        with torch.no_grad():
            assert explained_variance(x, sae(x).x_hat) > 0.5, layer
        loaded = Sae.load(store.sae_dir("tiny", sae.sae_id))
        assert loaded.layer == layer and loaded.training_record["source"]["kind"] == "stream"
    # Resuming SAEs that are published returns them as they are, without opening a stream.
    again = MultiSaeTrainer(None, specs, store=store, model_id="tiny", progress=False).train_stream(pieces, resume=True)
    assert len(opened) == 6 and [s.sae_id for s in again] == ["s.h0", "s.h1"]
    for (name, a), (_, b) in zip(again[0].state_dict().items(), saes[0].state_dict().items(), strict=True):
        assert torch.allclose(a.cpu(), b.cpu(), atol=1e-5), name  # as saved, not retrained
    with pytest.raises(ValueError, match="model_id"):
        MultiSaeTrainer(None, specs)
    with pytest.raises(ValueError, match="train_stream"):
        MultiSaeTrainer(None, specs, store=store, model_id="tiny").train(texts)
    short = MultiSaeTrainer(
        None, [SaeSpec("transformer_h_2", sae_id="h2")], store=store, model_id="tiny", progress=False
    )
    with pytest.raises(ValueError, match="never seen"):
        short.train_stream(pieces)
