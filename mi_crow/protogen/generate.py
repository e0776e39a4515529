"""Compile ``protos/mi_crow/v1/*.proto`` into the importable package ``mi_crow.v1``.

The build (setup.py) calls this, and so does the staleness test, which compares a fresh generation with
the installed files: stubs are never edited by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE = ("mi_crow", "v1")


def generate(proto_root: Path, out_root: Path) -> list[Path]:
    """Write ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` under ``out_root/mi_crow/v1``."""
    from grpc_tools import protoc  # build-time dependency only

    protos = sorted((proto_root.joinpath(*PACKAGE)).glob("*.proto"))
    if not protos:
        raise FileNotFoundError(f"no .proto files under {proto_root.joinpath(*PACKAGE)}")
    out_dir = out_root.joinpath(*PACKAGE)
    out_dir.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *[str(p.relative_to(proto_root)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {[p.name for p in protos]}")
    init = out_dir / "__init__.py"
    init.write_text('"""Generated from protos/mi_crow/v1 by the build. Do not edit."""\n')
    return sorted(out_dir.glob("*_pb2*.py*"))


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd()
    for path in generate(root / "protos", root):
        print(path)
