"""Training hyperparameters, as a dataclass (also accepted as a plain dict, e.g. the README's)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainingConfig:
    epochs: int = 1
    batch_size: int = 4096
    lr: float | None = None  # None: 2e-4 scaled by 1/sqrt(n_latents / 16384), the usual TopK heuristic
    lr_warmup_steps: int | None = None  # None: 5% of all steps
    lr_decay: str = "cosine"  # cosine | linear | constant, after warmup, down to lr * lr_min_ratio
    lr_min_ratio: float = 0.1
    n_latents: int | None = None  # None: expansion_factor * d_in
    expansion_factor: int = 8
    k: int | None = None  # TopK/BatchTopK active latents; None: min(32, n_latents // 4)
    l1_coefficient: float | None = None  # L1Sae (None: the class default)
    l0_coefficient: float | None = None  # JumpReLUSae (None: the class default)
    sparsity_warmup_steps: int | None = None  # penalty ramp for L1/JumpReLU; None: 5% of all steps
    auxk_alpha: float = 1 / 32  # weight of the AuxK loss that revives dead latents (TopK variants)
    auxk_k: int | None = None  # dead latents each token reconstructs its residual with; None: d_in // 2
    group_sizes: list[int] | None = None  # MatryoshkaSae's nested groups; None: doubling groups (1/16 first)
    normalize_decoder: bool = True  # keep decoder rows unit norm after every step (see Sae's decoder norm)
    dead_tokens_threshold: int = 1_000_000  # a latent is dead after this many tokens without firing
    grad_clip: float | None = 1.0
    seed: int = 0
    device: str | None = None  # None: cuda if available
    autocast_dtype: str | None = None  # "bf16" / "fp16" on GPU; None: full precision
    shuffle: bool = True
    buffer_shards: int = 4  # shards mixed per shuffle window when streaming a stored run
    log_every: int = 10  # steps between recorded step metrics
    checkpoint_every: int | None = None  # steps between checkpoints (None: only with resume, at epoch ends)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_any(cls, value: TrainingConfig | dict[str, Any] | None) -> TrainingConfig:
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown hyperparameters {unknown}; valid: {sorted(known - {'extra'})}")
        cfg = cls(**value)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0:
            raise ValueError("epochs and batch_size must be positive")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {self.lr}")
        if self.lr_decay not in ("cosine", "linear", "constant"):
            raise ValueError(f"lr_decay must be cosine, linear or constant, got {self.lr_decay!r}")
        if self.n_latents is not None and self.n_latents <= 0:
            raise ValueError("n_latents must be positive")
        if self.auxk_alpha < 0 or (self.auxk_k is not None and self.auxk_k <= 0):
            raise ValueError("auxk_alpha must be >= 0 and auxk_k positive")
        if self.group_sizes is not None and (not self.group_sizes or any(int(g) <= 0 for g in self.group_sizes)):
            raise ValueError(f"group_sizes must be a non-empty list of positive sizes, got {self.group_sizes}")

    def resolved_auxk_k(self, d_in: int) -> int:
        return self.auxk_k or max(1, d_in // 2)

    def resolved_n_latents(self, d_in: int) -> int:
        return self.n_latents or self.expansion_factor * d_in

    def resolved_lr(self, n_latents: int) -> float:
        return self.lr if self.lr is not None else 2e-4 / math.sqrt(max(n_latents, 1) / 16384)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
