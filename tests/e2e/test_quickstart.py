"""The seed README's three Quick Start snippets, run as written against a local model directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SNIPPET_BASIC = """
from mi_crow.language_model import LanguageModel

# Initialize a language model
lm = LanguageModel(model_id="bielik")

# Run inference
outputs = lm.forwards(["Hello, world!"])

# Access activations and outputs
print(outputs.logits)
"""

SNIPPET_TRAIN = """
from mi_crow.language_model import LanguageModel
from mi_crow.mechanistic.sae import SaeTrainer
from mi_crow.mechanistic.sae.modules import TopKSae

# Load model and collect activations
lm = LanguageModel(model_id="bielik")
activations = lm.save_activations(
    dataset=["Your text data here"],
    layers=["transformer_h_0_attn_c_attn"]
)

# Train SAE
trainer = SaeTrainer(
    model=lm,
    layer="transformer_h_0_attn_c_attn",
    sae_class=TopKSae,
    hyperparams={"epochs": 10, "batch_size": 256}
)
sae = trainer.train(activations)
"""

SNIPPET_CONCEPTS = """
# Load concepts and manipulate model behavior
concepts = lm.load_concepts(sae_id="your_sae_id")
concepts.manipulate(neuron_idx=0, scale_factor=1.5)

# Run inference with concept manipulation
outputs = lm.forwards(
    ["Your prompt"],
    with_controllers=True,
    concept_config=concepts
)
"""


def test_seed_quickstart_runs_as_written(gpt2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    aliases = tmp_path / "aliases.json"
    aliases.write_text(json.dumps({"bielik": str(gpt2_dir)}))
    monkeypatch.setenv("MI_CROW_MODEL_ALIASES", str(aliases))
    ns: dict = {}
    exec(SNIPPET_BASIC, ns)
    assert ns["outputs"].logits.ndim == 3
    exec(SNIPPET_TRAIN, ns)
    sae = ns["sae"]
    assert sae.id and sae.layer == "transformer_h_0_attn_c_attn"
    assert ns["activations"].n_tokens > 0
    # The only edit: the placeholder id becomes the id the training snippet produced.
    exec(SNIPPET_CONCEPTS.replace("your_sae_id", sae.id), ns)
    assert ns["outputs"].logits.shape[0] == 1
    assert ns["concepts"].config.scales == {0: 1.5}
