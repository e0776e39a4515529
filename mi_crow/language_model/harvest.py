"""Harvesting activations of several layers in one pass and writing them as a stored run.

Only real tokens are kept (padding is masked out before anything is copied), each with its token id,
position and sample index. The forward stops as soon as every requested layer has been seen, so the
layers after the deepest one (and the LM head, often the most expensive part) never run. A stored harvest
also groups texts of similar length into the same batch (within a bounded window), since every padded
position costs a full forward row: on mixed-length text that cuts the tokens computed by a third or more.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import BatchEncoding

from mi_crow.datasets import as_text_dataset
from mi_crow.hooks import Detector, StopForward
from mi_crow.language_model.errors import HarvestCancelled
from mi_crow.language_model.loading import parse_dtype
from mi_crow.store import ActivationRun, LocalStore

if TYPE_CHECKING:
    from mi_crow.language_model.language_model import LanguageModel

_MAX_PENDING_WRITES = 2  # shards queued for the writer thread before the forward loop waits
_SORT_WINDOW_BATCHES = 16  # batches read ahead and regrouped by length: bounded memory on any dataset


class _Capture(Detector):
    """Keeps one layer's output for the current batch and stops the forward once all layers are in."""

    kind = "harvest_capture"

    def __init__(self, layer: str, seen: set[str], wanted: int, stop_early: bool) -> None:
        super().__init__(layer)
        self.seen, self.wanted, self.stop_early = seen, wanted, stop_early
        self.tensor: torch.Tensor | None = None

    def observe(self, tensor: torch.Tensor, module: nn.Module, context: dict[str, Any]) -> None:
        if self.layer in self.seen:
            return  # a module called twice in one forward: keep its first output
        self.tensor = tensor
        self.seen.add(self.layer or "")
        if self.stop_early and len(self.seen) == self.wanted:
            raise StopForward


class _ShardBuffer:
    """Accumulates one layer's rows and cuts them into shards of exactly ``shard_size`` rows."""

    def __init__(self, shard_size: int) -> None:
        self.shard_size = shard_size
        self.parts: list[tuple[torch.Tensor, ...]] = []
        self.rows = 0

    def add(self, *cols: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        self.parts.append(cols)
        self.rows += cols[0].shape[0]
        full = []
        while self.rows >= self.shard_size:
            full.append(self._take(self.shard_size))
        return full

    def drain(self) -> tuple[torch.Tensor, ...] | None:
        return self._take(self.rows) if self.rows else None

    def _take(self, n: int) -> tuple[torch.Tensor, ...]:
        joined = [torch.cat(c) for c in zip(*self.parts, strict=True)]
        head = tuple(c[:n] for c in joined)
        rest = tuple(c[n:] for c in joined)
        self.rows -= n
        self.parts = [rest] if self.rows else []
        return head


@dataclass
class HarvestBatch:
    """Activations of one batch of texts: only real tokens, one row per token, on the CPU."""

    activations: dict[str, torch.Tensor]  # layer -> (n_tokens, d)
    token_ids: torch.Tensor  # (n_tokens,)
    positions: torch.Tensor  # (n_tokens,) position of each token in its text
    sample_index: torch.Tensor  # (n_tokens,) index of each token's text in dataset order
    n_samples: int  # texts in this batch


def _layer_names(lm: LanguageModel, layers: Sequence[str]) -> list[str]:
    if isinstance(layers, str):
        layers = [layers]
    if not layers:
        raise ValueError("no layers given to harvest")
    return list(dict.fromkeys(lm.resolve_layer(name) for name in layers))


def default_dtype(lm: LanguageModel, dtype: str | torch.dtype | None) -> torch.dtype:
    return parse_dtype(dtype) or (lm.dtype if lm.dtype in (torch.float16, torch.bfloat16) else torch.float32)


@dataclass
class _Encoded:
    """A tokenized batch and the dataset index of each of its texts."""

    enc: BatchEncoding
    sample_ids: torch.Tensor  # (batch,) int64


def _in_order(lm: LanguageModel, batches: Iterable[list[str]], max_length: int | None) -> Iterator[_Encoded]:
    n_samples = 0
    for batch in batches:
        yield _Encoded(lm.tokenize(batch, max_length=max_length), torch.arange(n_samples, n_samples + len(batch)))
        n_samples += len(batch)


def _right_padded(rows: list[list[int]], pad_id: int) -> BatchEncoding:
    """What ``lm.tokenize`` gives for these texts (right padding), from ids already computed."""
    input_ids = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.int64)
    attention_mask = torch.zeros_like(input_ids)
    for r, ids in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        attention_mask[r, : len(ids)] = 1
    return BatchEncoding({"input_ids": input_ids, "attention_mask": attention_mask})


