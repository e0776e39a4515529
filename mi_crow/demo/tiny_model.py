"""Train a tiny GPT-2 on the planted-concept corpus, on CPU, in a couple of minutes.

The result is an ordinary HuggingFace directory (model, tokenizer, training corpus
and a ``mi_crow_demo.json`` record), so the rest of mi-crow treats it like any
downloaded checkpoint while the demo stays fully offline.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm.auto import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from mi_crow.demo.corpus import generate_corpus, write_corpus

METADATA_FILE = "mi_crow_demo.json"
CORPUS_FILE = "corpus.jsonl"
# Bumped when the directory layout or training recipe changes, so stale dirs are rebuilt.
FORMAT_VERSION = 1

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"


@dataclass
class TinyModelConfig:
    n_layer: int = 3
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 64
    steps: int = 700
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    n_samples: int = 4000
    neutral_fraction: float = 0.2
    seed: int = 0
    vocab_size: int = 1024
    n_eval_samples: int = 200


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    *,
    with_pad: bool = True,
    add_bos: bool = False,
    model_max_length: int | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE and wrap it as a transformers fast tokenizer.

    ``with_pad=False`` mimics GPT-2: a single ``<eos>`` special token and nothing else.
    ``add_bos`` prepends ``<bos>`` to every encoding (requires ``with_pad``).
    """
    if add_bos and not with_pad:
        raise ValueError("add_bos needs a <bos> token, which only the with_pad layout has")
    specials = [PAD, BOS, EOS, UNK] if with_pad else [EOS]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    # Trimmed offsets make a token's span exclude its leading space, so character spans of
    # concept words map onto tokens exactly.
    steps: list[Any] = [processors.ByteLevel(trim_offsets=True)]
    if add_bos:
        bos_id = bpe.token_to_id(BOS)
        steps.append(
            processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])
        )
    bpe.post_processor = processors.Sequence(steps)
    # Passing add_bos_token would make transformers replace the post-processor (dropping
    # offset trimming) on every load, so the template lives only in tokenizer.json.
    special_kwargs: dict[str, str] = (
        {"pad_token": PAD, "bos_token": BOS, "eos_token": EOS, "unk_token": UNK} if with_pad else {"eos_token": EOS}
    )
    extra: dict[str, Any] = {} if model_max_length is None else {"model_max_length": model_max_length}
    return PreTrainedTokenizerFast(tokenizer_object=bpe, **special_kwargs, **extra)


def _encode(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str], max_len: int) -> list[list[int]]:
    eos = tokenizer.eos_token_id
    # One position is kept free for eos, which closes every sample so the model learns endings.
    encoded = tokenizer(list(texts), truncation=True, max_length=max_len - 1)["input_ids"]
    return [[*ids, eos] for ids in encoded]


def _collate(seqs: Sequence[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attention_mask[i, : len(s)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@torch.no_grad()
def _mean_loss(model: GPT2LMHeadModel, seqs: Sequence[list[int]], pad_id: int, batch_size: int) -> float:
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(seqs), batch_size):
        batch = _collate(seqs[start : start + batch_size], pad_id)
        n_targets = int((batch["labels"][:, 1:] != -100).sum())
        total += float(model(**batch).loss) * n_targets
        count += n_targets
    model.train()
    return total / max(count, 1)


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    # Cosine to 10% of peak: the templated corpus rewards a low final learning rate.
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _train(
    model: GPT2LMHeadModel, seqs: list[list[int]], pad_id: int, config: TinyModelConfig, progress: bool
) -> list[float]:
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, config.warmup_steps, config.steps))
    losses: list[float] = []
    model.train()
    bar = tqdm(range(config.steps), desc="training tiny model", disable=not progress)
    for _ in bar:
        idx = torch.randint(len(seqs), (config.batch_size,), generator=gen).tolist()
        loss = model(**_collate([seqs[i] for i in idx], pad_id)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    return losses


def _build(work: Path, config: TinyModelConfig, progress: bool) -> dict[str, Any]:
    started = time.perf_counter()
    samples = generate_corpus(config.n_samples, seed=config.seed, neutral_fraction=config.neutral_fraction)
    # A differently seeded corpus: same templates, mostly unseen combinations.
    eval_samples = generate_corpus(
        config.n_eval_samples, seed=config.seed + 1_000_003, neutral_fraction=config.neutral_fraction
    )
    texts = [s.text for s in samples]
    tokenizer = train_bpe_tokenizer(
        texts, config.vocab_size, with_pad=True, add_bos=True, model_max_length=config.n_positions
    )
    torch.manual_seed(config.seed)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=config.n_positions,
            n_embd=config.n_embd,
            n_layer=config.n_layer,
            n_head=config.n_head,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    pad_id = tokenizer.pad_token_id
    seqs = _encode(tokenizer, texts, config.n_positions)
    eval_seqs = _encode(tokenizer, [s.text for s in eval_samples], config.n_positions)
    initial_eval = _mean_loss(model, eval_seqs, pad_id, 64)
    losses = _train(model, seqs, pad_id, config, progress)
    final_eval = _mean_loss(model, eval_seqs, pad_id, 64)
    tail = losses[-min(50, len(losses)) :] if losses else [float("nan")]

    model.generation_config.pad_token_id = pad_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(work)
    tokenizer.save_pretrained(work)
    write_corpus(samples, work / CORPUS_FILE)
    return {
        "format_version": FORMAT_VERSION,
        "config": asdict(config),
        "initial_loss": losses[0] if losses else float("nan"),
        "final_loss": sum(tail) / len(tail),
        "initial_eval_loss": initial_eval,
        "final_eval_loss": final_eval,
        "n_params": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(time.perf_counter() - started, 2),
        "adds_bos_token": True,
    }


def _install(work: Path, out_dir: Path) -> None:
    # os.replace cannot overwrite a non-empty directory, so an old one is moved aside first;
    # readers see either the old complete directory or the new one, never a half-written one.
    if out_dir.exists():
        aside = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out_dir, aside)
        os.replace(work, out_dir)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(work, out_dir)


def train_tiny_model(out_dir: str | Path, config: TinyModelConfig | None = None, progress: bool = True) -> Path:
    """Train the demo model and atomically write it to ``out_dir``; returns ``out_dir``."""
    config = config or TinyModelConfig()
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        metadata = _build(work, config, progress)
        (work / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        _install(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out_dir


def read_metadata(out_dir: str | Path) -> dict[str, Any] | None:
    """The ``mi_crow_demo.json`` record of a trained directory, or None if absent/unreadable."""
    try:
        return json.loads((Path(out_dir) / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_complete(out_dir: str | Path, config: TinyModelConfig | None = None) -> bool:
    """Whether ``out_dir`` holds a finished model trained with exactly ``config``."""
    out_dir = Path(out_dir)
    meta = read_metadata(out_dir)
    if meta is None or meta.get("format_version") != FORMAT_VERSION:
        return False
    if meta.get("config") != asdict(config or TinyModelConfig()):
        return False
    required = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", CORPUS_FILE)
    return all((out_dir / name).is_file() for name in required)


def ensure_tiny_model(out_dir: str | Path, config: TinyModelConfig | None = None, progress: bool = True) -> Path:
    """Reuse ``out_dir`` if it already holds a model for ``config``; otherwise train it."""
    if is_complete(out_dir, config):
        return Path(out_dir).resolve()
    return train_tiny_model(out_dir, config, progress)
