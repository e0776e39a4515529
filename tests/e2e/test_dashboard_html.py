"""The dashboard page in a real headless Chromium (Debian's, driven by Playwright): no errors, works, escapes."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from mi_crow.hooks import LayerActivationDetector
from mi_crow.language_model import LanguageModel
from mi_crow.mechanistic.dashboards import Dashboard, Example, LatentCard, QuantileBin, build_dashboard, write_html
from mi_crow.mechanistic.sae import SaeTrainer, TopKSae
from mi_crow.store import read_json

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency (./dev.sh setup)")
CHROMIUM = os.environ.get("MI_CROW_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM} (./dev.sh setup)")

LAYER = "transformer_h_1"
TEXTS = [
    "the cat sat on the mat and the cat slept",
    "a red dog runs very fast across the park",
    "blue sky over green grass in spring",
    "numbers one two three four five six",
    "Hello world! The quick brown fox jumps over the lazy dog.",
] * 3
HOSTILE = '</script><script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


@dataclass
class Built:
    dashboard: Dashboard
    page: Path
    history: dict
    sae_id: str
    store_root: Path


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


def heading_becomes(page, text: str) -> None:  # type: ignore[no-untyped-def]
    # A click re-renders on the page's hashchange event, which fires after the click returns: wait for it.
    sync_api.expect(page.locator("#panel h2")).to_have_text(text, timeout=5_000)


def _open(browser, path: Path, ready: str = "#panel h2"):  # type: ignore[no-untyped-def]
    """A page on file://path, with every console error and uncaught exception collected."""
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(path.resolve().as_uri())
    page.wait_for_selector(ready)
    return page, errors


