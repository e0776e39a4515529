"""The library in one process: load a model, harvest activations, train an SAE, read its top texts,
name a concept, steer generation with it.

Runs offline on the bundled tiny GPT-2 (trained here on a corpus with planted concepts on first use, then
reused from --workdir):

    .venv/bin/python examples/01_library_quickstart.py --quick
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
from mi_crow.mechanistic.concepts import Concept
from mi_crow.mechanistic.sae import SaeTrainer
from mi_crow.mechanistic.sae.modules import Sae, TopKSae

# --quick: a 2-layer model and a small SAE, enough to see every step work in well under a minute on a CPU.
QUICK = TinyModelConfig(steps=150, n_samples=800, n_layer=2, n_embd=64)
FULL = TinyModelConfig()


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
    parser.add_argument("--quick", action="store_true", help="small model, corpus and SAE")
    parser.add_argument("--concept", default="", choices=["", *sorted(CONCEPTS)], help="default: the best found")
    args = parser.parse_args()
    quick = args.quick
    layer = "transformer_h_1" if quick else "transformer_h_2"  # the last block of the tiny model

    # 1. A model: any HF causal LM by hub id, alias or directory. Here the bundled tiny GPT-2.
    model_dir = ensure_tiny_model(args.workdir / ("model-quick" if quick else "model"), QUICK if quick else FULL)
    lm = LanguageModel(str(model_dir), store=args.workdir / "store")
    print(f"model {lm.model_id}: {len(lm.layer_names())} layers, e.g. {lm.layer_names()[:4]}")

    # 2. Harvest: activations of one layer over a dataset, stored as safetensors shards (padding excluded).
    train_texts = [s.text for s in generate_corpus(600 if quick else 3000, seed=101)]
    run = lm.save_activations(train_texts, [layer], batch_size=64, progress=False)
    print(f"harvested run {run.run_id}: {run.n_tokens} tokens of {layer}")

    # 3. Train a TopK SAE on the stored run; metrics are recorded per step and per epoch.
    hyper = {"epochs": 4, "batch_size": 256, "n_latents": 128, "k": 8}
    if not quick:
        hyper.update(epochs=10, n_latents=256, k=16)
    trainer = SaeTrainer(lm, layer, TopKSae, hyper, progress=False)
    sae = trainer.train(run)
    final = trainer.epochs[-1]
    print(f"SAE {sae.id}: explained variance {final['explained_variance']:.3f}, L0 {final['l0']:.1f}")

    # 4. Top texts: the contexts where each latent fires hardest (activating token marked «like this»).
    concepts = lm.load_concepts(sae.id)
    eval_texts = [s.text for s in generate_corpus(150, seed=202)]
    top = concepts.collect_top_texts(eval_texts, k=5, progress=False)

    # 5. Name a concept. The demo corpus knows which tokens are marker words of which planted concept, so each
    #    concept's latent is the one that detects its tokens best (AUROC); with real data you would read top texts.
    found = concept_latents(lm, sae, layer, eval_texts)
    concept = args.concept or max(found, key=lambda c: found[c][1])
    latent, auroc = found[concept]
    concepts.name(latent, Concept(concept, f"planted concept '{concept}'", auroc))
    concepts.save_dictionary()
    example = top[latent][0].marked if top[latent] else "(never fired on the eval texts)"
    print(f"latent {latent} named {concept!r} (AUROC {auroc:.3f}); top text: {example}")
    markers = set(CONCEPTS[concept])

    # 6. Steer: add a bias to that latent while generating (the SAE's error term is kept, so only it changes).
    prompts = ["the", "yesterday", "in the morning", "they said that", "after lunch", "we saw the"]
    gen = {"max_new_tokens": 12, "do_sample": True, "seed": 0, "temperature": 0.8}
    plain = lm.generate(prompts, **gen).texts
    concepts.manipulate(neuron_idx=latent, scale_factor=1.0, bias=8.0)
    steered = lm.generate(prompts, concept_config=concepts, **gen).texts
    for prompt, before, after in zip(prompts, plain, steered, strict=True):
        print(f"plain:   {prompt!r} -> {before!r}")
        print(f"steered: {prompt!r} -> {after!r}")

    def count(texts: list[str]) -> int:
        return sum(word.strip(".,").lower() in markers for t in texts for word in t.split())

    print(f"{concept} words in the continuations: plain {count(plain)}, steered {count(steered)}")


if __name__ == "__main__":
    main()
