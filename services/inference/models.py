"""``ModelPool``: which models this server may load, the loaded ones, their SAEs, and the device gate."""

from __future__ import annotations

import gc
import re
import threading
from collections.abc import Mapping
from pathlib import Path

import grpc
import torch

from mi_crow.language_model import LanguageModel, alias_table
from mi_crow.language_model.loading import parse_dtype, pick_device
from mi_crow.mechanistic.concepts import Concepts
from mi_crow.mechanistic.sae import Sae
from mi_crow.services.common.errors import ServiceError
from mi_crow.services.inference.gate import DeviceGate, max_queued_from_env
from mi_crow.store import LocalStore

# A hub id names a repository on the hub, never a place on this machine.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def _normalized(source: str) -> str:
    return str(Path(source).resolve()) if _looks_like_path(source) else source


def _looks_like_path(model_id: str) -> bool:
    return (
        model_id.startswith((".", "/", "~")) or "\\" in model_id or model_id.count("/") > 1 or Path(model_id).exists()
    )


class ModelPool:
    """Loaded models by the id they were asked for, guarded by a lock; loading one twice is a no-op.

    The alias table is read once, at start-up: what a server may load is part of its deployment, and a
    changed environment of a running process must not widen it.
    """

    def __init__(
        self,
        store: LocalStore,
        *,
        aliases: Mapping[str, str] | None = None,
        max_queued: int | None = None,
        default_device: str | None = None,
    ) -> None:
        self.store = store
        self.aliases = dict(alias_table() if aliases is None else aliases)
        self._targets = {_normalized(t) for t in self.aliases.values()}
        self.gate = DeviceGate(max_queued_from_env() if max_queued is None else max_queued)
        self.default_device = default_device
        self._models: dict[str, LanguageModel] = {}
        self._saes: dict[tuple[str, str], tuple[Sae, Path]] = {}
        self._lock = threading.Lock()  # guards the two dicts
        self._load_lock = threading.Lock()  # one load at a time, so a model is never loaded twice

    # -- policy --------------------------------------------------------------------------------------
    def _check_path(self, model_id: str) -> None:
        if _looks_like_path(model_id) and _normalized(model_id) not in self._targets:
            raise ServiceError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"model {model_id!r} is a filesystem path that no alias points to; this server loads only its "
                f"aliases ({', '.join(sorted(self.aliases))}; set by MI_CROW_MODEL_ALIASES) and hub ids 'org/name'",
            )

    def source(self, model_id: str) -> str:
        """What ``model_id`` would load, or a refusal: aliases, alias targets and hub ids only."""
        if not model_id:
            raise ValueError("model_id is required")
        if model_id in self.aliases:
            return self.aliases[model_id]
        self._check_path(model_id)
        if _normalized(model_id) in self._targets or (_HUB_ID.fullmatch(model_id) and ".." not in model_id):
            return model_id
        raise ServiceError(
            grpc.StatusCode.NOT_FOUND,
            f"unknown model {model_id!r}: neither an alias ({', '.join(sorted(self.aliases))}) nor a hub id 'org/name'",
        )

    # -- models --------------------------------------------------------------------------------------
    def loaded(self) -> dict[str, LanguageModel]:
        with self._lock:
            return dict(self._models)

    def get(self, model_id: str) -> LanguageModel:
        with self._lock:
            lm = self._models.get(model_id)
        if lm is not None:
            return lm
        self.source(model_id)  # a model it could never load is refused as such, not as "not loaded"
        raise ServiceError(
            grpc.StatusCode.FAILED_PRECONDITION, f"model {model_id!r} is not loaded; call LoadModel first"
        )

    def load(self, model_id: str, *, dtype: str | None = None, device: str | None = None) -> LanguageModel:
        source = self.source(model_id)
        with self._lock:
            lm = self._models.get(model_id)
        if lm is not None:
            self._check_same(lm, dtype, device)
            return lm
        with self._load_lock:
            with self._lock:
                lm = self._models.get(model_id)
            if lm is None:  # nobody loaded it while this call waited for the load lock
                lm = LanguageModel(
                    model_id,
                    store=self.store,
                    device=device or self.default_device,
                    dtype=dtype,
                    aliases={model_id: source},
                )
                with self._lock:
                    self._models[model_id] = lm
                return lm
        self._check_same(lm, dtype, device)
        return lm

    @staticmethod
    def _check_same(lm: LanguageModel, dtype: str | None, device: str | None) -> None:
        wanted_dtype = parse_dtype(dtype)
        if wanted_dtype is not None and wanted_dtype != lm.dtype:
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"model {lm.model_id!r} is already loaded as {lm.dtype}; unload it first to load it as {wanted_dtype}",
            )
        if device:
            wanted = pick_device(device)
            same = wanted.type == lm.device.type and (wanted.index is None or wanted.index == lm.device.index)
            if not same:
                raise ServiceError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"model {lm.model_id!r} is already loaded on {lm.device}; unload it first to move it to {device}",
                )

    def unload(self, model_id: str) -> bool:
        """Drop the model and its SAEs; in-flight requests keep their reference until they finish."""
        with self._lock:
            lm = self._models.pop(model_id, None)
            for key in [k for k in self._saes if k[0] == model_id]:
                del self._saes[key]
        if lm is None:
            return False
        on_cuda = lm.device.type == "cuda"
        del lm
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()
        return True

    # -- SAEs ----------------------------------------------------------------------------------------
    def concepts(self, model_id: str, sae_id: str) -> Concepts:
        """Fresh concepts (no edits; dictionary re-read) over an SAE whose weights are cached per model.

        Call it holding the gate: the first load probes the model's layer shapes.
        """
        lm = self.get(model_id)
        if not sae_id:
            raise ValueError("sae_id is required")
        with self._lock:
            cached = self._saes.get((model_id, sae_id))
        if cached is None:
            loaded = Concepts.load(lm, sae_id)
            cached = (loaded.sae, loaded.sae_dir)
            with self._lock:
                self._saes[(model_id, sae_id)] = cached
        concepts = Concepts(lm, *cached)
        return concepts.reset()  # a saved "default" config steers only when a request names it
