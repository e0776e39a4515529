"""Concept configs: validate edits, save named configs, switch between them, and compare generation with
and without steering.

A concept config gives latents of an SAE a scale and a bias; passed as ``concept_config=`` the SAE is
spliced into its layer (its reconstruction error kept) and only the edited latents change. Offline, on the
bundled tiny GPT-2:

    .venv/bin/python examples/03_concept_steering.py --quick
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mi_crow.demo import CONCEPTS, generate_corpus
from mi_crow.demo.ground_truth import auroc_matrix, token_labels
from mi_crow.demo.tiny_model import TinyModelConfig, ensure_tiny_model
from mi_crow.hooks import LayerActivationDetector
from mi_crow.language_model import LanguageModel
from mi_crow.mechanistic.concepts import ConceptValidationError
from mi_crow.mechanistic.sae import SaeTrainer
from mi_crow.mechanistic.sae.modules import Sae, TopKSae

QUICK_MODEL = TinyModelConfig(steps=150, n_samples=800, n_layer=2, n_embd=64)
PROMPTS = ["the", "yesterday", "in the morning", "they said that", "after lunch", "at the station"]


def marker_words(texts: list[str], concept: str) -> int:
    words = set(CONCEPTS[concept])
    return sum(w.strip(".,").lower() in words for t in texts for w in t.split())


def concept_latents(lm: LanguageModel, sae: Sae, layer: str, texts: list[str]) -> dict[str, tuple[int, float]]:
    """Per planted concept: the latent that best detects its marker tokens, and that latent's token AUROC."""
    detector = LayerActivationDetector(layer)  # captures the layer's output on every forward
    with lm.hooks.attached(detector), torch.inference_mode():
        mask = lm.forwards(texts).attention_mask.bool()
        codes = sae.encode(detector.activations[mask])  # (real tokens, n_latents)
    scores = auroc_matrix(codes, torch.cat(token_labels(texts, lm.tokenizer, lm.max_length)))
    return {c: (int(scores[:, i].argmax()), float(scores[:, i].max())) for i, c in enumerate(CONCEPTS)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(".mi_crow/examples"))
    parser.add_argument("--quick", action="store_true", help="small model and SAE (the default is larger)")
    parser.add_argument("--concept", default="", choices=["", *sorted(CONCEPTS)], help="default: the best found")
    parser.add_argument("--bias", type=float, default=8.0, help="how hard to push the concept's latent")
    args = parser.parse_args()
    config, layer = (QUICK_MODEL, "transformer_h_1") if args.quick else (TinyModelConfig(), "transformer_h_2")

    # An SAE to steer with (see 01_library_quickstart.py for these steps explained).
    model_dir = ensure_tiny_model(args.workdir / ("model-quick" if args.quick else "model"), config)
    lm = LanguageModel(str(model_dir), store=args.workdir / "store")
    run = lm.save_activations([s.text for s in generate_corpus(600, seed=101)], [layer], progress=False)
    hyper = {"epochs": 4, "batch_size": 256, "n_latents": 128, "k": 8}
    sae = SaeTrainer(lm, layer, TopKSae, hyper, progress=False).train(run)
    concepts = lm.load_concepts(sae.id)

    # The concept's latent: the one that detects its marker tokens best (AUROC against the corpus's labels).
    found = concept_latents(lm, sae, layer, [s.text for s in generate_corpus(150, seed=202)])
    concept = args.concept or max(found, key=lambda c: found[c][1])
    latent, auroc = found[concept]
    print(f"SAE {sae.id} on {layer}: latent {latent} stands for {concept!r} (AUROC {auroc:.3f})")

    # 1. Preview: validate and normalize edits without applying them (the seed's concepts/preview).
    print("preview:", concepts.preview({str(latent): {"scale": 1.0, "bias": args.bias}, "0": 1.5}).to_dict())
    try:
        concepts.preview({str(sae.n_latents): 2.0, "1": float("nan")})
    except ConceptValidationError as err:
        print(f"rejected: {err}")  # every bad entry is named

    # 2. Named configs: push the concept, or mute it; "default" is what load_concepts starts from.
    concepts.reset().manipulate(neuron_idx=latent, scale_factor=1.0, bias=args.bias)
    concepts.save_config(f"push-{concept}")
    concepts.reset().manipulate(neuron_idx=latent, scale_factor=0.0)
    concepts.save_config(f"mute-{concept}")
    print("saved configs:", concepts.list_configs())

    # 3. Generation without and with each config (same seed, so only the steering differs).
    gen = {"max_new_tokens": 16, "do_sample": True, "seed": 0, "temperature": 0.8}
    plain = lm.generate(PROMPTS, **gen).texts
    print(f"without steering: {marker_words(plain, concept)} {concept} words; e.g. {plain[0]!r}")
    for name in concepts.list_configs():
        concepts.load_config(name)
        texts = lm.generate(PROMPTS, concept_config=concepts, **gen).texts
        print(f"with {name}: {marker_words(texts, concept)} {concept} words; e.g. {texts[0]!r}")

    # 4. Forward passes: steering changes the logits; with_controllers=False switches every controller off.
    concepts.load_config(f"push-{concept}")
    base = lm.forwards(PROMPTS).logits
    steered = lm.forwards(PROMPTS, concept_config=concepts).logits
    print(f"max logit change under push-{concept}: {float((steered - base).abs().max()):.3f}")
    off = lm.forwards(PROMPTS, with_controllers=False, concept_config=concepts).logits
    print(f"max logit change with with_controllers=False: {float((off - base).abs().max()):.3f}")


if __name__ == "__main__":
    main()