@pytest.fixture(scope="module")
def built(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Built:
    lm = LanguageModel(str(tiny_models["gpt2"]), store=tmp_path_factory.mktemp("store"))
    detector = LayerActivationDetector(LAYER)
    enc = lm.tokenize(TEXTS)
    with lm.hooks.attached(detector), torch.inference_mode():
        lm.model(**enc, use_cache=False)
    assert detector.activations is not None
    acts = detector.activations[enc["attention_mask"].bool()].clone()
    hyper = {"epochs": 4, "batch_size": 16, "k": 4, "n_latents": 32, "log_every": 2}
    sae = SaeTrainer(lm, LAYER, TopKSae, hyper, progress=False).train(acts)
    history = read_json(lm.store.sae_dir(lm.model_id, sae.id) / "metrics.json")
    dashboard = build_dashboard(lm, sae, TEXTS, top_k=4, window=4, progress=False)
    path = write_html(dashboard, history, tmp_path_factory.mktemp("html"))
    return Built(dashboard, path, history, sae.id, lm.store.root)


def test_page_shows_the_densest_latent_without_errors(browser, built):
    dashboard, path, history = built.dashboard, built.page, built.history
    assert path.name == "index.html" and "http://" not in path.read_text().replace("http://www.w3.org", "")
    page, errors = _open(browser, path)
    assert page.locator("#latent-list a").count() == len(dashboard.latents)
    densest = max(dashboard.latents.values(), key=lambda c: (c.n_fired, -c.latent))
    other = next(c for c in dashboard.latents.values() if c.latent != densest.latent)
    page.click(f'#latent-list a[data-latent="{other.latent}"]')  # away first, so the next click must re-render
    heading_becomes(page, f"Latent {other.latent}")
    page.click(f'#latent-list a[data-latent="{densest.latent}"]')
    heading_becomes(page, f"Latent {densest.latent}")
    shown = page.locator("#panel .top-examples .example .tokens").first.text_content()
    assert shown == densest.top_examples[0].text()
    assert page.locator("#panel .top-examples .example").count() == len(densest.top_examples)
    # Training curves: one plot per recorded metric, each with as many points as history steps.
    assert history["steps"]
    for metric in ("mse", "explained_variance", "l0", "dead_fraction"):
        points = page.get_attribute(f'#curves figure[data-metric="{metric}"] polyline', "points")
        assert points is not None and len(points.split()) == len(history["steps"])
    # The filter hides every latent but the one typed.
    page.fill("#filter", str(other.latent))
    visible = [a for a in page.locator("#latent-list a").all() if a.is_visible()]
    assert str(other.latent) in [a.get_attribute("data-latent") for a in visible]
    assert len(visible) < len(dashboard.latents)
    # A neighbour link that is on the page navigates to it.
    target = next((n for n, _ in densest.neighbours if n in dashboard.latents), None)
    if target is not None:
        page.click(f'#panel .neighbours a[href="#latent-{target}"]')
        heading_becomes(page, f"Latent {target}")
    assert errors == []
    page.close()


def _hostile_dashboard() -> Dashboard:
    tokens = ["a", HOSTILE, "&amp; <b>"]
    example = Example(sample=0, position=1, activation=2.0, tokens=tokens, acts=[0.0, 2.0, 1.0], center=1)
    card = LatentCard(
        latent=7, density=0.5, n_fired=3, max_activation=2.0, mean_activation=1.5, top_examples=[example],
        quantiles=[QuantileBin(0.5, 2.0, [example])], promoted=[(HOSTILE, 1.0)], suppressed=[("<i>x</i>", -1.0)],
        neighbours=[(3, 0.5)],
    )  # fmt: skip
    return Dashboard(
        sae_id="sae-<script>x</script>", model_id=HOSTILE, layer="<b>layer</b>", n_latents=8, n_tokens=6,
        n_texts=1, n_fired_latents=1, latents={7: card}, notes=[HOSTILE],
    )  # fmt: skip


def test_hostile_token_strings_are_shown_as_text(browser, tmp_path: Path):
    history = {"steps": [{"step": 1, "mse": 1.0}, {"step": 2, "mse": 0.5}]}
    path = write_html(_hostile_dashboard(), history, tmp_path / "page.html")
    raw = path.read_text()
    assert "<script>window.__pwned" not in raw and "<img src=x" not in raw and "<b>layer" not in raw
    assert raw.count("<script") == 2  # the data block and the page's own script, nothing else
    page, errors = _open(browser, path)
    assert page.evaluate("window.__pwned") is None
    assert page.locator("img").count() == 0 and page.locator("#panel b, #panel i").count() == 0
    assert page.locator("#panel .top-examples .tokens").first.text_content() == "a" + HOSTILE + "&amp; <b>"
    assert HOSTILE in page.text_content("main .note")
    assert HOSTILE in page.text_content("#panel .logits")
    assert errors == []
    page.close()


def test_cli_builds_stores_and_writes_the_page(browser, built, tmp_path: Path):
    from typer.testing import CliRunner

    from mi_crow.cli import app
    from mi_crow.mechanistic.dashboards import load_dashboard
    from mi_crow.store import LocalStore

    dashboard, sae_id, store_dir = built.dashboard, built.sae_id, built.store_root
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    model = dashboard.model_id
    out = tmp_path / "site"
    args = ["dashboard", "--model", model, "--sae", sae_id, "--texts", str(texts), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--store", str(store_dir), "--top-k", "3", "--max-latents", "5"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["latents"] == 5 and Path(summary["html"]) == out / "index.html"
    stored = load_dashboard(LocalStore(store_dir), sae_id)
    assert len(stored.latents) == 5 and all(len(c.top_examples) <= 3 for c in stored.latents.values())
    assert stored.n_tokens == dashboard.n_tokens
    page, errors = _open(browser, out / "index.html")
    assert page.locator("#latent-list a").count() == 5
    assert errors == []
    page.close()
    bad = CliRunner().invoke(app, ["dashboard", "--model", model, "--sae", sae_id, "--out", str(out)])
    assert bad.exit_code != 0 and "exactly one of --texts or --dataset" in bad.output


def test_a_dashboard_without_latents_says_so(browser, tmp_path: Path):
    empty = Dashboard(
        sae_id="sae-silent", model_id="m", layer="l", n_latents=8, n_tokens=5, n_texts=1, n_fired_latents=0, latents={}
    )
    page, errors = _open(browser, write_html(empty, None, tmp_path), ready="#panel p")
    assert page.text_content("#panel") == "no latents fired on the texts seen"
    assert "no training history recorded" in page.text_content("#curves")
    assert page.locator("#latent-list a").count() == 0
    assert errors == []
    page.close()
