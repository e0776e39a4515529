"""Tiny offline checkpoints: random test models per architecture and the trained demo model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mi_crow.demo.corpus import read_corpus
from mi_crow.demo.tiny_model import TinyModelConfig, ensure_tiny_model, is_complete, train_tiny_model
from mi_crow.testing import ARCHITECTURES, build_tiny_model, build_tiny_tokenizer

pytestmark = pytest.mark.unit

# Small enough to train in about a second, big enough for the loss to fall visibly.
FAST_CONFIG = TinyModelConfig(
    n_layer=1,
    n_embd=32,
    n_head=4,
    n_positions=48,
    steps=40,
    batch_size=16,
    lr=1e-2,
    warmup_steps=5,
    n_samples=300,
    vocab_size=320,
    n_eval_samples=32,
)


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    return {with_pad: build_tiny_tokenizer(root / f"pad_{with_pad}", with_pad=with_pad) for with_pad in (True, False)}


def _load(path: Path) -> tuple[torch.nn.Module, object]:
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tokenizer


@pytest.mark.parametrize("with_pad", [True, False])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_arch_builds_loads_and_runs(
    arch: str, with_pad: bool, tokenizer_dirs: dict[bool, Path], tmp_path: Path
) -> None:
    out = build_tiny_model(arch, tmp_path / arch, tokenizer_dir=tokenizer_dirs[with_pad])
    model, tokenizer = _load(out)
    assert model.config.model_type == arch
    assert model.config.num_hidden_layers == 2
    assert model.config.vocab_size == len(tokenizer)
    assert (tokenizer.pad_token is not None) == with_pad
    assert tokenizer.eos_token is not None

    if with_pad:
        ids = tokenizer(["the cat sat on the mat", "hello"], return_tensors="pt", padding=True)
    else:
        # Without a pad token a batch needs equal lengths, so the same text is repeated.
        ids = tokenizer(["the cat sat on the mat"] * 2, return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape == (2, ids["input_ids"].shape[1], len(tokenizer))


def test_no_pad_tokenizer_has_eos_only(tokenizer_dirs: dict[bool, Path]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dirs[False], local_files_only=True)
    assert tokenizer.pad_token is None
    assert tokenizer.pad_token_id is None
    assert tokenizer.bos_token is None
    assert tokenizer.all_special_tokens == [tokenizer.eos_token]


def test_padded_tokenizer_has_distinct_special_tokens(tokenizer_dirs: dict[bool, Path]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dirs[True], local_files_only=True)
    ids = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id}
    assert None not in ids
    assert len(ids) == 4


def test_default_tokenizer_and_gpt2_module_names(tmp_path: Path) -> None:
    model, tokenizer = _load(build_tiny_model("gpt2", tmp_path / "gpt2"))
    assert tokenizer.pad_token is not None
    names = {name for name, _ in model.named_modules()}
    assert "transformer.h.0.attn.c_attn" in names
    assert "transformer.h.1.mlp.c_fc" in names


def test_seed_controls_weights(tokenizer_dirs: dict[bool, Path], tmp_path: Path) -> None:
    def weights(seed: int, name: str) -> torch.Tensor:
        out = build_tiny_model("llama", tmp_path / name, seed=seed, tokenizer_dir=tokenizer_dirs[True])
        return AutoModelForCausalLM.from_pretrained(out, local_files_only=True).model.embed_tokens.weight

    assert torch.equal(weights(0, "a"), weights(0, "b"))
    assert not torch.equal(weights(0, "c"), weights(1, "d"))


def test_unknown_arch_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        build_tiny_model("bert", tmp_path / "x")


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_model(tmp_path_factory.mktemp("demo") / "model", FAST_CONFIG, progress=False)


def test_train_tiny_model_writes_loadable_directory(trained_dir: Path) -> None:
    model, tokenizer = _load(trained_dir)
    assert model.config.model_type == "gpt2"
    assert model.config.vocab_size == len(tokenizer)
    assert tokenizer.pad_token_id not in (None, tokenizer.eos_token_id)
    # The demo tokenizer prepends <bos>, the same framing the model was trained with.
    assert tokenizer("the cat")["input_ids"][0] == tokenizer.bos_token_id
    assert len(read_corpus(trained_dir / "corpus.jsonl")) == FAST_CONFIG.n_samples
    with torch.no_grad():
        logits = model(**tokenizer(["the cat sat"], return_tensors="pt")).logits
    assert logits.shape[-1] == len(tokenizer)


def test_train_tiny_model_loss_decreases(trained_dir: Path) -> None:
    meta = json.loads((trained_dir / "mi_crow_demo.json").read_text())
    assert meta["config"]["steps"] == FAST_CONFIG.steps
    assert meta["final_loss"] < meta["initial_loss"] - 1.0
    assert meta["final_eval_loss"] < meta["initial_eval_loss"] - 1.0


def test_train_leaves_no_temporary_directories(trained_dir: Path) -> None:
    assert [p.name for p in trained_dir.parent.iterdir()] == [trained_dir.name]


def test_ensure_reuses_complete_directory(trained_dir: Path) -> None:
    # Retraining builds a new directory and swaps it in, so every file would get a new inode.
    files = ("mi_crow_demo.json", "model.safetensors")
    before = {name: (trained_dir / name).stat() for name in files}
    assert ensure_tiny_model(trained_dir, FAST_CONFIG, progress=False) == trained_dir
    for name in files:
        after = (trained_dir / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before[name].st_ino, before[name].st_mtime_ns)


def test_ensure_retrains_on_config_mismatch(tmp_path: Path) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.txt").write_text("left over from an interrupted run")
    other = TinyModelConfig(**{**FAST_CONFIG.__dict__, "steps": 5})
    assert not is_complete(out, other)
    assert ensure_tiny_model(out, other, progress=False) == out.resolve()
    assert is_complete(out, other)
    assert not is_complete(out, FAST_CONFIG)
    # The old directory was replaced as a whole, and nothing temporary remains beside it.
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