def _by_length(
    lm: LanguageModel, batches: Iterable[list[str]], max_length: int | None, window: int = _SORT_WINDOW_BATCHES
) -> Iterator[_Encoded]:
    """Regroup each window of ``window`` batches so that texts of similar token length share a batch.

    Every text is tokenized once; batch sizes stay as given and each text keeps its dataset index.
    """
    limit = max_length or lm.max_length
    pad_id = lm.tokenizer.pad_token_id or 0  # masked out, so any id will do
    start = 0
    pending: list[list[str]] = []
    for batch in itertools.chain(batches, [None]):
        if batch is not None:
            pending.append(batch)
            if len(pending) < window:
                continue
        if not pending:
            break
        texts = [t for b in pending for t in b]
        ids = lm.tokenizer(texts, truncation=True, max_length=limit)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        at = 0
        for size in (len(b) for b in pending):
            chosen = order[at : at + size]
            at += size
            yield _Encoded(_right_padded([ids[i] for i in chosen], pad_id).to(lm.device), start + torch.tensor(chosen))
        start += len(texts)
        pending = []


def iter_harvest(
    lm: LanguageModel,
    batches: Iterable[list[str]],
    layers: Sequence[str],
    *,
    max_length: int | None = None,
    dtype: torch.dtype = torch.float32,
    stop_early: bool = True,
    sort_by_length: bool = False,
) -> Iterator[HarvestBatch]:
    """Run batches of texts through the model and yield each batch's real-token activations.

    With ``sort_by_length`` the texts of a bounded window of batches are regrouped by token length
    (less padding computed); each row's ``sample_index`` is still its text's dataset index. Without it,
    batches run as given, in order, which the activation stream relies on to resume by row count.
    The capture hooks are attached only while the generator runs and always come off, also when the
    consumer stops early (e.g. a cancelled stream closes the generator).
    """
    names = _layer_names(lm, layers)
    seen: set[str] = set()
    captures = [_Capture(name, seen, len(names), stop_early) for name in names]
    encoded = _by_length(lm, batches, max_length) if sort_by_length else _in_order(lm, batches, max_length)
    with lm.hooks.attached(*captures):
        for item in encoded:
            seen.clear()
            enc = item.enc
            with torch.inference_mode(), contextlib.suppress(StopForward):
                lm.model(**enc, use_cache=False)
            mask = enc["attention_mask"].bool()
            positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)[mask].cpu()
            samples = item.sample_ids[:, None].expand(mask.shape)[mask.cpu()]
            acts: dict[str, torch.Tensor] = {}
            for cap in captures:
                if cap.tensor is None or cap.tensor.shape[:2] != mask.shape:
                    shape = None if cap.tensor is None else tuple(cap.tensor.shape)
                    raise ValueError(f"layer {cap.layer!r} gave {shape}, not (batch, seq, d) activations")
                acts[cap.layer or ""] = cap.tensor[mask].to(device="cpu", dtype=dtype)
                cap.tensor = None
            yield HarvestBatch(acts, enc["input_ids"][mask].cpu(), positions, samples, mask.shape[0])


def stream_activations(
    lm: LanguageModel,
    dataset: Any,
    layers: Sequence[str],
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    sample_limit: int | None = None,
    text_field: str = "text",
    split: str | None = None,
    dtype: str | torch.dtype | None = None,
) -> Iterator[HarvestBatch]:
    """Harvest without storing: for live training and for the inference server's activation stream."""
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")
    texts = as_text_dataset(dataset, text_field=text_field, split=split, sample_limit=sample_limit)
    batches = texts.batches(batch_size)
    yield from iter_harvest(lm, batches, layers, max_length=max_length, dtype=default_dtype(lm, dtype))


