"""``EvalReport``: every number of an SAE evaluation, stored as ``eval.json`` next to the SAE's weights."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mi_crow.store.atomic import atomic_write_json, read_json

EVAL_FILE = "eval.json"
FORMAT_VERSION = 1
# log10(firing density) bin edges: 1e-7 (one firing in ten million tokens) up to 1 (fires on every token).
DENSITY_LOG10_EDGES: tuple[float, ...] = tuple(-7.0 + 0.5 * i for i in range(15))
DENSE_THRESHOLD = 0.1


def _finite_or_none(value: float | None) -> float | None:
    # JSON has no NaN: an undefined number (e.g. CE recovered when ablation changes nothing) is stored as null.
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass
class EvalReport:
    """Reconstruction numbers always; downstream numbers (CE, KL) only when ``has_downstream``."""

    layer: str
    n_latents: int
    tokens: int  # non-padding tokens in the reconstruction window
    texts: int  # texts the window was taken from (0 when evaluated on stored activations)
    mse: float  # mean squared error per element, in the layer's own units
    explained_variance: float  # 1 - FVU
    fvu: float  # sum of squared errors / total variance around the window's mean
    l0: float  # mean number of active latents per token
    dead_fraction: float  # latents that never fired in the window
    dense_fraction: float  # latents firing on more than dense_threshold of the tokens
    dense_threshold: float = DENSE_THRESHOLD
    latent_density: list[float] = field(default_factory=list)  # per latent: fraction of tokens it fired on
    histogram_edges: list[float] = field(default_factory=lambda: list(DENSITY_LOG10_EDGES))
    histogram_counts: list[int] = field(default_factory=list)  # live latents per log10-density bin
    dead_latents: int = 0  # counted apart from the histogram: sum(histogram_counts) + dead_latents == n_latents
    has_downstream: bool = False
    ce_clean: float | None = None  # next-token cross-entropy (nats/token) of the unmodified model
    ce_sae: float | None = None  # with the layer's output replaced by the SAE reconstruction
    ce_zero: float | None = None  # with the layer's output replaced by zeros
    ce_recovered: float | None = None  # (ce_zero - ce_sae) / (ce_zero - ce_clean); None when undefined
    kl_sae: float | None = None  # mean per-token KL(clean || spliced)
    kl_zero: float | None = None  # mean per-token KL(clean || zero-ablated)
    downstream_tokens: int = 0  # predicted positions the CE/KL numbers average over
    downstream_texts: int = 0
    sae_id: str | None = None
    model_id: str | None = None
    source: str = ""  # what was evaluated on, e.g. "texts" or "run run-a, held-out shards 3-3"
    created_at: float = field(default_factory=time.time)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, float):
                out[key] = _finite_or_none(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalReport:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}  # newer files may carry more keys
        for key in ("mse", "explained_variance", "fvu", "l0", "dead_fraction", "dense_fraction"):
            if kwargs.get(key) is None:
                kwargs[key] = math.nan
        return cls(**kwargs)

    def save(self, sae_dir: str | Path) -> Path:
        """Write ``eval.json`` atomically into the SAE's directory (replacing an earlier evaluation)."""
        path = Path(sae_dir) / EVAL_FILE
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, sae_dir: str | Path) -> EvalReport:
        path = Path(sae_dir) / EVAL_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no evaluation at {path}; run evaluate_sae first")
        return cls.from_dict(read_json(path))

    def summary(self) -> dict[str, float]:
        """The headline numbers as flat floats (for job metrics and logs)."""
        keys = ["mse", "explained_variance", "fvu", "l0", "dead_fraction", "dense_fraction"]
        if self.has_downstream:
            keys += ["ce_clean", "ce_sae", "ce_zero", "ce_recovered", "kl_sae", "kl_zero"]
        return {k: float(v) for k in keys if (v := getattr(self, k)) is not None}
