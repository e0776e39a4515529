"""Concepts end to end: load an SAE for a model, steer, top texts, dictionaries and configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mi_crow.language_model import LanguageModel
from mi_crow.mechanistic.concepts import ConceptValidationError
from mi_crow.mechanistic.sae import SaeTrainer, TopKSae

# A TopK SAE reconstructs exactly up to float rounding when its error term is added back. Through two
# more blocks and the LM head, fp32 rounding stays below this (measured ~1e-6 on the tiny models).
STEERING_IDENTITY_ATOL = 1e-4


@pytest.fixture
def sae_id(lm: LanguageModel, texts: list[str]) -> str:
    run = lm.save_activations(texts * 2, ["transformer_h_0"], progress=False)
    trainer = SaeTrainer(lm, "transformer_h_0", TopKSae, {"epochs": 5, "batch_size": 32, "k": 4}, progress=False)
    return trainer.train(run).id


def test_empty_config_is_bit_identical_and_unit_scales_are_within_numerics(lm: LanguageModel, sae_id: str):
    texts = ["the cat sat on the mat", "blue sky"]
    plain = lm.forwards(texts).logits
    concepts = lm.load_concepts(sae_id=sae_id)
    assert torch.equal(lm.forwards(texts, concept_config=concepts).logits, plain)
    for latent in range(0, concepts.n_latents, 7):
        concepts.manipulate(neuron_idx=latent, scale_factor=1.0)
    unit = lm.forwards(texts, concept_config=concepts).logits
    assert torch.allclose(unit, plain, atol=STEERING_IDENTITY_ATOL)


def test_scaling_a_latent_changes_outputs_and_generation(lm: LanguageModel, sae_id: str, texts: list[str]):
    concepts = lm.load_concepts(sae_id=sae_id)
    plain_out = lm.forwards(["the cat sat on the mat"], output_hidden_states=True)
    plain = plain_out.logits
    latent = int(concepts.sae.encode(plain_out.hidden_states[1][0]).sum(0).argmax())  # fires on this prompt
    concepts.manipulate(neuron_idx=latent, scale_factor=25.0)
    steered = lm.forwards(["the cat sat on the mat"], with_controllers=True, concept_config=concepts).logits
    assert not torch.allclose(plain, steered, atol=1e-3)
    off = lm.forwards(["the cat sat on the mat"], with_controllers=False, concept_config=concepts).logits
    assert torch.equal(off, plain)
    assert lm.hooks.torch_handle_count() == 0  # the steering hook came off again
    concepts.reset().manipulate(neuron_idx=latent, scale_factor=200.0)
    a = lm.generate(["the cat"], max_new_tokens=8)
    b = lm.generate(["the cat"], max_new_tokens=8, concept_config=concepts)
    assert a.new_tokens != b.new_tokens


def test_top_texts_only_for_latents_that_fire(lm: LanguageModel, sae_id: str, texts: list[str]):
    concepts = lm.load_concepts(sae_id)
    top = concepts.collect_top_texts(texts, k=2, window=3, progress=False)
    assert 0 < len(top.latents()) <= concepts.n_latents
    codes = concepts.sae.encode(lm.forwards(texts, output_hidden_states=True).hidden_states[1][0])
    for latent in top.latents():
        entries = top[latent]
        assert 1 <= len(entries) <= 2
        assert all(e.activation > 0 for e in entries)
        assert entries[0].activation >= entries[-1].activation
        assert "«" in entries[0].marked and entries[0].token in entries[0].text
    never = [i for i in range(concepts.n_latents) if i not in top.latents()]
    assert all(not top[i] for i in never)
    assert codes.shape[-1] == concepts.n_latents
    reloaded = lm.load_concepts(sae_id).top_texts()
    assert reloaded is not None and reloaded.latents() == top.latents()


def test_dictionary_and_configs(lm: LanguageModel, sae_id: str, tmp_path: Path):
    concepts = lm.load_concepts(sae_id)
    n = concepts.n_latents
    good = tmp_path / "names.csv"
    good.write_text("latent,name\n0,cats\n3,colors\n")
    assert concepts.load_dictionary(good).name(3) == "colors"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"0": "ok", str(n): "too far", "-1": "negative", "x": "nan"}))
    with pytest.raises(ConceptValidationError) as err:
        concepts.load_dictionary(bad)
    assert f"latent {n} out of range" in str(err.value) and "latent -1 out of range" in str(err.value)
    assert "'x' is not an integer" in str(err.value)
    concepts.manipulate(neuron_idx=2, scale_factor=1.5, bias=0.25)
    concepts.save_config()
    concepts.save_config("strong")
    again = lm.load_concepts(sae_id)
    assert again.config.scales == {2: 1.5} and again.config.biases == {2: 0.25}  # "default" became the default
    assert again.dictionary.name(0) == "cats"
    assert again.list_configs() == ["default", "strong"]
    with pytest.raises(ConceptValidationError, match="out of range"):
        again.manipulate(neuron_idx=n, scale_factor=2.0)
    with pytest.raises(ConceptValidationError, match="finite"):
        again.manipulate(neuron_idx=0, scale_factor=float("nan"))
    preview = again.preview({"1": 2.0, "2": {"scale": 0.5, "bias": 0.1}})
    assert preview.to_dict()["edits"]["2"] == {"scale": 0.5, "bias": 0.1}
    with pytest.raises(FileNotFoundError, match="no concept config"):
        again.load_config("missing")


def test_sae_of_the_wrong_width_is_refused(lm: LanguageModel, sae_id: str):
    sae_dir = lm.store.sae_dir(lm.model_id, sae_id)
    meta = json.loads((sae_dir / "sae.json").read_text())
    meta["layer"] = "transformer_h_0_attn_c_attn"  # 3x wider than the SAE was trained on
    (sae_dir / "sae.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="expects d_model"):
        lm.load_concepts(sae_id)
    with pytest.raises(FileNotFoundError):
        lm.load_concepts("sae-that-does-not-exist")
