"""The manifest of an activation run: what was harvested, where each shard is, and its checksum."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

RunStatus = Literal["running", "complete", "failed"]
MANIFEST_VERSION = 1


@dataclass
class ShardRecord:
    file: str  # relative to the run directory
    n_tokens: int
    sha256: str


@dataclass
class LayerRecord:
    name: str
    d_model: int
    dtype: str
    shards: list[ShardRecord] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return sum(s.n_tokens for s in self.shards)


@dataclass
class RunManifest:
    run_id: str
    model_id: str
    layers: dict[str, LayerRecord]
    status: RunStatus = "running"
    n_samples: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    version: int = MANIFEST_VERSION

    @property
    def n_tokens(self) -> int:
        """Tokens harvested per layer (every layer sees the same tokens)."""
        return max((layer.n_tokens for layer in self.layers.values()), default=0)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["n_tokens"] = self.n_tokens
        for name, layer in self.layers.items():
            out["layers"][name]["n_tokens"] = layer.n_tokens
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunManifest:
        layers = {
            name: LayerRecord(
                name=rec["name"],
                d_model=int(rec["d_model"]),
                dtype=rec["dtype"],
                shards=[ShardRecord(s["file"], int(s["n_tokens"]), s["sha256"]) for s in rec["shards"]],
            )
            for name, rec in data["layers"].items()
        }
        return cls(
            run_id=data["run_id"],
            model_id=data["model_id"],
            layers=layers,
            status=data.get("status", "running"),
            n_samples=int(data.get("n_samples", 0)),
            config=data.get("config", {}),
            dataset=data.get("dataset", {}),
            error=data.get("error"),
            created_at=float(data.get("created_at", 0.0)),
            updated_at=float(data.get("updated_at", 0.0)),
            version=int(data.get("version", MANIFEST_VERSION)),
        )
