"""Feature dashboards: every number on a card checked against a brute-force computation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mi_crow.hooks import LayerActivationDetector
from mi_crow.language_model import LanguageModel
from mi_crow.mechanistic.dashboards import Dashboard, build_dashboard, load_dashboard, render_html, save_dashboard
from mi_crow.mechanistic.dashboards.build import nearest_latents
from mi_crow.mechanistic.sae import SaeTrainer, TopKSae

LAYER = "transformer_h_1"  # the last block: its width is the unembedding's, so logit effects apply
TEXTS = [
    "the cat sat on the mat and the cat slept",
    "a red dog runs very fast across the park",
    "blue sky over green grass in spring",
    "numbers one two three four five six",
    "she ate an apple and a pear at noon",
    "the river runs past the old mill",
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "In 2024, 3 of 10 models scored 87.5% on the benchmark; see Table 2.",
] * 3


@pytest.fixture(scope="module")
def model(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> LanguageModel:
    return LanguageModel(str(tiny_models["gpt2"]), store=tmp_path_factory.mktemp("store"))


def _codes(lm: LanguageModel, sae: TopKSae, text: str) -> tuple[torch.Tensor, list[int]]:
    """The SAE's codes on every token of one text, run alone: the reference the dashboard must match."""
    detector = LayerActivationDetector(LAYER)
    enc = lm.tokenize([text])
    with lm.hooks.attached(detector), torch.inference_mode():
        lm.model(**enc, use_cache=False)
        assert detector.activations is not None
        codes = sae.encode(detector.activations[0])
    return codes, enc["input_ids"][0].tolist()


def _token(lm: LanguageModel, token_id: int) -> str:
    text = lm.tokenizer.decode([token_id])
    return text if "\ufffd" not in text else lm.tokenizer.convert_ids_to_tokens(token_id)


@pytest.fixture(scope="module")
def sae(model: LanguageModel) -> TopKSae:
    detector = LayerActivationDetector(LAYER)
    enc = model.tokenize(TEXTS)
    with model.hooks.attached(detector), torch.inference_mode():
        model.model(**enc, use_cache=False)
    assert detector.activations is not None
    acts = detector.activations[enc["attention_mask"].bool()].clone()
    hyper = {"epochs": 3, "batch_size": 32, "k": 4, "n_latents": 48}
    trainer = SaeTrainer(model, LAYER, TopKSae, hyper, progress=False)
    return trainer.train(acts)


@pytest.fixture(scope="module")
def dashboard(model: LanguageModel, sae: TopKSae) -> Dashboard:
    return build_dashboard(model, sae, TEXTS, top_k=5, window=3, batch_size=5, max_latents=None, progress=False)


def test_top_examples_are_sorted_and_windows_match_encode(model, sae, dashboard):
    assert dashboard.latents, "no latent fired"
    tok = model.tokenizer
    checked = 0
    for card in dashboard.latents.values():
        values = [e.activation for e in card.top_examples]
        assert values == sorted(values, reverse=True)
        assert 0 < len(card.top_examples) <= 5
        for example in card.top_examples[:2]:
            codes, ids = _codes(model, sae, TEXTS[example.sample])
            lo = example.position - example.center
            want = codes[lo : lo + len(example.acts), card.latent]
            assert torch.allclose(torch.tensor(example.acts), want, atol=1e-4)
            assert example.tokens == [tok.decode([t]) for t in ids[lo : lo + len(example.tokens)]]
            assert example.activation == pytest.approx(float(codes[example.position, card.latent]), abs=1e-4)
            assert len(example.tokens) <= 2 * 3 + 1
            checked += 1
    assert checked >= 4