def save_activations(
    lm: LanguageModel,
    dataset: Any,
    layers: Sequence[str],
    *,
    batch_size: int = 16,
    shard_size: int = 65_536,
    max_length: int | None = None,
    sample_limit: int | None = None,
    text_field: str = "text",
    split: str | None = None,
    run_id: str | None = None,
    store: LocalStore | None = None,
    dtype: str | torch.dtype | None = None,
    stop_early: bool = True,
    sort_by_length: bool = True,
    progress: bool = True,
    should_continue: Callable[[], bool] | None = None,
) -> ActivationRun:
    """Harvest ``layers`` over ``dataset`` and store them as run ``run_id`` (a fresh id by default).

    ``dataset`` is anything ``mi_crow.datasets.as_text_dataset`` takes (a list of texts, file paths, an HF
    dataset or a spec dict). ``shard_size`` is in tokens per shard per layer. Returns the complete run;
    on failure the run is marked failed (never listed as complete) and the error propagates.
    ``should_continue`` is asked before every batch; once it returns False the harvest stops, the run is
    marked failed and ``HarvestCancelled`` is raised (a server uses it to stop work its caller abandoned).
    ``sort_by_length`` (default on) regroups texts by length within a window of batches: rows are then
    stored in that order, each with its text's dataset index in ``sample_index``.
    """
    if batch_size <= 0 or shard_size <= 0:
        raise ValueError("batch_size and shard_size must be positive")
    names = _layer_names(lm, layers)
    widths = {name: lm.hidden_size(name) for name in names}
    out_dtype = default_dtype(lm, dtype)
    store = store or lm.store
    texts = as_text_dataset(dataset, text_field=text_field, split=split, sample_limit=sample_limit)
    batches = iter(texts.batches(batch_size))
    first = next(batches)  # raises EmptyDatasetError before any run directory exists

    dtype_name = str(out_dtype).removeprefix("torch.")
    writer = store.create_run(
        lm.model_id,
        {name: (widths[name], dtype_name) for name in names},
        run_id=run_id,
        config={
            "layers": names,
            "batch_size": batch_size,
            "shard_size": shard_size,
            "max_length": max_length or lm.max_length,
            "dtype": dtype_name,
            "model_source": lm.source,
        },
        dataset=texts.describe(),
    )
    buffers = {name: _ShardBuffer(shard_size) for name in names}
    pending: list[Future[Any]] = []
    n_samples = n_tokens = 0
    bar = tqdm(total=texts.length_hint(), unit="text", desc=f"harvest {writer.manifest.run_id}", disable=not progress)

    def submit(pool: ThreadPoolExecutor, layer: str, cols: tuple[torch.Tensor, ...]) -> None:
        pending.append(pool.submit(writer.add_shard, layer, *cols))
        while len(pending) > _MAX_PENDING_WRITES:
            pending.pop(0).result()

    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer") as pool:
            harvest = iter_harvest(
                lm,
                itertools.chain([first], batches),
                names,
                max_length=max_length,
                dtype=out_dtype,
                stop_early=stop_early,
                sort_by_length=sort_by_length,
            )
            for hb in harvest:
                if should_continue is not None and not should_continue():
                    raise HarvestCancelled(f"harvest of run {writer.manifest.run_id} cancelled by its caller")
                for name, acts in hb.activations.items():
                    for full in buffers[name].add(acts, hb.token_ids, hb.positions, hb.sample_index):
                        submit(pool, name, full)
                n_samples += hb.n_samples
                n_tokens += hb.token_ids.shape[0]
                bar.update(hb.n_samples)
                bar.set_postfix(tokens=n_tokens)
            for name, buf in buffers.items():
                rest = buf.drain()
                if rest is not None:
                    submit(pool, name, rest)
            for fut in pending:
                fut.result()
    except BaseException as exc:
        writer.fail(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        bar.close()
    writer.finish(n_samples)
    return ActivationRun(writer.run_dir)
