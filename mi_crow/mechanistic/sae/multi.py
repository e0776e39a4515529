"""``MultiSaeTrainer``: several SAEs trained live from one forward pass per batch of texts.

Each ``SaeSpec`` names a layer, an SAE class, its kwargs and its ``TrainingConfig``: different layers, or
different sizes and variants on one layer. Every batch of texts runs through the model once, harvesting
all the layers still in training and stopping at the deepest of them; each SAE then takes its layer's
tokens through a small shuffle window in batches of its own ``batch_size``. Nothing is written to disk
but the SAEs (saved to the store like ``SaeTrainer``'s, with ``metrics.json`` and epoch checkpoints).
"""

from __future__ import annotations

import io
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from mi_crow.datasets import as_text_dataset
from mi_crow.language_model.harvest import iter_harvest
from mi_crow.language_model.loading import pick_device
from mi_crow.mechanistic.sae.config import TrainingConfig
from mi_crow.mechanistic.sae.fit import SaeFit
from mi_crow.mechanistic.sae.metrics import EpochStats
from mi_crow.mechanistic.sae.modules import Sae, TopKSae
from mi_crow.mechanistic.sae.trainer import CHECKPOINT, SaeTrainer, StepCallback

if TYPE_CHECKING:
    from mi_crow.language_model import LanguageModel
    from mi_crow.store import LocalStore


@dataclass
class SaeSpec:
    """One SAE to train: on ``layer``, of ``sae_class`` with ``sae_kwargs``, under ``hyperparams``."""

    layer: str
    sae_class: type[Sae] | str = TopKSae
    hyperparams: TrainingConfig | dict[str, Any] | None = None
    sae_kwargs: dict[str, Any] = field(default_factory=dict)
    sae_id: str | None = None