def test_top_activation_and_density_match_a_full_pass(model, sae, dashboard):
    all_codes = torch.cat([_codes(model, sae, t)[0] for t in TEXTS])
    assert dashboard.n_tokens == all_codes.shape[0]
    assert dashboard.n_texts == len(TEXTS)
    fired = (all_codes > 0).sum(0)
    assert dashboard.n_fired_latents == int((fired > 0).sum())
    assert set(dashboard.latents) == set((fired > 0).nonzero().flatten().tolist())
    for latent, card in dashboard.latents.items():
        assert card.n_fired == int(fired[latent])
        assert card.density == pytest.approx(int(fired[latent]) / all_codes.shape[0])
        assert card.max_activation == pytest.approx(float(all_codes[:, latent].max()), abs=1e-4)
        assert card.top_examples[0].activation == pytest.approx(card.max_activation, abs=1e-4)
        active = all_codes[:, latent][all_codes[:, latent] > 0]
        assert card.mean_activation == pytest.approx(float(active.mean()), rel=1e-3)
    densities = [c.density for c in dashboard.latents.values()]
    assert densities == sorted(densities, reverse=True)  # densest first


def test_quantile_samples_lie_in_their_intervals(dashboard):
    card = max(dashboard.latents.values(), key=lambda c: c.n_fired)
    assert len(card.quantiles) == 5
    assert sum(len(q.examples) for q in card.quantiles) > 0
    previous_hi = 0.0
    for q in card.quantiles:
        assert previous_hi <= q.lo + 1e-6 <= q.hi + 2e-6
        previous_hi = q.hi
        assert len(q.examples) <= 3
        for e in q.examples:
            assert q.lo - 1e-4 <= e.activation <= q.hi + 1e-4
            assert e.activation > 0
    for other in dashboard.latents.values():  # rare latents too: only tokens where they fired are sampled
        assert all(e.activation > 0 for q in other.quantiles for e in q.examples)
        assert sum(len(q.examples) for q in other.quantiles) <= min(other.n_fired, 5 * 3)


def test_promoted_and_suppressed_tokens_follow_the_unembedding(model, sae, dashboard):
    w_u = model.model.get_output_embeddings().weight.detach()
    for latent in list(dashboard.latents)[:5]:
        with torch.no_grad():
            effects = (sae.dictionary[latent] / sae.input_scale) @ w_u.T
        card = dashboard[latent]
        assert card.promoted[0][0] == _token(model, int(effects.argmax()))
        assert card.suppressed[0][0] == _token(model, int(effects.argmin()))
        assert card.promoted[0][1] == pytest.approx(float(effects.max()), rel=1e-4, abs=1e-9)
        assert card.suppressed[0][1] == pytest.approx(float(effects.min()), rel=1e-4, abs=1e-9)
        assert len(card.promoted) == len(card.suppressed) == 10


