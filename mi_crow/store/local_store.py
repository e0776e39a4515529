"""``LocalStore``: the hierarchical artifact store on a local or shared filesystem.

Layout (every path component below the root is a validated name, so nothing escapes the root)::

    activations/<model>/<run_id>/manifest.json, <layer>/<nnnnn>.safetensors
    saes/<model>/<sae_id>/sae.safetensors, sae.json, metrics.json, checkpoints/
    concepts/<model>/<sae_id>/dictionary.json, configs/<name>.json, top_texts.json
"""

from __future__ import annotations

import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mi_crow.store.activation_run import MANIFEST, ActivationRun, ActivationRunWriter
from mi_crow.store.atomic import read_json
from mi_crow.store.manifest import LayerRecord, RunManifest
from mi_crow.store.names import model_key, validate_name

STORE_ENV = "MI_CROW_STORE"


def default_store_root() -> Path:
    env = os.environ.get(STORE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "mi_crow" / "store"


def new_id(prefix: str) -> str:
    """A sortable, unique id: two harvests never share a directory, whatever the dataset."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{prefix}-{stamp}-{uuid.uuid4().hex[:8]}"


class LocalStore:
    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_store_root()
        self.root.mkdir(parents=True, exist_ok=True)
        self.root = self.root.resolve()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    # -- paths ---------------------------------------------------------------------------------------
    def _path(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        resolved = path.resolve()
        # Names are validated already; this also defeats a symlink planted inside the store.
        if resolved != self.root and self.root not in resolved.parents:
            raise PermissionError(f"path {path} resolves outside the store root {self.root}")
        return path

    def _glob(self, kind: str, pattern: str) -> list[Path]:
        """Glob below ``root/kind``, dropping anything a planted symlink would lead outside the root."""
        found = []
        for path in (self.root / kind).glob(pattern):
            resolved = path.resolve()
            if self.root in resolved.parents:
                found.append(path)
        return found

    def model_dir(self, kind: str, model_id: str) -> Path:
        return self._path(kind, model_key(model_id))

    def run_dir(self, model_id: str, run_id: str) -> Path:
        return self._path("activations", model_key(model_id), validate_name(run_id, "run id"))

    def sae_dir(self, model_id: str, sae_id: str) -> Path:
        return self._path("saes", model_key(model_id), validate_name(sae_id, "SAE id"))

    def concepts_dir(self, model_id: str, sae_id: str) -> Path:
        return self._path("concepts", model_key(model_id), validate_name(sae_id, "SAE id"))

    # -- activation runs -----------------------------------------------------------------------------
    def create_run(
        self,
        model_id: str,
        layers: dict[str, tuple[int, str]],
        *,
        run_id: str | None = None,
        config: dict[str, Any] | None = None,
        dataset: dict[str, Any] | None = None,
    ) -> ActivationRunWriter:
        """Start a new run. ``layers`` maps layer name -> (d_model, dtype name)."""
        run_id = run_id or new_id("run")
        run_dir = self.run_dir(model_id, run_id)
        if (run_dir / MANIFEST).exists():
            raise FileExistsError(f"activation run {run_id!r} already exists for model {model_id!r}")
        for layer in layers:
            validate_name(layer, "layer name")
        run_dir.mkdir(parents=True, exist_ok=True)
        manifest = RunManifest(
            run_id=run_id,
            model_id=model_id,
            layers={name: LayerRecord(name=name, d_model=d, dtype=dt) for name, (d, dt) in layers.items()},
            config=dict(config or {}),
            dataset=dict(dataset or {}),
        )
        return ActivationRunWriter(run_dir, manifest)

    def open_run(self, model_id: str, run_id: str, *, require_complete: bool = True) -> ActivationRun:
        return ActivationRun(self.run_dir(model_id, run_id), require_complete=require_complete)

    def find_run(self, run_id: str, *, require_complete: bool = True) -> ActivationRun:
        """Open a run by id alone, whatever model it belongs to."""
        validate_name(run_id, "run id")
        for manifest in self._glob("activations", f"*/{run_id}/{MANIFEST}"):
            return ActivationRun(manifest.parent, require_complete=require_complete)
        raise FileNotFoundError(f"no activation run {run_id!r} in {self.root}")

    def list_runs(self, model_id: str | None = None) -> list[RunManifest]:
        pattern = f"{model_key(model_id)}/*/{MANIFEST}" if model_id else f"*/*/{MANIFEST}"
        runs = [RunManifest.from_dict(read_json(p)) for p in self._glob("activations", pattern)]
        return sorted(runs, key=lambda m: m.created_at)

    def delete_run(self, model_id: str, run_id: str) -> None:
        self._delete(self.run_dir(model_id, run_id), f"activation run {run_id!r}")

    # -- SAEs ----------------------------------------------------------------------------------------
    def list_saes(self, model_id: str | None = None) -> list[dict[str, Any]]:
        pattern = f"{model_key(model_id)}/*/sae.json" if model_id else "*/*/sae.json"
        metas = [read_json(p) for p in self._glob("saes", pattern)]
        return sorted(metas, key=lambda m: m.get("created_at", 0.0))

    def find_sae_dir(self, sae_id: str) -> Path:
        validate_name(sae_id, "SAE id")
        for meta in self._glob("saes", f"*/{sae_id}/sae.json"):
            return meta.parent
        raise FileNotFoundError(f"no SAE {sae_id!r} in {self.root}")

    def delete_sae(self, model_id: str, sae_id: str) -> None:
        self._delete(self.sae_dir(model_id, sae_id), f"SAE {sae_id!r}")
        concepts = self.concepts_dir(model_id, sae_id)
        if concepts.exists():
            self._delete(concepts, f"concepts of SAE {sae_id!r}")

    # -- helpers -------------------------------------------------------------------------------------
    def _delete(self, path: Path, what: str) -> None:
        if not path.exists():
            raise FileNotFoundError(f"{what} does not exist")
        # Rename first so a crash mid-delete never leaves a half-deleted artifact that still lists.
        tomb = path.with_name(f".deleted-{path.name}-{uuid.uuid4().hex[:6]}")
        path.rename(tomb)
        shutil.rmtree(tomb, ignore_errors=True)
