"""Steering modes on a tiny GPT-2: scale, add and ablate, several SAEs on several layers, side-by-side generation."""

from __future__ import annotations

import math

import pytest
import torch

from mi_crow.hooks import FunctionController, LayerActivationDetector
from mi_crow.language_model import LanguageModel
from mi_crow.mechanistic.concepts import ConceptConfig, SaeSteeringController
from mi_crow.mechanistic.sae import TopKSae
from mi_crow.mechanistic.steering import Steering, decoder_direction, generate_compare

PROMPTS = ["the cat sat on the mat", "blue sky and green grass"]
# Encoding and decoding through an SAE and adding the error back is exact up to fp32 rounding, which stays
# far below this after the remaining blocks and the LM head of the tiny model.
IDENTITY_ATOL = 1e-4


def random_sae(layer: str, seed: int, d_in: int = 64) -> TopKSae:
    torch.manual_seed(seed)
    sae = TopKSae(d_in, 96, k=8)
    with torch.no_grad():
        sae.input_scale.fill_(0.37)  # not 1, so model units and SAE units differ
        sae.b_dec.normal_(0, 0.1)
    sae.layer, sae.sae_id = layer, f"random-{seed}"
    return sae.eval()


@pytest.fixture
def sae() -> TopKSae:
    return random_sae("transformer_h_0", 0)


def layer_output(lm: LanguageModel, layer: str, steering: Steering | None = None) -> torch.Tensor:
    """The layer's output as later layers see it (a detector attached after the steering sees its result)."""
    detector = LayerActivationDetector(layer)
    with (steering or Steering()).applied(lm), lm.hooks.attached(detector):
        lm.forwards(PROMPTS)
    assert detector.activations is not None
    return detector.activations.clone()


def firing_latent(lm: LanguageModel, sae: TopKSae) -> int:
    with torch.inference_mode():
        return int(sae.encode(layer_output(lm, sae.layer)).sum((0, 1)).argmax())


def test_scale_one_is_identity_and_ablate_equals_scale_zero(lm: LanguageModel, sae: TopKSae):
    plain = lm.forwards(PROMPTS).logits
    unit = Steering()
    for latent in range(0, sae.n_latents, 5):
        unit.scale(sae, latent, 1.0)
    with unit.applied(lm):
        assert torch.allclose(lm.forwards(PROMPTS).logits, plain, atol=IDENTITY_ATOL)
    latent = firing_latent(lm, sae)
    with Steering().ablate(sae, latent).applied(lm):
        ablated = lm.forwards(PROMPTS).logits
    with Steering().scale(sae, latent, 0.0).applied(lm):
        zero = lm.forwards(PROMPTS).logits
    assert torch.equal(ablated, zero)
    assert not torch.allclose(ablated, plain, atol=1e-3)  # the latent fires here, so removing it matters
    assert lm.hooks.torch_handle_count() == 0


def test_add_moves_the_layer_output_along_the_decoder_direction(lm: LanguageModel, sae: TopKSae):
    plain = layer_output(lm, "transformer_h_0")
    assert torch.equal(layer_output(lm, "transformer_h_0", Steering().add(sae, 3, 0.0)), plain)
    alpha = 2.5
    moved = layer_output(lm, "transformer_h_0", Steering().add(sae, 3, alpha))
    direction = decoder_direction(sae, 3)
    delta = moved - plain
    assert torch.allclose(delta, (alpha * direction).expand_as(delta), atol=1e-5)  # every position, every prompt
    # In model units: what raising the latent's code by alpha adds through the decoder (input_scale undone).
    with torch.no_grad():
        codes = torch.zeros(2, sae.n_latents)
        codes[1, 3] = alpha
        through_decoder = sae.decode(codes)[1] - sae.decode(codes)[0]
        assert torch.allclose(alpha * direction, through_decoder, atol=1e-5)
        unit = sae.dictionary[3] / sae.dictionary[3].norm()
        assert float(delta[0, 0] @ unit) == pytest.approx(alpha * float(sae.dictionary[3].norm()) / 0.37, rel=1e-4)


