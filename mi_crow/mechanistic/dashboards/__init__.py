"""Feature dashboards: what each SAE latent responds to and does, as JSON and as one static HTML page."""

from mi_crow.mechanistic.dashboards.artifact import DASHBOARD_FILE, HTML_FILE, load_dashboard, save_dashboard
from mi_crow.mechanistic.dashboards.build import DashboardCancelled, build_dashboard
from mi_crow.mechanistic.dashboards.html import render_html, write_html
from mi_crow.mechanistic.dashboards.model import Dashboard, Example, LatentCard, QuantileBin
from mi_crow.mechanistic.dashboards.stored import StoredDashboard, build_stored_dashboard, copy_page

__all__ = [
    "DASHBOARD_FILE",
    "HTML_FILE",
    "Dashboard",
    "DashboardCancelled",
    "Example",
    "LatentCard",
    "QuantileBin",
    "StoredDashboard",
    "build_dashboard",
    "build_stored_dashboard",
    "copy_page",
    "load_dashboard",
    "render_html",
    "save_dashboard",
    "write_html",
]
