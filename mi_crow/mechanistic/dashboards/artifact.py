"""Dashboards in the store: ``dashboard.json`` (and its page, ``dashboard.html``) next to the SAE's weights."""

from __future__ import annotations

import json
from pathlib import Path

from mi_crow.mechanistic.dashboards.model import Dashboard
from mi_crow.store import LocalStore, atomic_write_bytes

DASHBOARD_FILE = "dashboard.json"
HTML_FILE = "dashboard.html"


def dashboard_dir(store: LocalStore, sae_id: str, model_id: str | None = None) -> Path:
    """The SAE's directory: by model and id when the model is known, else found by id alone."""
    return store.sae_dir(model_id, sae_id) if model_id else store.find_sae_dir(sae_id)


def dashboard_bytes(dashboard: Dashboard) -> bytes:
    # Compact: a dashboard of hundreds of latents is mostly numbers and short token strings.
    return json.dumps(dashboard.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()


def save_dashboard(dashboard: Dashboard, store: LocalStore, *, html: str | None = None) -> Path:
    """Write ``dashboard.json`` atomically into the SAE's directory (and the HTML page when given)."""
    if not dashboard.sae_id:
        raise ValueError("the dashboard names no SAE (sae_id is empty): save it with write_html instead")
    directory = dashboard_dir(store, dashboard.sae_id, dashboard.model_id)
    if not (directory / "sae.json").is_file():
        raise FileNotFoundError(f"no SAE {dashboard.sae_id!r} in {store.root} to attach a dashboard to")
    atomic_write_bytes(directory / DASHBOARD_FILE, dashboard_bytes(dashboard))
    if html is not None:
        atomic_write_bytes(directory / HTML_FILE, html.encode())
    return directory / DASHBOARD_FILE


def load_dashboard(store: LocalStore, sae_id: str, model_id: str | None = None) -> Dashboard:
    path = dashboard_dir(store, sae_id, model_id) / DASHBOARD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"SAE {sae_id!r} has no dashboard yet (build one with `mi-crow dashboard`)")
    return Dashboard.from_dict(json.loads(path.read_text(encoding="utf-8")))
