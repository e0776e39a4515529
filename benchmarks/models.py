"""The random GPT-2-shaped model the benchmarks share (built locally: nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch


def build_gpt2(model_dir: Path, n_layer: int = 4, n_embd: int = 256) -> Path:
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from mi_crow.testing.tiny_models import build_tiny_tokenizer

    build_tiny_tokenizer(model_dir)
    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    config = GPT2Config(
        n_layer=n_layer, n_embd=n_embd, n_head=4, vocab_size=len(tok), n_positions=128,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(model_dir)
    return model_dir
