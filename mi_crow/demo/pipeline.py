"""The main job: the whole research workflow on the bundled tiny model, printed as a short report.

Train (or reuse) a tiny GPT-2 on a corpus with planted concepts, harvest a layer, train a TopK SAE, score
every latent against the planted concepts, collect top texts, name the latents that match, and steer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from mi_crow.demo.corpus import CONCEPTS, concept_token_mask, generate_corpus
from mi_crow.demo.ground_truth import NEUTRAL_PROMPTS, auroc_matrix, mean_active, next_token_labels, token_labels
from mi_crow.demo.tiny_model import TinyModelConfig, ensure_tiny_model
from mi_crow.hooks import LayerActivationDetector
from mi_crow.language_model import LanguageModel
from mi_crow.mechanistic.concepts import Concept
from mi_crow.mechanistic.sae import SaeTrainer, TopKSae
from mi_crow.store import LocalStore

STEERING_PROMPTS = NEUTRAL_PROMPTS * 2  # each sampled twice (one batch, one seed)


@dataclass
class DemoConfig:
    workdir: Path = field(default_factory=lambda: Path(os.environ.get("MI_CROW_HOME", ".mi_crow")))
    layer: str = "transformer_h_2"  # the last block: category-level features live deeper than word identity
    n_train_texts: int = 3000
    n_eval_texts: int = 400
    n_latents: int = 256
    k: int = 16
    epochs: int = 10
    batch_size: int = 256
    # Steering adds this many times each pushed latent's mean code (where it fires) to it: latents differ
    # in scale, so one fixed bias is too weak for some and wrecks the text for others.
    steer_strength: float = 8.0
    model: TinyModelConfig = field(default_factory=TinyModelConfig)


@dataclass
class ConceptResult:
    concept: str
    latent: int  # detects the concept's tokens best
    auroc: float
    top_example: str
    # Pushed when steering: the detecting latent and the one that announces the concept's next token best.
    # Near the output a detecting latent mostly says "this token was an animal", while steering needs
    # "an animal comes next" as well (see ground_truth.ConceptGroundTruth).
    steered_latents: list[int] = field(default_factory=list)
    steered_rate: float = 0.0
    plain_rate: float = 0.0


def steering_biases(
    codes: torch.Tensor, announce_scores: torch.Tensor, detector: int, strength: float
) -> dict[int, float]:
    """The latents to push for a concept, each with the bias to add to it: its detector, and its announcer
    (the latent with the best ``announce_scores``, AUROC against the concept's next token)."""
    announcer = int(announce_scores.argmax())
    return {latent: strength * mean_active(codes, latent) for latent in dict.fromkeys((detector, announcer))}


def print_report(console: Console, results: list[ConceptResult], what: str) -> int:
    """The demo's table; returns how many planted concepts a single latent detects (AUROC >= 0.9)."""
    table = Table(title=f"planted concepts → SAE latents ({what})")
    columns = ("concept", "latent", "AUROC", "top activating context", "pushed", "words/gen plain → steered")
    for col in columns:
        table.add_column(col)
    for r in results:
        rates = f"{r.plain_rate:.2f} → {r.steered_rate:.2f}"
        pushed = "+".join(map(str, r.steered_latents))
        table.add_row(r.concept, str(r.latent), f"{r.auroc:.3f}", r.top_example[:40], pushed, rates)
    console.print(table)
    found = sum(r.auroc >= 0.9 for r in results)
    console.print(f"[bold]{found}/{len(results)} planted concepts found by a single latent (AUROC ≥ 0.9)[/bold]")
    rising = sum(r.steered_rate > r.plain_rate for r in results)
    console.print(f"[bold]{rising}/{len(results)} concepts become more frequent when their latent is pushed[/bold]")
    return found


def concept_rate(texts: list[str], concept: str) -> float:
    """Marker words of ``concept`` per generated text."""
    return sum(len(concept_token_mask(t, concept)) for t in texts) / max(1, len(texts))


def run_demo(cfg: DemoConfig | None = None, console: Console | None = None) -> dict[str, Any]:
    cfg = cfg or DemoConfig()
    console = console or Console()
    console.rule("[bold]mi-crow demo")
    model_dir = ensure_tiny_model(cfg.workdir / "demo-model", cfg.model)
    lm = LanguageModel(str(model_dir), store=LocalStore(cfg.workdir / "store"))
    console.print(
        f"model: {model_dir} ({type(lm.model).__name__}, {sum(p.numel() for p in lm.model.parameters()):,} params)"
    )

    train_texts = [s.text for s in generate_corpus(cfg.n_train_texts, seed=101)]
    run = lm.save_activations(train_texts, [cfg.layer], batch_size=64, shard_size=16_384)
    console.print(
        f"harvested run {run.run_id}: {run.n_tokens:,} tokens of {cfg.layer} "
        f"in {len(run.layer(cfg.layer).shards)} shards"
    )

    hyper = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "n_latents": cfg.n_latents, "k": cfg.k}
    trainer = SaeTrainer(lm, cfg.layer, TopKSae, hyper)
    sae = trainer.train(run)
    final = trainer.epochs[-1]
    console.print(
        f"SAE {sae.id}: explained variance {final['explained_variance']:.3f}, L0 {final['l0']:.1f}, "
        f"dead {final['dead_fraction']:.1%}"
    )

    # Score every latent against every planted concept on held-out text.
    eval_samples = generate_corpus(cfg.n_eval_texts, seed=202)
    eval_texts = [s.text for s in eval_samples]
    det = LayerActivationDetector(cfg.layer)
    codes, per_text = [], token_labels(eval_texts, lm.tokenizer, lm.max_length)
    with lm.hooks.attached(det):
        for i in range(0, len(eval_texts), 64):
            out = lm.forwards(eval_texts[i : i + 64])
            mask = out.attention_mask.bool()
            with torch.inference_mode():
                codes.append(sae.encode(det.activations[mask]))
    all_codes = torch.cat(codes)
    all_labels = torch.cat(per_text)
    if all_labels.shape[0] != all_codes.shape[0]:
        raise RuntimeError("token labels and activations are misaligned")  # tokenization must agree
    scores = auroc_matrix(all_codes, all_labels)

    concepts = lm.load_concepts(sae.id)
    top = concepts.collect_top_texts(eval_texts, k=3, progress=False)
    results: list[ConceptResult] = []
    for c, concept in enumerate(CONCEPTS):
        latent = int(scores[:, c].argmax())
        auroc = float(scores[latent, c])
        example = top[latent][0].marked if top[latent] else ""
        results.append(ConceptResult(concept, latent, auroc, example))
        if auroc >= 0.9:
            concepts.name(latent, Concept(concept, f"planted concept '{concept}'", auroc))
    concepts.save_dictionary()

    # Steering: push each concept's announcing latent on neutral prompts and count its marker words.
    next_scores = auroc_matrix(all_codes, next_token_labels(per_text))  # every concept at once: one pass
    prompts = list(STEERING_PROMPTS)
    plain = lm.generate(prompts, max_new_tokens=16, do_sample=True, seed=0, temperature=0.8).texts
    for c, r in enumerate(results):
        biases = steering_biases(all_codes, next_scores[:, c], r.latent, cfg.steer_strength)
        r.steered_latents = list(biases)
        concepts.reset()
        for latent, bias in biases.items():
            concepts.manipulate(neuron_idx=latent, scale_factor=1.0, bias=bias)
        steered = lm.generate(
            prompts, max_new_tokens=16, do_sample=True, seed=0, temperature=0.8, concept_config=concepts
        )
        r.plain_rate, r.steered_rate = concept_rate(plain, r.concept), concept_rate(steered.texts, r.concept)
    concepts.reset()

    found = print_report(console, results, f"{cfg.layer}, {sae.n_latents} latents, k={cfg.k}")
    console.print(f"artifacts under {lm.store.root}")
    return {
        "run_id": run.run_id,
        "sae_id": sae.id,
        "explained_variance": final["explained_variance"],
        "concepts": [r.__dict__ for r in results],
        "found": found,
    }
