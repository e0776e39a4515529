"""``SaeTrainer``: trains any SAE variant on stored or live activations, with checkpoints and resume."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from mi_crow.language_model.loading import pick_device
from mi_crow.mechanistic.sae.config import TrainingConfig
from mi_crow.mechanistic.sae.data import BatchSource, resolve_source
from mi_crow.mechanistic.sae.fit import SaeFit
from mi_crow.mechanistic.sae.metrics import EpochStats
from mi_crow.mechanistic.sae.modules import SAE_CLASSES, BatchTopKSae, MatryoshkaSae, Sae, TopKSae
from mi_crow.store import LocalStore, atomic_write_bytes, atomic_write_json, new_id

if TYPE_CHECKING:
    from mi_crow.language_model import LanguageModel

CHECKPOINT = "checkpoints/last.pt"
StepCallback = Callable[[dict[str, Any]], bool | None]


class TrainingCancelled(RuntimeError):
    """A step callback asked training to stop."""


class SaeTrainer:
    """Train ``sae_class`` on activations of ``layer``.

    ``hyperparams`` is a ``TrainingConfig`` or a dict of its fields (``{"epochs": 10, "batch_size": 256}``
    is enough: the rest defaults to values that train a useful SAE). ``sae_kwargs`` go to the SAE class.
    ``on_step`` receives a progress dict every ``log_every`` steps and may return False to cancel.
    """

    def __init__(
        self,
        model: LanguageModel | None = None,
        layer: str | None = None,
        sae_class: type[Sae] | str = TopKSae,
        hyperparams: TrainingConfig | dict[str, Any] | None = None,
        *,
        sae_kwargs: dict[str, Any] | None = None,
        store: LocalStore | None = None,
        sae_id: str | None = None,
        model_id: str | None = None,
        progress: bool = True,
        on_step: StepCallback | None = None,
    ) -> None:
        if isinstance(sae_class, str):
            if sae_class not in SAE_CLASSES:
                raise ValueError(f"unknown SAE class {sae_class!r}; choose from {sorted(SAE_CLASSES)}")
            sae_class = SAE_CLASSES[sae_class]
        self.model = model
        self.layer = model.resolve_layer(layer) if (model is not None and layer) else layer
        self.sae_class = sae_class
        self.config = TrainingConfig.from_any(hyperparams)
        self.sae_kwargs = dict(sae_kwargs or {})
        self.store = store or (model.store if model is not None else LocalStore())
        self.sae_id = sae_id or new_id("sae")
        self.model_id = model_id  # names the SAE's model when training without a LanguageModel (e.g. a stream)
        self.progress = progress
        self.on_step = on_step
        self.history: list[dict[str, Any]] = []
        self.epochs: list[dict[str, Any]] = []

    # -- construction --------------------------------------------------------------------------------
    def build_sae(self, d_in: int) -> Sae:
        """A fresh SAE of this trainer's class for inputs of width ``d_in``, seeded by the config."""
        cfg = self.config
        n_latents = cfg.resolved_n_latents(d_in)
        kwargs = dict(self.sae_kwargs)
        if issubclass(self.sae_class, TopKSae | BatchTopKSae):
            kwargs.setdefault("k", cfg.k or max(1, min(32, n_latents // 4)))
        if cfg.l1_coefficient is not None:
            kwargs.setdefault("l1_coefficient", cfg.l1_coefficient)
        if cfg.l0_coefficient is not None:
            kwargs.setdefault("l0_coefficient", cfg.l0_coefficient)
        if cfg.group_sizes is not None and issubclass(self.sae_class, MatryoshkaSae):
            kwargs.setdefault("group_sizes", list(cfg.group_sizes))
        torch.manual_seed(cfg.seed)
        return self.sae_class(d_in, n_latents, **kwargs)

    # -- training ------------------------------------------------------------------------------------
    def train(self, activations: Any, *, resume: bool = False) -> Sae:
        """Train on ``activations`` (run, run id, manifest path, tensor or iterable); save and return the SAE.

        With ``resume``, an SAE this trainer's id already published (a run that finished, then lost track of
        it, e.g. a worker killed before reporting success) is loaded and returned instead of trained again.
        """
        cfg = self.config
        known_id = self.model.model_id if self.model is not None else self.model_id
        if resume and known_id and (done := self.find_published(known_id)) is not None:
            return done  # checked before the source: a live source would open a stream just to peek
        source = resolve_source(activations, self.layer, self.store, cfg.buffer_shards)
        if self.layer is None and getattr(source, "layer", None):
            self.layer = source.layer  # type: ignore[attr-defined]
        model_id = self._model_id(source)
        if resume and not known_id and (done := self.find_published(model_id)) is not None:
            return done
        if self.model is not None and self.layer is not None:
            expected = self.model.hidden_size(self.layer)
            if expected != source.d_model:
                raise ValueError(
                    f"layer {self.layer!r} of the model has width {expected}, but the activations have {source.d_model}"
                )
        device = pick_device(cfg.device)
        sae = self.build_sae(source.d_model).to(device)
        sae.sae_id, sae.layer, sae.model_id = self.sae_id, self.layer, model_id
        sae_dir = self.store.sae_dir(model_id, self.sae_id)
        fit = SaeFit(sae, cfg, device, source.n_tokens)
        total = fit.total
        start_epoch, skip = 0, 0
        if resume and (sae_dir / CHECKPOINT).is_file():
            state = torch.load(io.BytesIO((sae_dir / CHECKPOINT).read_bytes()), map_location=device, weights_only=False)
            fit.load_state_dict(state)
            start_epoch, skip = state["epoch"], state["batch_in_epoch"]
            self.history, self.epochs = state["history"], state["epochs"]
            self.notify({"phase": "resume", "step": fit.step, "epoch": start_epoch, "total_steps": total})

        bar = tqdm(total=total, initial=fit.step, unit="step", desc=f"train {self.sae_id}", disable=not self.progress)
        started = time.time()
        sae.train()
        try:
            for epoch in range(start_epoch, cfg.epochs):
                stats = EpochStats()
                for i, batch in enumerate(source.batches(epoch, cfg.batch_size, cfg.seed, cfg.shuffle)):
                    if i < skip or batch.shape[0] == 0:
                        continue
                    x, out, metrics = fit.train_step(batch, where=f"{i} of epoch {epoch}")
                    stats.add(x, out.x_hat.detach(), **metrics)
                    bar.update(1)
                    self.log_step(fit, epoch, metrics, bar)
                    if cfg.checkpoint_every and fit.step % cfg.checkpoint_every == 0:
                        self.checkpoint(sae_dir, fit, epoch, i + 1)
                skip = 0
                self.end_epoch(fit, epoch, stats)
                if resume or cfg.checkpoint_every:
                    self.checkpoint(sae_dir, fit, epoch + 1, 0)
        finally:
            bar.close()
        return self.finish(fit, source.description, started, sae_dir)

    def log_step(self, fit: SaeFit, epoch: int, metrics: dict[str, float], bar: Any = None) -> None:
        """Record every ``log_every``-th step (and the last) and tell ``on_step``."""
        if fit.step % self.config.log_every == 0 or fit.step == fit.total:
            record = {"step": fit.step, "epoch": epoch, "lr": fit.lr, **metrics}
            self.history.append(record)
            if bar is not None:
                bar.set_postfix(ev=f"{metrics['explained_variance']:.3f}", l0=f"{metrics['l0']:.1f}")
            self.notify({**record, "total_steps": fit.total, "phase": "train"})

    def end_epoch(self, fit: SaeFit, epoch: int, stats: EpochStats) -> None:
        summary = {"epoch": epoch, "step": fit.step, **stats.summary()}
        summary["dead_fraction"] = fit.dead_fraction()
        self.epochs.append(summary)
        self.notify({**summary, "total_steps": fit.total, "phase": "epoch"})

    def finish(self, fit: SaeFit, source: dict[str, Any], started: float, sae_dir: Path) -> Sae:
        """Record how the SAE was trained and publish it to the store."""
        sae, cfg, step = fit.sae, self.config, fit.step
        if step == 0:
            raise ValueError("no activations to train on: the source produced no batches")
        sae.eval()
        sae.training_record = {
            "config": cfg.to_dict(),
            "sae_kwargs": sae.hparams(),
            "source": source,
            "steps": step,
            "epochs": self.epochs,
            "final": self.epochs[-1] if self.epochs else {},
            "seconds": time.time() - started,
            "finished_at": time.time(),
        }
        self._publish(sae, sae_dir)
        return sae

    # -- pieces --------------------------------------------------------------------------------------
    def find_published(self, model_id: str) -> Sae | None:
        """The SAE already published under this id: sae.json is written last and the checkpoint then removed."""
        sae_dir = self.store.sae_dir(model_id, self.sae_id)
        if not (sae_dir / "sae.json").is_file() or (sae_dir / CHECKPOINT).is_file():
            return None
        sae = Sae.load(sae_dir, device=pick_device(self.config.device))
        self.epochs = sae.training_record.get("epochs", [])
        self.notify({"phase": "published", "step": sae.training_record.get("steps", 0), "sae_id": self.sae_id})
        return sae

    def _model_id(self, source: BatchSource) -> str:
        if self.model is not None:
            return self.model.model_id
        model_id = self.model_id or source.description.get("model_id")
        if not model_id:
            raise ValueError("training without a model on a source that names none: pass model_id=")
        return model_id

    def notify(self, record: dict[str, Any]) -> None:
        if self.on_step is not None and self.on_step(record) is False:
            raise TrainingCancelled(f"training of {self.sae_id} was cancelled at step {record.get('step')}")

    def checkpoint(self, sae_dir: Path, fit: SaeFit, epoch: int, batch: int) -> None:
        """Atomically write what resume needs: the fit's state, where in the data it is, the logs so far."""
        buf = io.BytesIO()
        state = {**fit.state_dict(), "epoch": epoch, "batch_in_epoch": batch}
        torch.save({**state, "history": self.history, "epochs": self.epochs}, buf)
        atomic_write_bytes(sae_dir / CHECKPOINT, buf.getvalue())

    def _publish(self, sae: Sae, sae_dir: Path) -> None:
        atomic_write_json(sae_dir / "metrics.json", {"steps": self.history, "epochs": self.epochs})
        sae.save(sae_dir)  # sae.json is written last: an SAE lists only once its weights are complete
        (sae_dir / CHECKPOINT).unlink(missing_ok=True)
