"""Planted-concept ground truth: does an SAE trained on the demo corpus find and steer the planted concepts?

Trains (or reuses) the demo's tiny GPT-2, harvests its last block, trains the demo's TopK SAE, then prints,
per planted concept, the best latent's AUROC on held-out text (recovered: AUROC >= 0.9), the latent that best
announces the concept as the next token, and the steering efficacy of both: the concept's marker-word
frequency in generations steered by the latent ("add": 4x its mean active code at every position; "scale":
its code times 8) against unsteered ones from the same prompts and seed. When
``benchmarks/ground_truth_synthetic.py`` is present its synthetic-dictionary table (SAEs against a known
dictionary) is printed too.

    .venv/bin/python -m benchmarks.ground_truth [--quick] [--threads N] [--workdir DIR]

The tables are also written to ``benchmarks/out/ground_truth.md``. Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from mi_crow.demo.corpus import generate_corpus
from mi_crow.demo.ground_truth import (
    RECOVERED_AUROC,
    ConceptGroundTruth,
    SteeringProbe,
    evaluate_ground_truth,
    recovered_fraction,
)
from mi_crow.demo.pipeline import DemoConfig
from mi_crow.demo.tiny_model import ensure_tiny_model
from mi_crow.language_model import LanguageModel
from mi_crow.mechanistic.sae import Sae, SaeTrainer, TopKSae
from mi_crow.store import LocalStore

OUT_DIR = Path(__file__).parent / "out"


def demo_config(quick: bool, workdir: Path) -> DemoConfig:
    """The demo pipeline's configuration; quick trims the tiny model's steps, the texts and the SAE epochs."""
    cfg = DemoConfig(workdir=workdir)
    if quick:
        cfg = replace(cfg, n_train_texts=1500, n_eval_texts=200, epochs=6, model=replace(cfg.model, steps=400))
    return cfg


def train_demo_sae(cfg: DemoConfig, log: Any = print) -> tuple[LanguageModel, Sae, dict[str, float]]:
    """The demo pipeline's first steps: tiny model, harvest of ``cfg.layer``, TopK SAE."""
    started = time.perf_counter()
    model_dir = ensure_tiny_model(cfg.workdir / "demo-model", cfg.model, progress=False)
    log(f"tiny model ready in {time.perf_counter() - started:.0f}s ({model_dir})")
    lm = LanguageModel(str(model_dir), store=LocalStore(cfg.workdir / "store"))
    texts = [s.text for s in generate_corpus(cfg.n_train_texts, seed=101)]
    run = lm.save_activations(texts, [cfg.layer], batch_size=64, shard_size=16_384, progress=False)
    hyper = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "n_latents": cfg.n_latents, "k": cfg.k}
    trainer = SaeTrainer(lm, cfg.layer, TopKSae, hyper, progress=False)
    sae = trainer.train(run)
    final = trainer.epochs[-1]
    log(f"SAE {sae.id} on {run.n_tokens:,} tokens: EV {final['explained_variance']:.3f}, L0 {final['l0']:.1f}")
    return lm, sae, {k: float(v) for k, v in final.items() if isinstance(v, int | float)}


def concept_table(results: list[ConceptGroundTruth]) -> str:
    pushes = [k for k in results[0].rates if k != "unsteered"] if results else []
    head = ["concept", "latent", "AUROC", "recovered", "next-token latent (AUROC)", "unsteered freq"]
    head += [f"{p} freq (lift)" for p in pushes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r.concept, str(r.latent), f"{r.auroc:.3f}", "yes" if r.recovered else "no"]
        cells += [f"{r.next_latent} ({r.next_auroc:.3f})", f"{r.rates['unsteered']:.3f}"]
        cells += [f"{r.rates[p]:.3f} ({r.lift(p):+.3f})" for p in pushes]
        lines.append("| " + " | ".join(cells) + " |")
    fraction = recovered_fraction(results)
    lines.append("")
    lines.append(f"recovered (AUROC >= {RECOVERED_AUROC}): {fraction:.0%} of {len(results)} planted concepts")
    for p in pushes:
        mean = sum(r.lift(p) for r in results) / max(1, len(results))
        raised = sum(r.lift(p) > 0 for r in results)
        lines.append(f"steering `{p}`: mean lift {mean:+.3f} marker words per word; raised {raised}/{len(results)}")
    return "\n".join(lines)


def dict_table(rows: list[dict[str, Any]]) -> str:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(row.get(k, "")) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def synthetic_rows(quick: bool) -> list[dict[str, Any]] | None:
    """The synthetic-dictionary benchmark's rows, when that module is part of this checkout."""
    if importlib.util.find_spec("benchmarks.ground_truth_synthetic") is None:
        return None
    return importlib.import_module("benchmarks.ground_truth_synthetic").run(quick)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller model, corpus and SAE (~2-3 min on 2 cores)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, help="reuse the tiny model and store here (default: a temp dir)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mi-crow-ground-truth-") as tmp:
        cfg = demo_config(args.quick, (args.workdir or Path(tmp)).resolve())
        lm, sae, _ = train_demo_sae(cfg)
        eval_texts = [s.text for s in generate_corpus(cfg.n_eval_texts, seed=202)]
        probe = SteeringProbe(repeats=2 if args.quick else 6)  # 12 or 36 continuations per steered run
        results = evaluate_ground_truth(lm, sae, cfg.layer, eval_texts, probe)
    what = f"{cfg.layer}, TopK SAE {cfg.n_latents} latents k={cfg.k}, {cfg.n_train_texts} train texts"
    report = [f"## Planted concepts ({what}{', quick' if args.quick else ''})", "", concept_table(results)]
    synthetic = synthetic_rows(args.quick)
    if synthetic is not None:
        report += ["", "## Synthetic dictionary (mean max cosine to the true atoms, per SAE variant)", ""]
        report.append(dict_table(synthetic))
    report += ["", f"total {time.perf_counter() - started:.0f}s, {args.threads} threads"]
    text = "\n".join(report)
    print(text)
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "ground_truth.md").write_text(text + "\n", encoding="utf-8")
    return text


if __name__ == "__main__":
    main()
