"""The scripts in examples/ run as a user would run them (a subprocess, --quick, offline) and print results."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HANG_GUARD_S = 900  # not a performance limit: only stops a hung example from blocking the suite


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Shared by the three examples, so the tiny model is trained once and then reused, as it would be for a user.
    return tmp_path_factory.mktemp("examples")


def run_example(name: str, workdir: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_ADDRESS") and k != "MI_CROW_API_KEY"}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), "--quick", "--workdir", str(workdir)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout


def number_after(label: str, text: str) -> float:
    match = re.search(re.escape(label) + r"\s*(-?\d+(?:\.\d+)?)", text)
    assert match, f"{label!r} not in output:\n{text}"
    return float(match.group(1))


def test_library_quickstart(workdir: Path):
    out = run_example("01_library_quickstart.py", workdir)
    harvested = re.search(r"harvested run \S+: (\d+) tokens", out)
    assert harvested and int(harvested.group(1)) > 0
    assert number_after("explained variance", out) > 0.5
    named = re.search(r"latent \d+ named '(\w+)' \(AUROC (\d\.\d+)\); top text: ", out)
    assert named and float(named.group(2)) > 0.5  # better than chance at finding its planted concept
    # repr() quotes with " when the text holds a ', so accept either quote.
    steered = re.findall(r"^steered: (['\"])(.*?)\1 -> (['\"])(.*)\3$", out, re.M)
    assert len(steered) == 6 and any(text.strip() for *_, text in steered)
    assert f"{named.group(1)} words in the continuations: plain" in out


def test_cluster_quickstart(workdir: Path):
    out = run_example("02_cluster_quickstart.py", workdir)
    assert "started a local cluster" in out
    assert number_after("streamed", out) > 0
    assert "SUCCEEDED 100%" in out
    assert number_after("explained variance", out) > 0.5
    assert re.search(r"latent \d+ fires hardest on ' cat'", out)
    steered = re.findall(r"^steered: '(.*?)' -> '(.*)'  \(latent \d+ \+8\)$", out, re.M)
    assert [prompt for prompt, _ in steered] == ["the", "yesterday"]


def test_concept_steering(workdir: Path):
    out = run_example("03_concept_steering.py", workdir)
    concept = re.search(r"stands for '(\w+)' \(AUROC", out)
    assert concept, out
    c = concept.group(1)
    assert "rejected: 2 bad edits: latent 128 out of range" in out
    assert f"saved configs: ['mute-{c}', 'push-{c}']" in out
    assert re.search(rf"^with push-{c}: \d+ {c} words", out, re.M)
    assert re.search(rf"^with mute-{c}: \d+ {c} words", out, re.M)
    assert number_after(f"max logit change under push-{c}:", out) > 0
    assert number_after("max logit change with with_controllers=False:", out) == 0.0
