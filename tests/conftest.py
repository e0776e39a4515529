"""Shared fixtures: tiny models built locally (no downloads), an isolated store per test, suite selection."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # don't spin-wait on a 2-core machine shared with services
os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may be fetched from a hub in tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--unit", action="store_true", help="run only unit tests")
    parser.addoption("--e2e", action="store_true", help="run only end-to-end tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:  # a test's folder gives its suite unless it says otherwise
        parts = Path(str(item.fspath)).parts
        if "unit" in parts and not item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.unit)
        elif "e2e" in parts and not item.get_closest_marker("unit"):
            item.add_marker(pytest.mark.e2e)
    wanted = [m for m in ("unit", "e2e") if config.getoption(f"--{m}")]
    if wanted:
        keep = [i for i in items if any(i.get_closest_marker(m) for m in wanted)]
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every test gets its own default store and no alias overrides from the caller's shell.
    monkeypatch.setenv("MI_CROW_STORE", str(tmp_path / "default-store"))
    monkeypatch.delenv("MI_CROW_MODEL_ALIASES", raising=False)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """arch -> directory of a tiny random model saved with save_pretrained (built once per session)."""
    from mi_crow.testing.tiny_models import ARCHITECTURES, build_tiny_model, build_tiny_tokenizer

    root = tmp_path_factory.mktemp("tiny-models")
    tokenizer = build_tiny_tokenizer(root / "tokenizer")
    yield {arch: build_tiny_model(arch, root / arch, tokenizer_dir=tokenizer) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def gpt2_dir(tiny_models: dict[str, Path]) -> Path:
    return tiny_models["gpt2"]


@pytest.fixture
def lm(gpt2_dir: Path, tmp_path: Path):
    from mi_crow.language_model import LanguageModel

    return LanguageModel(str(gpt2_dir), store=tmp_path / "store")


TEXTS = [
    "the cat sat on the mat",
    "a red dog runs very fast across the park",
    "blue sky",
    "green grass grows under the warm sun in spring",
    "numbers one two three four",
    "she ate an apple and a pear",
] * 4


@pytest.fixture
def texts() -> list[str]:
    return list(TEXTS)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server for the session (or the one named by REDIS_URL)."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    from mi_crow.services.launcher import RedisProcess

    proc = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    try:
        yield proc.url
    finally:
        proc.stop()
