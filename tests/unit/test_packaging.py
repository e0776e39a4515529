"""The explicit package list in pyproject.toml names every package in the tree: a non-editable install (the
Docker image) would otherwise ship without the ones it forgot, while editable installs still find them."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _packages_on_disk() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = {"mi_crow": ROOT / "mi_crow", **{name: ROOT / path for name, path in config["package-dir"].items()}}
    found: set[str] = set()
    for prefix, directory in roots.items():
        for init in directory.rglob("__init__.py"):
            rel = init.parent.relative_to(directory)
            found.add(".".join([prefix, *rel.parts]))
    return found


def test_every_package_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = _packages_on_disk() - {"mi_crow.v1"}  # generated at build time, listed on purpose
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - on_disk - {"mi_crow.v1"} == set(), "listed packages that do not exist"
