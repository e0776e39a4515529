"""save_activations end to end: real model, real shards on disk, compared with a plain forward."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mi_crow.datasets import EmptyDatasetError
from mi_crow.hooks import LayerActivationDetector
from mi_crow.language_model import LanguageModel
from mi_crow.store import CorruptShardError, IncompleteRunError


def test_harvest_stores_exactly_the_real_tokens(lm: LanguageModel, texts: list[str]):
    layers = ["transformer_h_1", "transformer_h_0"]  # deepest first: the seed saved only one of these
    run = lm.save_activations(texts, layers, batch_size=4, shard_size=37, progress=False)
    assert run.manifest.status == "complete"
    assert sorted(run.layers) == sorted(layers)
    enc = lm.tokenize(texts)
    n_real = int(enc["attention_mask"].sum())
    assert run.n_tokens == n_real and run.n_samples == len(texts)
    refs = [LayerActivationDetector("transformer_h_0"), LayerActivationDetector("transformer_h_1")]
    with lm.hooks.attached(*refs):
        out = lm.forwards(texts)
    mask = out.attention_mask.bool()
    for ref, layer in zip(refs, ["transformer_h_0", "transformer_h_1"], strict=True):
        shards = [run.read_shard(layer, j) for j in range(len(run.layer(layer).shards))]
        assert all(s["activations"].shape[0] == 37 for s in shards[:-1])  # exact shard size
        samples = torch.cat([s["sample_index"] for s in shards])
        positions = torch.cat([s["positions"] for s in shards])
        assert samples.unique().numel() == len(texts)
        # Texts are regrouped by length, so rows come in batch order: put them back in dataset order.
        order = torch.argsort(samples * 10_000 + positions)
        stored = torch.cat([s["activations"] for s in shards])[order]
        assert torch.allclose(stored, ref.activations[mask], atol=1e-5)
        assert torch.equal(torch.cat([s["token_ids"] for s in shards]).long()[order], out.input_ids[mask])
        assert torch.equal(positions[order], torch.arange(mask.shape[1]).expand_as(mask)[mask])
    manifest = json.loads(run.manifest_path.read_text())
    assert manifest["layers"]["transformer_h_0"]["shards"][0]["sha256"]
    assert manifest["n_tokens"] == n_real


def test_harvest_groups_texts_by_length_and_keeps_their_dataset_index(lm: LanguageModel):
    from mi_crow.language_model.harvest import iter_harvest

    short, long = "the cat sat", "a red dog runs very fast across the park and then far away again today"
    texts = [short, long, short + " down", long + " now"]
    pairs = [texts[i : i + 2] for i in range(0, 4, 2)]
    plain = list(iter_harvest(lm, pairs, ["transformer_h_0"]))
    grouped = list(iter_harvest(lm, pairs, ["transformer_h_0"], sort_by_length=True))
    assert [b.sample_index.unique().tolist() for b in plain] == [[0, 1], [2, 3]]
    assert [b.sample_index.unique().tolist() for b in grouped] == [[0, 2], [1, 3]]  # short with short
    for sample in range(4):
        a = torch.cat([b.activations["transformer_h_0"][b.sample_index == sample] for b in plain])
        g = torch.cat([b.activations["transformer_h_0"][b.sample_index == sample] for b in grouped])
        assert a.shape[0] > 0 and torch.allclose(a, g, atol=1e-5)


def test_harvest_stops_before_the_lm_head(lm: LanguageModel, texts: list[str]):
    head = LayerActivationDetector("lm_head")
    with lm.hooks.attached(head):
        lm.save_activations(texts[:4], ["transformer_h_0"], progress=False)
        assert head.calls == 0
        lm.save_activations(texts[:4], ["transformer_h_0"], stop_early=False, progress=False)
        assert head.calls == 1
    assert lm.hooks.torch_handle_count() == 0


def test_harvest_from_local_files_and_saved_hf_dataset(lm: LanguageModel, texts: list[str], tmp_path: Path):
    from datasets import Dataset

    txt = tmp_path / "data.txt"
    txt.write_text("\n".join(texts[:6]) + "\n")
    run_a = lm.save_activations(str(txt), ["transformer_h_0"], progress=False)
    disk = tmp_path / "hf"
    Dataset.from_dict({"text": texts[:6]}).save_to_disk(str(disk))
    run_b = lm.save_activations({"type": "disk", "path": str(disk)}, ["transformer_h_0"], progress=False)
    assert run_a.n_tokens == run_b.n_tokens > 0
    assert run_a.run_id != run_b.run_id  # two datasets never overwrite each other
    assert {m.run_id for m in lm.store.list_runs(lm.model_id)} == {run_a.run_id, run_b.run_id}


def test_empty_dataset_fails_before_creating_a_run(lm: LanguageModel):
    with pytest.raises(EmptyDatasetError):
        lm.save_activations(["", "   "], ["transformer_h_0"], progress=False)
    assert lm.store.list_runs() == []


def test_failed_harvest_is_marked_failed_not_complete(lm: LanguageModel, texts: list[str]):
    def explode(t: torch.Tensor) -> None:
        raise RuntimeError("disk on fire")

    det = LayerActivationDetector("transformer_h_0", callback=explode)
    with lm.hooks.attached(det), pytest.raises(RuntimeError, match="disk on fire"):
        lm.save_activations(texts, ["transformer_h_0"], run_id="doomed", progress=False)
    [manifest] = lm.store.list_runs()
    assert manifest.status == "failed" and "disk on fire" in (manifest.error or "")
    with pytest.raises(IncompleteRunError, match="failed"):
        lm.store.open_run(lm.model_id, "doomed")


def test_corrupt_shard_is_detected_on_read(lm: LanguageModel, texts: list[str]):
    run = lm.save_activations(texts, ["transformer_h_0"], shard_size=50, progress=False)
    shard = run.run_dir / run.layer("transformer_h_0").shards[0].file
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptShardError, match="does not match"):
        list(run.iter_batches("transformer_h_0", 16))


def test_bad_harvest_arguments(lm: LanguageModel, texts: list[str]):
    from mi_crow.language_model import UnknownLayerError

    with pytest.raises(UnknownLayerError, match="did you mean"):
        lm.save_activations(texts, ["transformer_h_9"], progress=False)
    with pytest.raises(ValueError, match="no layers"):
        lm.save_activations(texts, [], progress=False)
    with pytest.raises(ValueError, match="positive"):
        lm.save_activations(texts, ["transformer_h_0"], batch_size=0, progress=False)


def test_harvest_bf16_stores_bf16(gpt2_dir: Path, tmp_path: Path, texts: list[str]):
    lm = LanguageModel(str(gpt2_dir), dtype="bf16", store=tmp_path / "s")
    run = lm.save_activations(texts[:4], ["transformer_h_0"], progress=False)
    assert run.read_shard("transformer_h_0", 0)["activations"].dtype == torch.bfloat16
    assert run.layer("transformer_h_0").dtype == "bfloat16"