def test_neighbours_by_decoder_cosine_on_a_constructed_sae():
    sae = TopKSae(4, 5, k=1)
    rows = torch.tensor([[1.0, 0, 0, 0], [0.9, 0.1, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [-1.0, 0, 0, 0.2]])
    sae.net.dictionary._weights.data.copy_(rows)
    sae.eval()
    sae.refresh()
    unit = rows / rows.norm(dim=1, keepdim=True)
    near = nearest_latents(sae, [0, 3], 3)
    assert [i for i, _ in near[0]] == [1, 2, 3]  # 4 points the other way: last, and cut
    assert near[0][0][1] == pytest.approx(float(unit[0] @ unit[1]), abs=1e-5)
    assert near[0][2][1] == pytest.approx(0.0, abs=1e-6)
    assert 3 not in [i for i, _ in near[3]]
    assert all(cos <= 1e-6 for _, cos in near[3])


def test_chosen_latents_caps_and_bounds(model, sae):
    picked = build_dashboard(model, sae, TEXTS[:4], latents=[3, 1, 3], top_k=2, progress=False)
    assert list(picked.latents) == [3, 1]
    capped = build_dashboard(model, sae, TEXTS, max_latents=4, progress=False)
    assert len(capped.latents) == 4
    with pytest.raises(ValueError, match="out of range"):
        build_dashboard(model, sae, TEXTS[:2], latents=[sae.n_latents], progress=False)
    with pytest.raises(ValueError, match="top_k"):
        build_dashboard(model, sae, TEXTS[:2], top_k=0, progress=False)
    few = build_dashboard(model, sae, TEXTS, max_tokens=30, batch_size=2, progress=False)
    assert 30 <= few.n_tokens < 30 + 2 * 40 and few.n_texts < len(TEXTS)


def test_progress_callback_can_cancel(model, sae):
    from mi_crow.mechanistic.dashboards import DashboardCancelled

    seen: list[float] = []

    def stop_after_two(fraction: float, message: str) -> bool:
        seen.append(fraction)
        return len(seen) < 2

    with pytest.raises(DashboardCancelled):
        build_dashboard(model, sae, TEXTS, batch_size=4, progress=False, on_progress=stop_after_two)
    assert len(seen) == 2 and 0 < seen[0] <= seen[1] < 1


def test_saved_in_the_sae_directory_and_loaded_back(model, sae, dashboard):
    path = save_dashboard(dashboard, model.store)
    assert path == model.store.sae_dir(model.model_id, sae.id) / "dashboard.json"
    again = load_dashboard(model.store, sae.id)
    assert again.to_dict() == dashboard.to_dict()
    assert again[next(iter(again.latents))].top_examples[0].text()
    path.unlink()
    with pytest.raises(FileNotFoundError, match="no dashboard"):
        load_dashboard(model.store, sae.id, model.model_id)
    orphan = Dashboard.from_dict({**dashboard.to_dict(), "sae_id": "sae-not-stored"})
    with pytest.raises(FileNotFoundError, match="no SAE"):
        save_dashboard(orphan, model.store)


def test_a_latent_that_never_fires_gets_an_empty_card(model, sae):
    dead = TopKSae(sae.d_in, sae.n_latents, k=sae.k)
    dead.load_state_dict(sae.state_dict())
    linear = dead.net.encoder.final_block[0]
    with torch.no_grad():
        linear.weight[0].zero_()
        linear.bias[0] = -1e3  # pre-activation always very negative: never positive, never fires
    dead.eval()
    dead.layer = LAYER
    board = build_dashboard(model, dead, TEXTS[:6], latents=[0], progress=False)
    card = board[0]
    assert card.n_fired == 0 and card.density == 0 and card.top_examples == [] and card.quantiles == []
    assert card.mean_activation == 0 and card.top_token == ""
    assert 0 not in build_dashboard(model, dead, TEXTS[:6], progress=False).latents
    assert '"latent":0' in render_html(board)
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.fill_(-1e3)  # now no latent ever fires
    silent = build_dashboard(model, dead, TEXTS[:6], progress=False)
    assert silent.latents == {} and silent.n_fired_latents == 0 and silent.n_tokens > 0


def test_page_escapes_everything_it_renders(dashboard):
    hostile = "</script><script>alert(1)</script><img src=x onerror=alert(2)>"
    board = Dashboard.from_dict({**dashboard.to_dict(), "sae_id": hostile, "layer": hostile, "notes": [hostile]})
    first = next(iter(board.latents.values()))
    first.top_examples[0].tokens[0] = hostile
    first.promoted[0] = (hostile, 1.0)
    page = render_html(board, {"steps": [{"step": 1, "mse": 2.0}, {"step": 2, "mse": 1.0, "l0": float("nan")}]})
    assert "<script>alert" not in page and "<img" not in page
    assert page.count("<script") == 2 and page.count("</script>") == 2
    assert "&lt;/script&gt;&lt;script&gt;alert(1)" in page  # header and notes: HTML-escaped
    assert "\\u003c/script\\u003e\\u003cscript\\u003ealert(1)" in page  # data block: JSON-escaped
    assert 'data-metric="mse"' in page and 'data-metric="l0"' not in page  # NaN points are dropped
    assert "no training history recorded" in render_html(board, None)


def test_empty_texts_are_refused(model, sae):
    with pytest.raises(ValueError, match="no text samples"):
        build_dashboard(model, sae, ["", ""], progress=False)
