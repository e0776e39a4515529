"""One self-contained static HTML page per dashboard: inline CSS, JS and SVG, no network, no server.

The dashboard travels as JSON inside a ``<script type="application/json">`` block with ``<``, ``>`` and
``&`` written as JSON escapes, so no token string can close the block; the page's script builds every
element with ``textContent``/``setAttribute`` (never ``innerHTML``), so token strings stay text. The
parts rendered here in Python (header, training curves) go through ``html.escape``.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from mi_crow.mechanistic.dashboards.model import Dashboard
from mi_crow.store import atomic_write_bytes

# (key in the trainer's step records, plot title)
CURVES = [
    ("mse", "loss (reconstruction MSE)"),
    ("explained_variance", "explained variance"),
    ("l0", "L0 (active latents per token)"),
    ("dead_fraction", "dead fraction"),
]

_CSS = """
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, sans-serif; color: #222; display: flex; height: 100vh; }
#sidebar { width: 300px; border-right: 1px solid #ccc; display: flex; flex-direction: column; }
#filter { margin: 8px; padding: 6px; font: inherit; }
#latent-list { overflow-y: auto; flex: 1; }
#latent-list a { display: flex; gap: 8px; padding: 3px 8px; color: inherit; text-decoration: none; }
#latent-list a:hover { background: #eef; }
#latent-list a.selected { background: #dde; font-weight: bold; }
#latent-list .id { width: 56px; } #latent-list .density { width: 64px; color: #555; }
#latent-list .tok { white-space: pre; overflow: hidden; text-overflow: ellipsis; font-family: monospace; }
main { flex: 1; overflow-y: auto; padding: 12px 20px; }
h1 { font-size: 18px; margin: 0 0 6px; }
h2 { font-size: 16px; margin: 18px 0 6px; } h3 { font-size: 14px; margin: 10px 0 4px; }
.meta { color: #555; } .note { color: #a40; }
.curves { display: flex; flex-wrap: wrap; gap: 12px; }
.curves figure { margin: 0; } .curves figcaption { font-size: 12px; color: #333; }
.curves svg { background: #fafafa; border: 1px solid #ddd; }
.example { display: flex; gap: 8px; font-family: monospace; margin: 2px 0; }
.example .act { width: 64px; color: #555; text-align: right; flex: none; }
.tokens span { white-space: pre; border-radius: 2px; }
.tokens span.center { outline: 1px solid #c60; }
.stats td { padding: 0 12px 0 0; }
.logits { display: flex; gap: 40px; } .logits ol { margin: 0; padding-left: 20px; font-family: monospace; }
.logits li span { white-space: pre; }
"""

_JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("dashboard-data").textContent);
  var cards = data.latents;
  var byId = new Map(cards.map(function (c) { return [c.latent, c]; }));
  var list = document.getElementById("latent-list");
  var filter = document.getElementById("filter");
  var panel = document.getElementById("panel");

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = String(text); }
    return e;
  }
  function num(v) { return Math.abs(v) >= 100 || v === 0 ? v.toFixed(1) : v.toPrecision(3); }
  function pct(v) { return (100 * v).toPrecision(3) + "%"; }
  function topToken(c) {
    var e = c.top_examples[0];
    return e ? e.tokens[e.center] : "";
  }

  var items = new Map();
  cards.forEach(function (c) {
    var a = el("a");
    a.setAttribute("href", "#latent-" + c.latent);
    a.dataset.latent = String(c.latent);
    a.append(el("span", "id", "#" + c.latent), el("span", "density", pct(c.density)), el("span", "tok", topToken(c)));
    a.dataset.search = (String(c.latent) + " " + topToken(c) + " " +
      c.promoted.map(function (p) { return p[0]; }).join(" ")).toLowerCase();
    items.set(c.latent, a);
    list.append(a);
  });
  filter.addEventListener("input", function () {
    var q = filter.value.trim().toLowerCase();
    items.forEach(function (a) { a.style.display = !q || a.dataset.search.indexOf(q) >= 0 ? "" : "none"; });
  });

  function example(e, max) {
    var row = el("div", "example");
    row.append(el("span", "act", num(e.activation)));
    var toks = el("span", "tokens");
    e.tokens.forEach(function (t, i) {
      var s = el("span", i === e.center ? "center" : "", t);
      var a = max > 0 ? Math.max(0, Math.min(1, e.acts[i] / max)) : 0;
      if (a > 0) { s.style.backgroundColor = "rgba(255, 140, 0, " + a.toFixed(3) + ")"; }
      s.setAttribute("title", num(e.acts[i]));
      toks.append(s);
    });
    row.append(toks);
    return row;
  }

  function tokenList(title, pairs) {
    var box = el("div");
    box.append(el("h3", "", title));
    var ol = el("ol");
    pairs.forEach(function (p) {
      var li = el("li");
      li.append(el("span", "", p[0]), " (" + (p[1] >= 0 ? "+" : "") + num(p[1]) + ")");
      ol.append(li);
    });
    if (!pairs.length) { box.append(el("p", "meta", "none")); } else { box.append(ol); }
    return box;
  }

  function show(c) {
    panel.replaceChildren();
    items.forEach(function (a) { a.classList.remove("selected"); });
    if (!c) { panel.append(el("p", "meta", "no latents fired on the texts seen")); return; }
    items.get(c.latent).classList.add("selected");
    panel.append(el("h2", "", "Latent " + c.latent));
    var stats = el("table", "stats");
    [["density", pct(c.density) + " (" + c.n_fired + " of " + data.n_tokens + " tokens)"],
     ["max activation", num(c.max_activation)], ["mean when active", num(c.mean_activation)]]
      .forEach(function (r) {
        var tr = el("tr");
        tr.append(el("td", "", r[0]), el("td", "", r[1]));
        stats.append(tr);
      });
    panel.append(stats);
    panel.append(el("h3", "", "Top activations"));
    var top = el("div", "top-examples");
    c.top_examples.forEach(function (e) { top.append(example(e, c.max_activation)); });
    panel.append(top);
    panel.append(el("h3", "", "Samples by activation interval"));
    var qs = el("div", "quantiles");
    c.quantiles.slice().reverse().forEach(function (q) {
      qs.append(el("div", "meta", "interval " + num(q.lo) + " – " + num(q.hi)));
      q.examples.forEach(function (e) { qs.append(example(e, c.max_activation)); });
    });
    panel.append(qs);
    var logits = el("div", "logits");
    logits.append(tokenList("Promoted tokens", c.promoted), tokenList("Suppressed tokens", c.suppressed));
    panel.append(logits);
    panel.append(el("h3", "", "Nearest latents (decoder cosine)"));
    var nb = el("ul", "neighbours");
    c.neighbours.forEach(function (n) {
      var li = el("li");
      if (byId.has(n[0])) {
        var a = el("a", "", "#" + n[0]);
        a.setAttribute("href", "#latent-" + n[0]);
        li.append(a);
      } else {
        li.append(el("span", "", "#" + n[0]));
      }
      li.append(" cos " + n[1].toFixed(3));
      nb.append(li);
    });
    panel.append(nb);
  }

  function route() {
    var m = /^#latent-(\d+)$/.exec(location.hash);
    var c = m ? byId.get(Number(m[1])) : undefined;
    show(c || cards[0]);
  }
  window.addEventListener("hashchange", route);
  route();
})();
"""


def _safe_json(obj: Any) -> str:
    # JSON escapes keep the data inert inside <script>: no "</script>" or "<!--" can form.
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _steps(history: Any) -> list[dict[str, Any]]:
    if history is None:
        return []
    if isinstance(history, dict):
        history = history.get("steps") or history.get("history") or []
    return [r for r in history if isinstance(r, dict)]


def _plot(records: list[dict[str, Any]], key: str, title: str, width: int = 320, height: int = 160) -> str:
    points = [
        (float(r["step"]), float(r[key]))
        for r in records
        if isinstance(r.get(key), int | float) and isinstance(r.get("step"), int | float) and math.isfinite(r[key])
    ]
    if not points:
        return ""
    pad = 30
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    sx = lambda x: pad + (x - x0) / (x1 - x0) * (width - 2 * pad)  # noqa: E731
    sy = lambda y: height - pad + (y - y0) / (y1 - y0) * (2 * pad - height)  # noqa: E731
    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    label = html.escape(title)
    return (
        f'<figure data-metric="{html.escape(key)}"><figcaption>{label}</figcaption>'
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{label}">'
        f'<polyline fill="none" stroke="#36c" stroke-width="1.5" points="{line}"/>'
        f'<text x="2" y="{pad - 4}" font-size="10">{y1:.4g}</text>'
        f'<text x="2" y="{height - pad + 12}" font-size="10">{y0:.4g}</text>'
        f'<text x="{pad}" y="{height - 4}" font-size="10">step {x0:.0f}</text>'
        f'<text x="{width - pad}" y="{height - 4}" font-size="10" text-anchor="end">{x1:.0f}</text>'
        "</svg></figure>"
    )


def render_html(dashboard: Dashboard, training_history: Any = None) -> str:
    """The page as a string. ``training_history``: the SAE's metrics.json dict or a list of step records."""
    records = _steps(training_history)
    plots = "".join(_plot(records, key, title) for key, title in CURVES)
    e = html.escape
    title = f"mi-crow dashboard: {dashboard.sae_id or 'SAE'}"
    notes = "".join(f'<p class="note">{e(n)}</p>' for n in dashboard.notes)
    summary = (
        f"model {e(str(dashboard.model_id))} · layer {e(str(dashboard.layer))} · {dashboard.n_latents} latents, "
        f"{dashboard.n_fired_latents} fired on {dashboard.n_tokens} tokens of {dashboard.n_texts} texts · "
        f"{len(dashboard.latents)} shown"
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<nav id="sidebar">
<input id="filter" type="search" placeholder="filter: latent id or token" aria-label="filter latents">
<div id="latent-list"></div>
</nav>
<main>
<h1>{e(title)}</h1>
<p class="meta">{summary}</p>
{notes}
<h2>Training</h2>
<div class="curves" id="curves">{plots or '<p class="meta">no training history recorded</p>'}</div>
<section id="panel"></section>
</main>
<script type="application/json" id="dashboard-data">{_safe_json(dashboard.to_dict())}</script>
<script>{_JS}</script>
</body>
</html>
"""


def write_html(dashboard: Dashboard, training_history: Any, out_path: str | Path) -> Path:
    """Write the page atomically to ``out_path`` (a file, or a directory that gets ``index.html``)."""
    path = Path(out_path)
    if path.is_dir() or path.suffix == "":
        path = path / "index.html"
    atomic_write_bytes(path, render_html(dashboard, training_history).encode())
    return path
