"""Build hook: generate the gRPC stubs (package mi_crow.v1) from protos/ before packaging.

Configuration lives in pyproject.toml. Generation runs when setuptools evaluates this file, because the
package list (which names mi_crow.v1) is checked before any build command runs.
"""

import importlib.util
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent


def _generate() -> None:
    spec = importlib.util.spec_from_file_location("_protogen", ROOT / "mi_crow" / "protogen" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(ROOT / "protos", ROOT)


if (ROOT / "protos").is_dir():  # an sdist already carries the generated files
    _generate()
setup()
