"""Record the released contract: write ``protos/snapshots/mi_crow.v1.binpb`` from the current ``.proto`` files.

Run at a release (``python -m mi_crow.protogen.snapshot``). From then on tests/unit/test_proto_compat.py
fails on any change a generated client in another language would break on.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = ROOT / "protos" / "snapshots" / "mi_crow.v1.binpb"


def descriptor_set(out: Path, proto_root: Path = ROOT / "protos") -> Path:
    """Compile every ``mi_crow/v1/*.proto`` (with imports) into a FileDescriptorSet at ``out``."""
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(proto_root)) for p in (proto_root / "mi_crow" / "v1").glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{proto_root}", f"-I{include}", "--include_imports", f"--descriptor_set_out={out}"]
    if protoc.main([*args, *protos]) != 0:
        raise RuntimeError("protoc failed; see its messages above")
    return out


if __name__ == "__main__":
    print(descriptor_set(Path(sys.argv[1]) if len(sys.argv) > 1 else SNAPSHOT))
