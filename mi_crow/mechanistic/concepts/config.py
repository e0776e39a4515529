"""A concept config: per-latent scale and bias applied inside the SAE while the model runs."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mi_crow.mechanistic.concepts.errors import ConceptValidationError
from mi_crow.store.atomic import atomic_write_json


@dataclass
class ConceptConfig:
    n_latents: int
    scales: dict[int, float] = field(default_factory=dict)
    biases: dict[int, float] = field(default_factory=dict)

    def set(self, latent: int, scale: float = 1.0, bias: float = 0.0) -> None:
        problems = self._check(latent, scale, bias)
        if problems:
            raise ConceptValidationError("; ".join(problems))
        self.scales[int(latent)] = float(scale)
        if bias:
            self.biases[int(latent)] = float(bias)
        else:
            self.biases.pop(int(latent), None)

    def _check(self, latent: Any, scale: Any, bias: Any) -> list[str]:
        problems = []
        try:
            idx = int(latent)
            if isinstance(latent, float | bool) or str(latent).strip() != str(idx):
                raise ValueError
        except (TypeError, ValueError):
            return [f"latent {latent!r} is not an integer"]
        if not 0 <= idx < self.n_latents:
            problems.append(f"latent {idx} out of range 0..{self.n_latents - 1}")
        for what, value in (("scale", scale), ("bias", bias)):
            try:
                if not math.isfinite(float(value)):
                    raise ValueError
            except (TypeError, ValueError):
                problems.append(f"latent {idx}: {what} {value!r} is not a finite number")
        return problems

    @property
    def is_empty(self) -> bool:
        return not self.scales and not self.biases

    def latents(self) -> list[int]:
        return sorted(set(self.scales) | set(self.biases))

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_latents": self.n_latents,
            "edits": {
                str(i): {"scale": self.scales.get(i, 1.0), "bias": self.biases.get(i, 0.0)} for i in self.latents()
            },
        }

    @classmethod
    def from_edits(cls, edits: Mapping[Any, Any], n_latents: int) -> ConceptConfig:
        """Edits as the seed sent them (``{"0": 1.2}``) or with bias (``{"0": {"scale": 1.2, "bias": 0.1}}``)."""
        cfg = cls(n_latents)
        problems: list[str] = []
        for latent, value in edits.items():
            scale, bias = (
                (value.get("scale", 1.0), value.get("bias", 0.0)) if isinstance(value, Mapping) else (value, 0.0)
            )
            found = cfg._check(latent, scale, bias)
            if found:
                problems.extend(found)
            else:
                cfg.set(int(latent), float(scale), float(bias))
        if problems:
            raise ConceptValidationError(f"{len(problems)} bad edits: " + "; ".join(problems))
        return cfg

    def save(self, path: str | Path) -> Path:
        atomic_write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, n_latents: int) -> ConceptConfig:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls.from_edits(data.get("edits", {}), n_latents)
