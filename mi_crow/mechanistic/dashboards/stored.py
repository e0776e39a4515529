"""Dashboards of stored SAEs: load the SAE, build, and keep the JSON and the page next to its weights.

One code path for the CLI (``mi-crow dashboard``) and the cluster's dashboard jobs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mi_crow.mechanistic.dashboards.artifact import HTML_FILE, save_dashboard
from mi_crow.mechanistic.dashboards.build import build_dashboard
from mi_crow.mechanistic.dashboards.html import render_html
from mi_crow.mechanistic.dashboards.model import Dashboard
from mi_crow.mechanistic.sae import Sae
from mi_crow.store import LocalStore, atomic_write_bytes, read_json

if TYPE_CHECKING:
    from mi_crow.language_model import LanguageModel


@dataclass
class StoredDashboard:
    dashboard: Dashboard
    json_path: Path  # dashboard.json in the SAE's directory
    html_path: Path  # dashboard.html next to it
    sae_dir: Path


def training_history(sae_dir: Path) -> dict[str, Any] | None:
    """The trainer's metrics.json (step records and epoch summaries), if the SAE has one."""
    path = sae_dir / "metrics.json"
    return read_json(path) if path.is_file() else None


def build_stored_dashboard(
    lm: LanguageModel,
    sae_id: str,
    dataset: Any,
    *,
    store: LocalStore | None = None,
    model_id: str | None = None,
    **build_kwargs: Any,
) -> StoredDashboard:
    """Build the dashboard of SAE ``sae_id`` from ``store`` (default: the model's) and save it there."""
    store = store or lm.store
    sae_dir = store.sae_dir(model_id, sae_id) if model_id else store.find_sae_dir(sae_id)
    sae = Sae.load(sae_dir, device=lm.device)
    dashboard = build_dashboard(lm, sae, dataset, **build_kwargs)
    dashboard.model_id = sae.model_id or model_id or lm.model_id  # where the SAE is stored, not how lm was named
    page = render_html(dashboard, training_history(sae_dir))
    json_path = save_dashboard(dashboard, store, html=page)
    return StoredDashboard(dashboard, json_path, json_path.parent / HTML_FILE, sae_dir)


def copy_page(result: StoredDashboard, out_dir: str | Path) -> Path:
    """Put the page as ``out_dir/index.html`` (it is self-contained: one file is the whole site)."""
    target = Path(out_dir) / "index.html"
    atomic_write_bytes(target, result.html_path.read_bytes())
    return target
