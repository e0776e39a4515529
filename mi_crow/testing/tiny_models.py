"""Tiny randomly initialised checkpoints of several architectures, for tests.

Each builder writes a real HuggingFace directory, so tests exercise the same loading
path (``AutoModelForCausalLM.from_pretrained``) as real checkpoints, offline and fast.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    Qwen2Config,
)

from mi_crow.demo.corpus import generate_corpus
from mi_crow.demo.tiny_model import train_bpe_tokenizer

ARCHITECTURES: tuple[str, ...] = ("gpt2", "llama", "qwen2", "gpt_neox", "mistral")

HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
INTERMEDIATE = 128
MAX_POSITIONS = 128

# Digits, capitals and punctuation beyond the demo corpus, so arbitrary test strings
# still tokenize into a few merged tokens rather than mostly single bytes.
_EXTRA_TEXT: tuple[str, ...] = (
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "In 2024, 3 of 10 models scored 87.5% on the benchmark; see Table 2.",
    "Mechanistic interpretability studies activations, features and circuits.",
    "Sparse autoencoders learn a dictionary of features from hidden states.",
    "Steering adds a direction to the residual stream at a chosen layer.",
    "Q: What is 2 + 2? A: 4. (Obviously.) \"Quotes\" and 'apostrophes' - dashes...",
)


def _default_texts() -> list[str]:
    return [s.text for s in generate_corpus(400, seed=12345)] + list(_EXTRA_TEXT) * 20


def build_tiny_tokenizer(
    out_dir: Path,
    texts: Iterable[str] | None = None,
    vocab_size: int = 512,
    with_pad: bool = True,
) -> Path:
    """Train and save a byte-level BPE tokenizer; returns ``out_dir``.

    ``with_pad=True`` gives distinct ``<pad>``/``<bos>``/``<eos>``/``<unk>`` tokens;
    ``with_pad=False`` gives an eos-only tokenizer (GPT-2 style, no pad token).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_bpe_tokenizer(
        _default_texts() if texts is None else texts,
        vocab_size,
        with_pad=with_pad,
        model_max_length=MAX_POSITIONS,
    )
    _save_tokenizer(tokenizer, out_dir)
    return out_dir


def _save_tokenizer(tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> None:
    tokenizer.save_pretrained(out_dir)
    # Some tokenizer classes (Qwen2Tokenizer, chosen by AutoTokenizer from model_type) default
    # missing special tokens to "<|endoftext|>" and add it to the vocab; explicit nulls keep
    # an eos-only tokenizer eos-only, whatever class loads it.
    path = out_dir / "tokenizer_config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    for key in ("bos_token", "pad_token", "unk_token"):
        data.setdefault(key, None)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _token_ids(tok: PreTrainedTokenizerBase) -> dict[str, int | None]:
    # Without a bos token, sequences start from eos, as in GPT-2.
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    return {"bos_token_id": bos, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}


def _gpt2(vocab: int, ids: dict[str, int | None]) -> PretrainedConfig:
    return GPT2Config(
        vocab_size=vocab, n_positions=MAX_POSITIONS, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
        n_inner=INTERMEDIATE, **ids,
    )  # fmt: skip


def _llama(vocab: int, ids: dict[str, int | None]) -> PretrainedConfig:
    return LlamaConfig(
        vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=MAX_POSITIONS, **ids,
    )  # fmt: skip


def _qwen2(vocab: int, ids: dict[str, int | None]) -> PretrainedConfig:
    return Qwen2Config(
        vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=MAX_POSITIONS, **ids,
    )  # fmt: skip


def _gpt_neox(vocab: int, ids: dict[str, int | None]) -> PretrainedConfig:
    # GPT-NeoX has no grouped-query attention, so it keeps all heads for keys and values.
    return GPTNeoXConfig(
        vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, max_position_embeddings=MAX_POSITIONS, **ids,
    )  # fmt: skip


def _mistral(vocab: int, ids: dict[str, int | None]) -> PretrainedConfig:
    return MistralConfig(
        vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=MAX_POSITIONS,
        sliding_window=None, **ids,
    )  # fmt: skip


_CONFIG_BUILDERS: dict[str, Callable[[int, dict[str, int | None]], PretrainedConfig]] = {
    "gpt2": _gpt2,
    "llama": _llama,
    "qwen2": _qwen2,
    "gpt_neox": _gpt_neox,
    "mistral": _mistral,
}


def tiny_config(arch: str, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """The tiny config used for ``arch``, sized to ``tokenizer``."""
    if arch not in _CONFIG_BUILDERS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")
    return _CONFIG_BUILDERS[arch](len(tokenizer), _token_ids(tokenizer))


def build_tiny_model(arch: str, out_dir: Path, *, seed: int = 0, tokenizer_dir: Path | None = None) -> Path:
    """Save a randomly initialised tiny ``arch`` model plus tokenizer into ``out_dir``.

    The tokenizer comes from ``tokenizer_dir`` when given, else a fresh default one.
    """
    out_dir = Path(out_dir)
    if tokenizer_dir is None:
        build_tiny_tokenizer(out_dir)
        tokenizer_dir = out_dir
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    config = tiny_config(arch, tokenizer)
    # fork_rng keeps the caller's global RNG untouched while making weights seed-deterministic.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out_dir)
    if Path(tokenizer_dir).resolve() != out_dir.resolve():
        _save_tokenizer(tokenizer, out_dir)
    return out_dir
