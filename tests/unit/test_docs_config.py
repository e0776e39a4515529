"""docs/configuration.md documents every MI_CROW_* variable the code reads and every `mi-crow` command and flag."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "configuration.md"
ENV_NAME = re.compile(r"MI_CROW_[A-Z_]+")
SOURCES = ["services", "workers", "mi_crow", "protos", "deploy"]
SUFFIXES = {".py", ".proto", ".yml", ".yaml", ".sh", ""}  # "" for Dockerfile


def _source_files() -> list[Path]:
    files = [ROOT / "docker-compose.yml"]
    for folder in SOURCES:
        files += [p for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix in SUFFIXES]
    return [p for p in files if p.exists() and "__pycache__" not in p.parts]


def used_env_names() -> dict[str, str]:
    """Each MI_CROW_* name in the code -> one file that uses it."""
    found: dict[str, str] = {}
    for path in _source_files():
        for name in ENV_NAME.findall(path.read_text(encoding="utf-8", errors="replace")):
            found.setdefault(name.rstrip("_"), str(path.relative_to(ROOT)))
    return found


def test_every_env_variable_in_the_code_is_documented():
    page = PAGE.read_text(encoding="utf-8")
    used = used_env_names()
    assert "MI_CROW_STORE" in used and "MI_CROW_REDIS_URL" in used  # the scan itself works
    missing = sorted(f"{name} (used in {where})" for name, where in used.items() if f"`{name}`" not in page)
    assert not missing, "add these to docs/configuration.md:\n" + "\n".join(missing)


def _sections(page: str) -> dict[str, str]:
    """CLI section body per '### `mi-crow ...`' heading."""
    parts = re.split(r"^### `(mi-crow[^`]*)`\s*$", page, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_every_cli_command_and_flag_is_documented():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from cli_reference import commands, root_command
    finally:
        sys.path.remove(str(ROOT / "docs"))
    sections = _sections(PAGE.read_text(encoding="utf-8"))
    missing = []
    seen = 0
    for path, cmd in commands(root_command()):
        name = " ".join(path)
        seen += 1
        if name not in sections:
            missing.append(f"command {name}")
            continue
        for param in cmd.params:
            for flag in [*param.opts, *param.secondary_opts]:
                if flag.startswith("-") and flag != "--help" and f"`{flag}`" not in sections[name]:
                    missing.append(f"{name} {flag}")
    assert seen >= 20  # the app was walked (demo, up, serve-*, worker, client ...)
    assert not missing, (
        "docs/configuration.md lacks these; run `.venv/bin/python docs/cli_reference.py`:\n" + "\n".join(missing)
    )


def test_the_page_lists_no_variable_the_code_does_not_use():
    # A documented variable nobody reads would mislead an operator; the few non-mi-crow ones are named apart.
    page = PAGE.read_text(encoding="utf-8")
    documented = {n.rstrip("_") for n in ENV_NAME.findall(page)}
    stale = sorted(documented - set(used_env_names()))
    assert not stale, f"documented but never read by the code: {stale}"
