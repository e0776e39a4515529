"""Dashboard jobs on the service side: refuse bad requests before they reach a worker, read stored results."""

from __future__ import annotations

from pathlib import Path

from mi_crow.mechanistic.dashboards.artifact import DASHBOARD_FILE, HTML_FILE
from mi_crow.services.common.convert import dataset_from_spec
from mi_crow.store import LocalStore, read_json, validate_name
from mi_crow.v1 import artifacts_pb2, common_pb2

DASHBOARD_FUNC = "mi_crow.workers.dashboard.run_dashboard_job"
MAX_TOP_K = 100
MAX_LATENTS = 4096


def checked_request(
    req: artifacts_pb2.DashboardRequest, store: LocalStore, dataset_roots: list[Path]
) -> artifacts_pb2.DashboardRequest:
    """The request with model_id filled in from the SAE; ValueError/FileNotFoundError/PermissionError if bad."""
    if not req.sae_id:
        raise ValueError("sae_id is required")
    validate_name(req.sae_id, "SAE id")
    sae_dir = store.find_sae_dir(req.sae_id)  # NOT_FOUND for an unknown SAE
    meta = read_json(sae_dir / "sae.json")
    if not req.HasField("dataset"):
        raise ValueError("dataset is required: the texts to find each latent's activating examples in")
    dataset_from_spec(req.dataset, dataset_roots)  # the same checks the worker will make
    if not 0 <= req.top_k <= MAX_TOP_K:
        raise ValueError(f"top_k must be in 0..{MAX_TOP_K} (0: 10), got {req.top_k}")
    if not 0 <= req.max_latents <= MAX_LATENTS:
        raise ValueError(f"max_latents must be in 0..{MAX_LATENTS} (0: 256), got {req.max_latents}")
    for name in ("max_tokens", "batch_size", "max_length"):
        if getattr(req, name) < 0:
            raise ValueError(f"{name} must not be negative")
    out = artifacts_pb2.DashboardRequest()
    out.CopyFrom(req)
    if not out.model_id:
        if not meta.get("model_id"):
            raise ValueError(f"SAE {req.sae_id!r} names no model: give model_id")
        out.model_id = meta["model_id"]
    return out


def stored_dashboard(store: LocalStore, ref: common_pb2.SaeRef) -> artifacts_pb2.DashboardResponse:
    if not ref.sae_id:
        raise ValueError("sae_id is required")
    validate_name(ref.sae_id, "SAE id")
    sae_dir = store.sae_dir(ref.model_id, ref.sae_id) if ref.model_id else store.find_sae_dir(ref.sae_id)
    if not (sae_dir / "sae.json").is_file():
        raise FileNotFoundError(f"no SAE {ref.sae_id!r} for model {ref.model_id!r}")
    path = sae_dir / DASHBOARD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"SAE {ref.sae_id!r} has no dashboard yet: build one with SubmitDashboard")
    page = sae_dir / HTML_FILE
    meta = read_json(sae_dir / "sae.json")
    return artifacts_pb2.DashboardResponse(
        sae=common_pb2.SaeRef(model_id=meta.get("model_id") or ref.model_id, sae_id=ref.sae_id),
        dashboard_json=path.read_text(encoding="utf-8"),
        html=page.read_text(encoding="utf-8") if page.is_file() else "",
        path=str(path.relative_to(store.root)),
    )
