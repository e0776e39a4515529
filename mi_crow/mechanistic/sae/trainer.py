"""``SaeTrainer``: trains any SAE variant on stored or live activations, with checkpoints and resume."""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mi_crow.language_model.loading import parse_dtype, pick_device
from mi_crow.mechanistic.sae.config import TrainingConfig
from mi_crow.mechanistic.sae.data import BatchSource, resolve_source
from mi_crow.mechanistic.sae.metrics import EpochStats, explained_variance
from mi_crow.mechanistic.sae.modules import SAE_CLASSES, BatchTopKSae, Sae, SaeOutput, TopKSae
from mi_crow.store import LocalStore, atomic_write_bytes, atomic_write_json, new_id

if TYPE_CHECKING:
    from mi_crow.language_model import LanguageModel

CHECKPOINT = "checkpoints/last.pt"
StepCallback = Callable[[dict[str, Any]], bool | None]


class TrainingCancelled(RuntimeError):
    """A step callback asked training to stop."""


def _lr_lambda(cfg: TrainingConfig, warmup: int, total: int | None) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if total is None or cfg.lr_decay == "constant" or total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        floor = cfg.lr_min_ratio
        if cfg.lr_decay == "linear":
            return 1.0 - (1.0 - floor) * progress
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


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
    def _build(self, d_in: int) -> Sae:
        cfg = self.config
        n_latents = cfg.resolved_n_latents(d_in)
        kwargs = dict(self.sae_kwargs)
        if issubclass(self.sae_class, TopKSae | BatchTopKSae):
            kwargs.setdefault("k", cfg.k or max(1, min(32, n_latents // 4)))
        if cfg.l1_coefficient is not None:
            kwargs.setdefault("l1_coefficient", cfg.l1_coefficient)
        if cfg.l0_coefficient is not None:
            kwargs.setdefault("l0_coefficient", cfg.l0_coefficient)
        torch.manual_seed(cfg.seed)
        return self.sae_class(d_in, n_latents, **kwargs)

    # -- training ------------------------------------------------------------------------------------
    def train(self, activations: Any, *, resume: bool = False) -> Sae:
        """Train on ``activations`` (run, run id, manifest path, tensor or iterable); save and return the SAE."""
        cfg = self.config
        source = resolve_source(activations, self.layer, self.store, cfg.buffer_shards)
        if self.layer is None and getattr(source, "layer", None):
            self.layer = source.layer  # type: ignore[attr-defined]
        model_id = self._model_id(source)
        if self.model is not None and self.layer is not None:
            expected = self.model.hidden_size(self.layer)
            if expected != source.d_model:
                raise ValueError(
                    f"layer {self.layer!r} of the model has width {expected}, but the activations have {source.d_model}"
                )
        device = pick_device(cfg.device)
        sae = self._build(source.d_model).to(device)
        sae.sae_id, sae.layer, sae.model_id = self.sae_id, self.layer, model_id
        sae_dir = self.store.sae_dir(model_id, self.sae_id)

        steps_per_epoch = math.ceil(source.n_tokens / cfg.batch_size) if source.n_tokens else None
        total = steps_per_epoch * cfg.epochs if steps_per_epoch else None
        warmup = cfg.lr_warmup_steps if cfg.lr_warmup_steps is not None else (max(1, total // 20) if total else 0)
        sparsity_warmup = cfg.sparsity_warmup_steps or (max(1, total // 20) if total else 1000)
        dead_after = min(cfg.dead_tokens_threshold, source.n_tokens or cfg.dead_tokens_threshold)
        opt = torch.optim.Adam(sae.parameters(), lr=cfg.resolved_lr(sae.n_latents), betas=(0.9, 0.999))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, warmup, total))
        since_fired = torch.zeros(sae.n_latents, dtype=torch.long, device=device)
        step, start_epoch, skip = 0, 0, 0
        initialized = False
        if resume and (sae_dir / CHECKPOINT).is_file():
            state = torch.load(io.BytesIO((sae_dir / CHECKPOINT).read_bytes()), map_location=device, weights_only=False)
            self._check_compatible(state, sae)
            sae.load_state_dict(state["sae"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            since_fired = state["since_fired"].to(device)
            step, start_epoch, skip = state["step"], state["epoch"], state["batch_in_epoch"]
            self.history, self.epochs = state["history"], state["epochs"]
            initialized = True
            self._notify({"phase": "resume", "step": step, "epoch": start_epoch, "total_steps": total})

        autocast_dtype = parse_dtype(cfg.autocast_dtype)
        amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
        bar = tqdm(total=total, initial=step, unit="step", desc=f"train {self.sae_id}", disable=not self.progress)
        started = time.time()
        sae.train()
        try:
            for epoch in range(start_epoch, cfg.epochs):
                stats = EpochStats()
                for i, batch in enumerate(source.batches(epoch, cfg.batch_size, cfg.seed, cfg.shuffle)):
                    if i < skip or batch.shape[0] == 0:
                        continue
                    x = batch.to(device=device, dtype=torch.float32, non_blocking=True)
                    if not bool(torch.isfinite(x).all()):
                        raise ValueError(f"activation batch {i} of epoch {epoch} holds NaN or Inf values")
                    if not initialized:
                        sae.init_from_data(x)
                        initialized = True
                    with amp:
                        out = sae(x)
                        scale = sae.input_scale
                        recon = ((out.x_hat.float() - x) * scale).pow(2).mean()
                        loss = recon
                        penalty = sae.penalty(out, step / sparsity_warmup)
                        if penalty is not None:
                            loss = loss + penalty
                        dead = since_fired >= dead_after
                        aux = self._auxk(sae, out, x, dead) if cfg.auxk_alpha > 0 else None
                        if aux is not None:
                            loss = loss + cfg.auxk_alpha * aux
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower lr or check inputs")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.grad_clip:
                        torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
                    opt.step()
                    sched.step()
                    with torch.no_grad():
                        since_fired += x.shape[0]
                        since_fired[out.active_mask()] = 0
                        metrics = {
                            "mse": float(recon),
                            "l0": float(out.l0()),
                            "explained_variance": explained_variance(x, out.x_hat.detach()),
                            "dead_fraction": float((since_fired >= dead_after).float().mean()),
                        }
                        if aux is not None:
                            metrics["auxk"] = float(aux)
                    stats.add(x, out.x_hat.detach(), **metrics)
                    step += 1
                    bar.update(1)
                    if step % cfg.log_every == 0 or step == total:
                        record = {"step": step, "epoch": epoch, "lr": sched.get_last_lr()[0], **metrics}
                        self.history.append(record)
                        bar.set_postfix(ev=f"{metrics['explained_variance']:.3f}", l0=f"{metrics['l0']:.1f}")
                        self._notify({**record, "total_steps": total, "phase": "train"})
                    if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                        self._checkpoint(sae_dir, sae, opt, sched, since_fired, step, epoch, i + 1)
                skip = 0
                summary = {"epoch": epoch, "step": step, **stats.summary()}
                summary["dead_fraction"] = float((since_fired >= dead_after).float().mean())
                self.epochs.append(summary)
                self._notify({**summary, "total_steps": total, "phase": "epoch"})
                if resume or cfg.checkpoint_every:
                    self._checkpoint(sae_dir, sae, opt, sched, since_fired, step, epoch + 1, 0)
        finally:
            bar.close()
        if step == 0:
            raise ValueError("no activations to train on: the source produced no batches")
        sae.eval()
        sae.training_record = {
            "config": cfg.to_dict(),
            "sae_kwargs": sae.hparams(),
            "source": source.description,
            "steps": step,
            "epochs": self.epochs,
            "final": self.epochs[-1] if self.epochs else {},
            "seconds": time.time() - started,
            "finished_at": time.time(),
        }
        self._publish(sae, sae_dir)
        return sae

    # -- pieces --------------------------------------------------------------------------------------
    def _model_id(self, source: BatchSource) -> str:
        if self.model is not None:
            return self.model.model_id
        model_id = self.model_id or source.description.get("model_id")
        if not model_id:
            raise ValueError("training without a model on a source that names none: pass model_id=")
        return model_id

    @staticmethod
    def _auxk(sae: Sae, out: SaeOutput, x: torch.Tensor, dead: torch.Tensor) -> torch.Tensor | None:
        """AuxK (Gao et al.): dead latents learn to explain what the live ones miss."""
        n_dead = int(dead.sum())
        if n_dead == 0 or not isinstance(sae, TopKSae | BatchTopKSae):
            return None
        k_aux = min(sae.d_in // 2, n_dead)
        scale = sae.input_scale
        residual = ((x - out.x_hat.float()) * scale).detach()
        pre = out.pre_codes.masked_fill(~dead, float("-inf"))
        values, indices = torch.topk(pre, k_aux, dim=-1, sorted=False)
        recon = F.embedding_bag(indices, sae.dictionary, per_sample_weights=F.relu(values), mode="sum")
        denom = (residual - residual.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-8)
        return (recon - residual).pow(2).sum(-1).mean() / denom

    def _notify(self, record: dict[str, Any]) -> None:
        if self.on_step is not None and self.on_step(record) is False:
            raise TrainingCancelled(f"training of {self.sae_id} was cancelled at step {record.get('step')}")

    @staticmethod
    def _check_compatible(state: dict[str, Any], sae: Sae) -> None:
        meta = state["meta"]
        if (meta["sae_class"], meta["d_in"], meta["n_latents"]) != (type(sae).__name__, sae.d_in, sae.n_latents):
            raise ValueError(f"checkpoint is for {meta}, not a {type(sae).__name__}({sae.d_in}, {sae.n_latents})")

    def _checkpoint(self, sae_dir: Path, sae: Sae, opt: Any, sched: Any, since: Any, step: int, epoch: int, batch: int):
        buf = io.BytesIO()
        torch.save(
            {
                "meta": {"sae_class": type(sae).__name__, "d_in": sae.d_in, "n_latents": sae.n_latents},
                "sae": sae.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "since_fired": since.cpu(),
                "step": step,
                "epoch": epoch,
                "batch_in_epoch": batch,
                "history": self.history,
                "epochs": self.epochs,
            },
            buf,
        )
        atomic_write_bytes(sae_dir / CHECKPOINT, buf.getvalue())

    def _publish(self, sae: Sae, sae_dir: Path) -> None:
        atomic_write_json(sae_dir / "metrics.json", {"steps": self.history, "epochs": self.epochs})
        sae.save(sae_dir)  # sae.json is written last: an SAE lists only once its weights are complete
        (sae_dir / CHECKPOINT).unlink(missing_ok=True)