class _Window:
    """Collects one SAE's rows, shuffles them within a window of ``window`` rows and cuts batches.

    Tokens of one text are strongly correlated; mixing several forward batches before cutting training
    batches approximates the shuffled order a stored run gives, without storing anything.
    """

    def __init__(self, batch_size: int, window: int, shuffle: bool, seed: int) -> None:
        self.batch_size, self.window, self.shuffle = batch_size, max(window, batch_size), shuffle
        self.gen = torch.Generator().manual_seed(seed)
        self.parts: list[torch.Tensor] = []
        self.rows = 0

    def add(self, rows: torch.Tensor) -> Iterator[torch.Tensor]:
        self.parts.append(rows)
        self.rows += rows.shape[0]
        if self.rows >= self.window:
            yield from self._cut(keep_tail=True)

    def flush(self) -> Iterator[torch.Tensor]:
        """The rest at the end of an epoch, the last batch possibly short (as ``SaeTrainer``'s last is)."""
        if self.rows:
            yield from self._cut(keep_tail=False)

    def _cut(self, keep_tail: bool) -> Iterator[torch.Tensor]:
        block = torch.cat(self.parts)
        if self.shuffle:
            block = block[torch.randperm(block.shape[0], generator=self.gen)]
        full = (block.shape[0] // self.batch_size) * self.batch_size if keep_tail else block.shape[0]
        rest = block[full:]
        self.parts, self.rows = ([rest] if rest.shape[0] else []), rest.shape[0]
        yield from block[:full].split(self.batch_size)


class MultiSaeTrainer:
    """Train every ``SaeSpec`` in ``specs`` with one forward per batch of texts.

    With a LanguageModel, ``train`` runs the forwards itself. Without one (``lm=None`` and ``model_id``),
    ``train_stream`` takes the layers' rows from elsewhere, e.g. a live StreamActivations of every layer.
    ``on_step`` gets the same records as ``SaeTrainer``'s, with ``sae_id`` and ``layer`` added, and may
    return False to cancel all of them. With ``resume=True`` (or ``checkpoint_every`` in a spec's
    config) every SAE is checkpointed at each epoch end, and a resumed run continues from the last
    epoch all of them finished; an SAE already published under its id is returned as it is.
    """

    def __init__(
        self,
        lm: LanguageModel | None,
        specs: list[SaeSpec],
        *,
        store: LocalStore | None = None,
        model_id: str | None = None,
        progress: bool = True,
        on_step: StepCallback | None = None,
    ) -> None:
        if not specs:
            raise ValueError("no SAEs to train: give at least one SaeSpec")
        self.lm = lm
        if lm is not None:
            self.store, self.model_id = store or lm.store, lm.model_id
        elif store is not None and model_id:
            self.store, self.model_id = store, model_id
        else:
            raise ValueError("without a LanguageModel, pass the store and the model_id the SAEs belong to")
        self.progress = progress
        self.on_step = on_step
        self.trainers: list[SaeTrainer] = []
        for spec in specs:
            trainer = SaeTrainer(
                lm,
                spec.layer,
                spec.sae_class,
                spec.hyperparams,
                sae_kwargs=spec.sae_kwargs,
                store=self.store,
                sae_id=spec.sae_id,
                model_id=self.model_id,
                progress=False,
            )
            trainer.on_step = self._forwarder(trainer)
            self.trainers.append(trainer)
        ids = [t.sae_id for t in self.trainers]
        if len(set(ids)) != len(ids):
            raise ValueError(f"SAE ids must differ, got {ids}")
        layers = dict.fromkeys(t.layer for t in self.trainers if t.layer)
        # Widths are probed now (a forward of its own), not inside the training loop; streams tell them.
        self.widths = {layer: lm.hidden_size(layer) for layer in layers} if lm is not None else {}

    def _forwarder(self, trainer: SaeTrainer) -> StepCallback:
        def forward(record: dict[str, Any]) -> bool | None:
            if self.on_step is None:
                return None
            return self.on_step({**record, "layer": trainer.layer, "sae_id": trainer.sae_id})

        return forward

    def train(
        self,
        dataset: Any,
        *,
        batch_size: int = 16,
        max_length: int | None = None,
        sample_limit: int | None = None,
        text_field: str = "text",
        split: str | None = None,
        shuffle_window: int | None = None,
        resume: bool = False,
    ) -> list[Sae]:
        """Train on ``dataset`` (anything ``as_text_dataset`` takes); ``batch_size`` texts per forward.

        ``shuffle_window`` is in tokens per SAE (default: 8 of that SAE's training batches). Returns the
        SAEs in spec order, each saved to the store.
        """
        if self.lm is None:
            raise ValueError("train needs a LanguageModel to run forwards; use train_stream for rows from elsewhere")
        lm = self.lm
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        texts = as_text_dataset(dataset, text_field=text_field, split=split, sample_limit=sample_limit)

        def pieces(layers: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
            # Length-grouped batches compute less padding; the shuffle windows mix texts anyway.
            batches = texts.batches(batch_size)
            for hb in iter_harvest(lm, batches, layers, max_length=max_length, sort_by_length=True):
                yield from ((layer, hb.activations[layer]) for layer in layers)

        source = {"kind": "live", "dataset": texts.describe(), "batch_size": batch_size, "forwards_shared": True}
        n_tokens = self._count_tokens(texts, batch_size, max_length)
        return self._run(pieces, source, n_tokens, shuffle_window, resume)

    def train_stream(
        self,
        pieces: Callable[[list[str]], Iterable[tuple[str, torch.Tensor]]],
        *,
        source: dict[str, Any] | None = None,
        shuffle_window: int | None = None,
        resume: bool = False,
    ) -> list[Sae]:
        """Train on ``(layer, rows)`` pairs from ``pieces(layers)``, called once per epoch with the layers
        still in training; rows are (tokens, width), widths are taken from the first rows of each layer.

        ``source`` describes where the rows came from (stored with each SAE). Returns the SAEs in spec order.
        """
        return self._run(pieces, {"kind": "stream", **(source or {})}, None, shuffle_window, resume)

    def _run(
        self,
        pieces: Callable[[list[str]], Iterable[tuple[str, torch.Tensor]]],
        source: dict[str, Any],
        n_tokens: int | None,
        shuffle_window: int | None,
        resume: bool,
    ) -> list[Sae]:
        published = [t.find_published(self.model_id) if resume else None for t in self.trainers]
        training = [i for i, done in enumerate(published) if done is None]
        if not training:
            return [sae for sae in published if sae is not None]
        first: Iterator[tuple[str, torch.Tensor]] | None = None
        seen: list[tuple[str, torch.Tensor]] = []
        missing = [layer for layer in self._layers(training) if layer not in self.widths]
        if missing:  # a stream: read until every layer has shown its width, then train on what was read too
            first, seen = self._peek_widths(iter(pieces(self._layers(training))), missing)
        prepared = {i: self._prepare(self.trainers[i], n_tokens, resume) for i in training}
        fits = {i: fit for i, (fit, _, _) in prepared.items()}
        starts = {i: start for i, (_, _, start) in prepared.items()}
        total = None if any(f.total is None for f in fits.values()) else sum(f.total for f in fits.values())
        bar = tqdm(total=total, initial=sum(f.step for f in fits.values()), unit="step", desc="train SAEs",
                   disable=not self.progress)  # fmt: skip
        started = time.time()
        try:
            for epoch in range(min(starts.values()), max(self.trainers[i].config.epochs for i in training)):
                active = [i for i in training if starts[i] <= epoch < self.trainers[i].config.epochs]
                if active:
                    if first is not None:  # the stream opened to read widths (other layers' rows are skipped)
                        epoch_pieces, first = itertools.chain(seen, first), None
                    else:
                        epoch_pieces = iter(pieces(self._layers(active)))
                    self._epoch(epoch, active, fits, epoch_pieces, shuffle_window, bar)
                for i in active:
                    if resume or self.trainers[i].config.checkpoint_every:
                        self.trainers[i].checkpoint(prepared[i][1], fits[i], epoch + 1, 0)
        finally:
            bar.close()
            if first is not None and hasattr(first, "close"):
                first.close()  # opened to read widths, then not needed (every SAE had finished its epochs)
        saes: list[Sae] = []
        for i, done in enumerate(published):
            if done is None:
                fit, sae_dir, _ = prepared[i]
                done = self.trainers[i].finish(fit, {**source, "layer": self.trainers[i].layer}, started, sae_dir)
            saes.append(done)
        return saes

    def _layers(self, indices: list[int]) -> list[str]:
        return list(dict.fromkeys(self.trainers[i].layer for i in indices))

    def _peek_widths(
        self, pieces: Iterator[tuple[str, torch.Tensor]], layers: list[str]
    ) -> tuple[Iterator[tuple[str, torch.Tensor]], list[tuple[str, torch.Tensor]]]:
        """Read ``pieces`` until every layer in ``layers`` has shown its width; returns the rest and what was read."""
        seen: list[tuple[str, torch.Tensor]] = []
        for layer, rows in pieces:
            seen.append((layer, rows))
            self.widths.setdefault(layer, int(rows.shape[-1]))
            if all(name in self.widths for name in layers):
                return pieces, seen
        never = sorted(set(layers) - set(self.widths))
        raise ValueError(f"the stream ended before every layer had rows; never seen: {never}")

    def _prepare(self, trainer: SaeTrainer, n_tokens: int | None, resume: bool) -> tuple[SaeFit, Path, int]:
        """Build the SAE and its fit, restored from its checkpoint when resuming; the epoch to start at."""
        cfg = trainer.config
        device = pick_device(cfg.device)
        sae = trainer.build_sae(self.widths[trainer.layer]).to(device)
        sae.sae_id, sae.layer, sae.model_id = trainer.sae_id, trainer.layer, self.model_id
        fit = SaeFit(sae, cfg, device, n_tokens)
        sae_dir = self.store.sae_dir(self.model_id, trainer.sae_id)
        start = 0
        if resume and (sae_dir / CHECKPOINT).is_file():
            blob = io.BytesIO((sae_dir / CHECKPOINT).read_bytes())
            state = torch.load(blob, map_location=device, weights_only=False)
            fit.load_state_dict(state)
            start = state["epoch"]
            trainer.history, trainer.epochs = state["history"], state["epochs"]
            trainer.notify({"phase": "resume", "step": fit.step, "epoch": start, "total_steps": fit.total})
        sae.train()
        return fit, sae_dir, start

    def _epoch(
        self,
        epoch: int,
        active: list[int],
        fits: dict[int, SaeFit],
        pieces: Iterator[tuple[str, torch.Tensor]],
        shuffle_window: int | None,
        bar: Any,
    ) -> None:
        """One pass over the data: every active SAE trained on its layer's rows as they come."""
        windows = {i: self._window(i, epoch, shuffle_window) for i in active}
        stats = {i: EpochStats() for i in active}
        by_layer: dict[str, list[int]] = {}
        for i in active:
            by_layer.setdefault(self.trainers[i].layer, []).append(i)

        def train_on(i: int, batches: Iterator[torch.Tensor]) -> None:
            for batch in batches:
                x, out, metrics = fits[i].train_step(batch, where=f"of epoch {epoch}")
                stats[i].add(x, out.x_hat.detach(), **metrics)
                bar.update(1)
                self.trainers[i].log_step(fits[i], epoch, metrics)

        for layer, rows in pieces:
            for i in by_layer.get(layer, ()):
                train_on(i, windows[i].add(rows))
        for i in active:
            train_on(i, windows[i].flush())
            self.trainers[i].end_epoch(fits[i], epoch, stats[i])

    def _window(self, i: int, epoch: int, shuffle_window: int | None) -> _Window:
        cfg = self.trainers[i].config
        window = shuffle_window or 8 * cfg.batch_size
        return _Window(cfg.batch_size, window, cfg.shuffle, cfg.seed + epoch)

    def _count_tokens(self, texts: Any, batch_size: int, max_length: int | None) -> int:
        """Real tokens per epoch, by tokenizing only (no forward): it sizes the lr schedules and dead-latent window."""
        n = 0
        for batch in texts.batches(batch_size):
            n += int(self.lm.tokenize(batch, max_length=max_length)["attention_mask"].sum())
        if n == 0:
            raise ValueError("the dataset has no tokens to train on")
        return n