def test_two_saes_on_two_layers_and_hooks_come_off_when_generation_raises(lm: LanguageModel, sae: TopKSae):
    second = random_sae("transformer_h_1", 1)
    steering = Steering().add(sae, 0, 4.0).scale(second, firing_latent(lm, second), 5.0)
    plain = {layer: layer_output(lm, layer) for layer in ("transformer_h_0", "transformer_h_1")}
    with steering.applied(lm) as controllers:
        assert [c.layer for c in controllers] == ["transformer_h_0", "transformer_h_1"]
        assert lm.hooks.torch_handle_count() == 2
    steered = {layer: layer_output(lm, layer, steering) for layer in plain}
    assert torch.allclose(steered["transformer_h_0"] - plain["transformer_h_0"],
                          (4.0 * decoder_direction(sae, 0)).expand_as(plain["transformer_h_0"]), atol=1e-5)  # fmt: skip
    # Layer 1 sees the shifted layer 0 and its own edit: far from its plain output.
    assert not torch.allclose(steered["transformer_h_1"], plain["transformer_h_1"], atol=1e-2)

    calls = []

    def explode(t: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 3:  # a few decoding steps in
            raise RuntimeError("boom in the middle of generation")
        return t

    boom = FunctionController("transformer_h_1_mlp", explode)
    with pytest.raises(RuntimeError, match="boom"), steering.applied(lm), lm.hooks.attached(boom):
        lm.generate(PROMPTS, max_new_tokens=6)
    assert len(calls) == 3
    assert lm.hooks.torch_handle_count() == 0 and lm.hooks.hooks() == []


def test_bad_edits_are_refused_with_the_reason(lm: LanguageModel, sae: TopKSae):
    with pytest.raises(ValueError, match=r"latent 96 out of range 0\.\.95"):
        Steering().scale(sae, 96, 2.0)
    with pytest.raises(ValueError, match="latent -1 out of range"):
        Steering().add(sae, -1, 2.0)
    with pytest.raises(ValueError, match="not an integer"):
        Steering().scale(sae, 1.5, 2.0)  # type: ignore[arg-type]
    for bad in (math.nan, math.inf, "x"):
        with pytest.raises(ValueError, match="not a finite number"):
            Steering().scale(sae, 1, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown steering mode 'boost'"):
        Steering().edit(sae, 1, "boost", 2.0)
    with pytest.raises(ValueError, match="already edited"):
        Steering().scale(sae, 1, 2.0).ablate(sae, 1)
    Steering().scale(sae, 1, 2.0).add(sae, 1, 1.0)  # a code edit plus an addition is fine
    with pytest.raises(ValueError, match="already edited on layer 'transformer_h_0'"):
        Steering().scale(sae, 1, 2.0).scale(sae, 1, 3.0, layer="transformer_h_0").controllers(lm)
    mismatch = Steering([(sae, "transformer_h_1", 1, "scale", 2.0)])
    with pytest.raises(ValueError, match="reads layer 'transformer_h_0', not 'transformer_h_1'"):
        mismatch.layers(lm)
    narrow = random_sae("transformer_h_0", 2, d_in=32)
    with pytest.raises(ValueError, match="expects width 32 but layer 'transformer_h_0' has 64"):
        Steering().scale(narrow, 0, 2.0).controllers(lm)
    assert lm.hooks.torch_handle_count() == 0


def test_compare_is_identical_without_edits_and_differs_under_strong_steering(lm: LanguageModel, sae: TopKSae):
    options = {"max_new_tokens": 8, "do_sample": True, "temperature": 1.0}
    same = generate_compare(lm, PROMPTS, Steering(), seed=7, **options)
    assert [r.prompt for r in same] == PROMPTS
    assert all(r.steered_tokens == r.unsteered_tokens and r.steered == r.unsteered for r in same)
    assert all(r.steered_tokens for r in same) and not any(r.changed for r in same)
    strong = generate_compare(lm, PROMPTS, Steering().add(sae, 0, 200.0), seed=7, **options)
    assert [r.unsteered for r in strong] == [r.unsteered for r in same]  # same seed, same unsteered text
    assert any(r.changed for r in strong)
    assert lm.hooks.torch_handle_count() == 0


def test_concept_config_controller_is_a_scale_and_bias_inside_the_sae(lm: LanguageModel, sae: TopKSae):
    latent = firing_latent(lm, sae)
    config = ConceptConfig(sae.n_latents)
    config.set(latent, 0.0)
    with lm.hooks.attached(SaeSteeringController(sae, config)):
        via_config = lm.forwards(PROMPTS).logits
    with Steering().ablate(sae, latent).applied(lm):
        assert torch.equal(lm.forwards(PROMPTS).logits, via_config)
