"""LanguageModel on five architectures, through the real loading code, with tiny local models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mi_crow.hooks import FunctionController, LayerActivationDetector
from mi_crow.language_model import LanguageModel, ModelLoadError, UnknownLayerError, resolve_alias

ARCH_BLOCK0 = {
    "gpt2": "transformer_h_0",
    "llama": "model_layers_0",
    "qwen2": "model_layers_0",
    "gpt_neox": "gpt_neox_layers_0",
    "mistral": "model_layers_0",
}


@pytest.mark.parametrize("arch", list(ARCH_BLOCK0))
def test_every_architecture_loads_forwards_and_lists_layers(arch: str, tiny_models: dict[str, Path], tmp_path: Path):
    lm = LanguageModel(str(tiny_models[arch]), store=tmp_path / "s", local_files_only=True)
    out = lm.forwards(["hello world", "a longer text with more tokens in it"])
    vocab = lm.model.config.vocab_size
    assert out.logits.shape[0] == 2 and out.logits.shape[-1] == vocab
    assert out.attention_mask.shape == out.input_ids.shape == out.logits.shape[:2]
    assert out.attention_mask[0].sum() < out.attention_mask[1].sum()  # right padding on the short text
    infos = {info.name: info for info in lm.layers()}
    block = ARCH_BLOCK0[arch]
    assert infos[block].hidden_size == lm.model.config.hidden_size
    assert infos[block].output_shape[:1] == (1,)
    gen = lm.generate(["hello"], max_new_tokens=3)
    assert len(gen.texts) == 1 and len(gen.new_tokens[0]) <= 3


@pytest.mark.parametrize("arch", list(ARCH_BLOCK0))
def test_forward_detector_sees_exactly_the_hidden_states(arch: str, tiny_models: dict[str, Path], tmp_path: Path):
    lm = LanguageModel(str(tiny_models[arch]), store=tmp_path / "s")
    det = LayerActivationDetector(ARCH_BLOCK0[arch])
    with lm.hooks.attached(det):
        out = lm.forwards(["the cat sat on the mat", "hi"], output_hidden_states=True)
    assert out.hidden_states is not None
    assert torch.equal(det.activations, out.hidden_states[1])


def test_readme_layer_name_resolves_on_gpt2(lm: LanguageModel):
    assert lm.resolve_layer("transformer_h_0_attn_c_attn") == "transformer_h_0_attn_c_attn"
    assert lm.resolve_layer("transformer.h.0.attn.c_attn") == "transformer_h_0_attn_c_attn"
    assert lm.hidden_size("transformer_h_0_attn_c_attn") == 3 * lm.model.config.n_embd


def test_unknown_layer_names_close_matches(lm: LanguageModel):
    with pytest.raises(UnknownLayerError, match=r"transformer_h_0_attn_c_attn"):
        lm.resolve_layer("transformer_h_0_attn_c_atn")


def test_identity_controller_leaves_logits_bit_identical(lm: LanguageModel):
    texts = ["the cat sat", "a dog"]
    plain = lm.forwards(texts).logits
    ctl = FunctionController("transformer_h_0", lambda t: t * 1)
    with lm.hooks.attached(ctl):
        hooked = lm.forwards(texts).logits
    assert torch.equal(plain, hooked)


def test_with_controllers_false_turns_controllers_off(lm: LanguageModel):
    texts = ["the cat sat"]
    plain = lm.forwards(texts).logits
    ctl = FunctionController("transformer_h_0", lambda t: t * 3)
    with lm.hooks.attached(ctl):
        steered = lm.forwards(texts).logits
        off = lm.forwards(texts, with_controllers=False).logits
        assert ctl.enabled  # restored afterwards
    assert not torch.allclose(plain, steered)
    assert torch.equal(plain, off)


def test_alias_table_from_env_file_and_inline(gpt2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    table = tmp_path / "aliases.json"
    table.write_text(json.dumps({"bielik": str(gpt2_dir)}))
    monkeypatch.setenv("MI_CROW_MODEL_ALIASES", str(table))
    assert resolve_alias("bielik") == str(gpt2_dir)
    lm = LanguageModel(model_id="bielik")
    assert lm.model_id == "bielik" and lm.source == str(gpt2_dir)
    monkeypatch.setenv("MI_CROW_MODEL_ALIASES", json.dumps({"tiny": str(gpt2_dir)}))
    assert resolve_alias("tiny") == str(gpt2_dir)
    assert resolve_alias("tinylm") == "TinyLlama/TinyLlama-1.1B-Chat-v1.0"  # built-in table still there
    monkeypatch.setenv("MI_CROW_MODEL_ALIASES", "{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        resolve_alias("x")


def test_missing_directory_and_uncached_hub_id_fail_clearly(tmp_path: Path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        LanguageModel(str(tmp_path / "nope" / "model"))
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        LanguageModel("some-org/definitely-not-cached-model", local_files_only=True)


def test_empty_directory_is_not_a_model(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="lacks model or tokenizer files"):
        LanguageModel(str(tmp_path / "empty"))


def test_dtype_choice_and_bad_dtype(gpt2_dir: Path):
    lm = LanguageModel(str(gpt2_dir), dtype="bf16")
    assert lm.dtype == torch.bfloat16
    assert lm.forwards(["hi there"]).logits.dtype == torch.bfloat16
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        LanguageModel(str(gpt2_dir), dtype="float7")
    with pytest.raises(ModelLoadError, match="unknown device"):
        LanguageModel(str(gpt2_dir), device="tiny")  # found by the RPC fuzz suite


def test_device_map_through_accelerate(gpt2_dir: Path):
    lm = LanguageModel(str(gpt2_dir), device_map="cpu")
    assert lm.device.type == "cpu"
    assert lm.forwards(["hi"]).logits.shape[0] == 1


def test_cuda_request_without_cuda_is_refused(gpt2_dir: Path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")  # the refusal only exists where CUDA is absent
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        LanguageModel(str(gpt2_dir), device="cuda")


def test_tokenizer_without_pad_token_still_batches(tmp_path: Path):
    from mi_crow.testing.tiny_models import build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer(tmp_path / "tok", with_pad=False)
    model_dir = build_tiny_model("gpt2", tmp_path / "m", tokenizer_dir=tok)
    lm = LanguageModel(str(model_dir))
    assert lm.tokenizer.pad_token_id is not None
    out = lm.forwards(["one", "one two three"])
    assert out.attention_mask.sum().item() < out.attention_mask.numel()


def test_forwards_in_batches_matches_one_batch(lm: LanguageModel, texts: list[str]):
    whole = lm.forwards(texts[:5])
    chunked = lm.forwards(texts[:5], batch_size=2)
    assert torch.allclose(whole.logits, chunked.logits, atol=1e-5)


def test_in_memory_model_and_seed_constructor(gpt2_dir: Path, tmp_path: Path):
    base = LanguageModel(str(gpt2_dir))
    wrapped = LanguageModel(model=base.model, tokenizer=base.tokenizer, store=tmp_path / "s")
    assert wrapped.forwards(["hi"]).logits.shape[-1] == base.model.config.vocab_size
    seeded = LanguageModel.from_huggingface(str(gpt2_dir), store=tmp_path / "s2")
    assert seeded.store.root == (tmp_path / "s2").resolve()
    with pytest.raises(ValueError, match="tokenizer is required"):
        LanguageModel(model=base.model)
    with pytest.raises(TypeError, match="list of texts"):
        base.forwards("a single string")  # type: ignore[arg-type]
