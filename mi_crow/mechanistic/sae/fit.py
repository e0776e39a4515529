"""``SaeFit``: one SAE's optimizer, schedules, dead-latent counters and training step.

Shared by ``SaeTrainer`` (one SAE, one source) and ``MultiSaeTrainer`` (several SAEs fed from one
forward pass), so both train, log and checkpoint an SAE exactly alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch

from mi_crow.language_model.loading import parse_dtype
from mi_crow.mechanistic.sae.config import TrainingConfig
from mi_crow.mechanistic.sae.metrics import explained_variance
from mi_crow.mechanistic.sae.modules import Sae, SaeOutput


def lr_lambda(cfg: TrainingConfig, warmup: int, total: int | None) -> Callable[[int], float]:
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


class SaeFit:
    """Trains ``sae`` one batch at a time; ``n_tokens`` (per epoch, if known) sizes the schedules."""

    def __init__(self, sae: Sae, cfg: TrainingConfig, device: torch.device, n_tokens: int | None) -> None:
        self.sae, self.cfg, self.device = sae, cfg, device
        steps_per_epoch = math.ceil(n_tokens / cfg.batch_size) if n_tokens else None
        self.total = steps_per_epoch * cfg.epochs if steps_per_epoch else None
        total = self.total
        warmup = cfg.lr_warmup_steps if cfg.lr_warmup_steps is not None else (max(1, total // 20) if total else 0)
        self.sparsity_warmup = cfg.sparsity_warmup_steps or (max(1, total // 20) if total else 1000)
        self.dead_after = min(cfg.dead_tokens_threshold, n_tokens or cfg.dead_tokens_threshold)
        self.k_aux = cfg.resolved_auxk_k(sae.d_in)
        self.opt = torch.optim.Adam(sae.parameters(), lr=cfg.resolved_lr(sae.n_latents), betas=(0.9, 0.999))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg, warmup, total))
        self.since_fired = torch.zeros(sae.n_latents, dtype=torch.long, device=device)
        self.step = 0
        self.initialized = False
        autocast_dtype = parse_dtype(cfg.autocast_dtype)
        self._amp = (lambda: torch.autocast(device.type, dtype=autocast_dtype)) if autocast_dtype else nullcontext

    @property
    def lr(self) -> float:
        return self.sched.get_last_lr()[0]

    def dead_fraction(self) -> float:
        return float((self.since_fired >= self.dead_after).float().mean())

    def train_step(self, batch: torch.Tensor, where: str = "") -> tuple[torch.Tensor, SaeOutput, dict[str, float]]:
        """One optimizer step on ``batch`` (any device/dtype): the batch as trained on, the output, metrics."""
        sae, cfg = self.sae, self.cfg
        x = batch.to(device=self.device, dtype=torch.float32, non_blocking=True)
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"activation batch {where} holds NaN or Inf values")
        if not self.initialized:
            sae.init_from_data(x)
            self.initialized = True
        with self._amp():
            out = sae(x)
            terms = sae.loss(x, out, self.step / self.sparsity_warmup)
            loss = terms["loss"]
            dead = self.since_fired >= self.dead_after
            aux = sae.aux_loss(x, out, dead, self.k_aux) if cfg.auxk_alpha > 0 else None
            if aux is not None:
                loss = loss + cfg.auxk_alpha * aux
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {self.step}; lower lr or check inputs")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.normalize_decoder:
            sae.remove_parallel_decoder_grad()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
        self.opt.step()
        if cfg.normalize_decoder:
            sae.normalize_decoder()
        self.sched.step()
        with torch.no_grad():
            self.since_fired += x.shape[0]
            self.since_fired[out.active_mask()] = 0
            metrics = {
                "mse": float(terms["mse"]),
                "l0": float(out.l0()),
                "explained_variance": explained_variance(x, out.x_hat.detach()),
                "dead_fraction": self.dead_fraction(),
            }
            if "loss" in terms and terms["loss"] is not terms["mse"]:
                metrics["loss"] = float(terms["loss"])
            if aux is not None:
                metrics["auxk"] = float(aux)
        self.step += 1
        return x, out, metrics

    # -- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sae = self.sae
        return {
            "meta": {"sae_class": type(sae).__name__, "d_in": sae.d_in, "n_latents": sae.n_latents},
            "sae": sae.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "since_fired": self.since_fired.cpu(),
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        meta, sae = state["meta"], self.sae
        if (meta["sae_class"], meta["d_in"], meta["n_latents"]) != (type(sae).__name__, sae.d_in, sae.n_latents):
            raise ValueError(f"checkpoint is for {meta}, not a {type(sae).__name__}({sae.d_in}, {sae.n_latents})")
        sae.load_state_dict(state["sae"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.since_fired = state["since_fired"].to(self.device)
        self.step = state["step"]
        self.initialized = True
