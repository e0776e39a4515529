"""The main job (in a miniature configuration) and the CLI, through real files and processes."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from rich.console import Console
from typer.testing import CliRunner

from mi_crow.cli import app
from mi_crow.demo.corpus import CONCEPTS
from mi_crow.demo.ground_truth import auroc_matrix, next_token_labels
from mi_crow.demo.pipeline import DemoConfig, run_demo, steering_biases
from mi_crow.demo.tiny_model import TinyModelConfig


def test_auroc_matrix_is_exact_on_known_cases():
    labels = torch.tensor([[1], [1], [0], [0], [0]], dtype=torch.bool)
    codes = torch.tensor(
        [
            [3.0, 0.0, 1.0],  # latent 0 separates perfectly, latent 1 never fires
            [2.0, 0.0, 0.0],  # latent 2: one positive above all negatives, one tied with them at 0
            [0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0],
            [1.0, 0.0, 0.0],
        ]
    )
    scores = auroc_matrix(codes, labels)
    assert scores[0, 0] == 1.0
    assert scores[1, 0] == 0.5
    assert abs(float(scores[2, 0]) - (3 + 0.5 * 3) / 6) < 1e-6


def test_steering_pushes_the_detecting_and_the_announcing_latent_by_their_typical_codes():
    # Token 1 of each text is a marker word: latent 0 fires on it, latent 1 on the token before it.
    per_text = [torch.tensor([[False], [True], [False]])] * 2
    next_labels = next_token_labels(per_text)
    assert next_labels[:, 0].tolist() == [True, False, False] * 2
    codes = torch.tensor([[0.0, 2.0], [5.0, 0.0], [0.0, 0.0], [0.0, 4.0], [3.0, 0.0], [0.0, 0.0]])
    announce = auroc_matrix(codes, next_labels)[:, 0]
    biases = steering_biases(codes, announce, detector=0, strength=4.0)
    assert biases == {0: 4.0 * 4.0, 1: 4.0 * 3.0}  # mean codes where they fire: (5 + 3) / 2 and (2 + 4) / 2
    assert steering_biases(codes, announce, detector=1, strength=1.0) == {1: 3.0}  # one latent, once


def _miniature(tmp_path: Path) -> DemoConfig:
    return DemoConfig(
        workdir=tmp_path,
        layer="transformer_h_1",
        n_train_texts=200,
        n_eval_texts=60,
        n_latents=64,
        k=4,
        epochs=2,
        batch_size=128,
        model=TinyModelConfig(steps=20, n_samples=200, n_layer=2, n_embd=32, n_eval_samples=20, vocab_size=400),
    )


def test_miniature_demo_runs_the_whole_workflow(tmp_path: Path):
    cfg = _miniature(tmp_path)
    console = Console(record=True, width=140)
    report = run_demo(cfg, console)
    assert len(report["concepts"]) == len(CONCEPTS)
    assert all(0.0 <= c["auroc"] <= 1.0 for c in report["concepts"])
    assert 0 <= report["found"] <= len(CONCEPTS)
    text = console.export_text()
    assert "planted concepts found by a single latent" in text and report["sae_id"] in text
    assert "concepts become more frequent when their latent is pushed" in text
    assert all(0 < len(c["steered_latents"]) <= 2 for c in report["concepts"])
    assert (tmp_path / "store" / "saes").is_dir()


def test_cli_layers_harvest_and_train(gpt2_dir: Path, tmp_path: Path):
    runner = CliRunner()
    res = runner.invoke(app, ["layers", str(gpt2_dir)])
    assert res.exit_code == 0, res.output
    assert "transformer_h_0_attn_c_attn" in res.output
    data = tmp_path / "data.txt"
    data.write_text("the cat sat on the mat\nblue sky over the park\n" * 20)
    store = tmp_path / "store"
    res = runner.invoke(
        app, ["harvest", str(gpt2_dir), str(data), "-l", "transformer_h_0", "--store", str(store), "--run-id", "r1"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["run_id"] == "r1"
    res = runner.invoke(app, ["train", "r1", "--store", str(store), "--epochs", "2", "--batch-size", "64"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["sae_id"].startswith("sae-")
    res = runner.invoke(app, ["harvest", str(gpt2_dir), str(data), "-l", "no_such_layer", "--store", str(store)])
    assert res.exit_code != 0 and "unknown layer" in str(res.exception)


def test_miniature_demo_through_a_local_cluster(tmp_path: Path):
    from mi_crow.demo.cluster_demo import run_cluster_demo

    console = Console(record=True, width=140)
    report = run_cluster_demo(_miniature(tmp_path), console, workers=1)
    assert len(report["concepts"]) == len(CONCEPTS) and report["explained_variance"] > 0
    assert all(0.0 <= c["auroc"] <= 1.0 for c in report["concepts"])
    text = console.export_text()
    assert "via gRPC" in text and "SUCCEEDED" in text
    assert all(c["latent"] in c["steered_latents"] for c in report["concepts"])
    assert (tmp_path / "cluster" / "store" / "saes").is_dir()
