"""The contract: generated stubs match protos/, and every field and RPC is documented."""

from __future__ import annotations

import filecmp
import re
from pathlib import Path

import mi_crow.v1
from mi_crow.protogen.generate import generate

ROOT = Path(__file__).resolve().parents[2]


def test_installed_stubs_are_fresh(tmp_path: Path):
    fresh = generate(ROOT / "protos", tmp_path)
    installed = Path(mi_crow.v1.__file__).parent
    stale = [p.name for p in fresh if not filecmp.cmp(p, installed / p.name, shallow=False)]
    assert not stale, f"generated code is stale against protos/ (reinstall: pip install -e .): {stale}"


_DECL = re.compile(r"(service|rpc|message|enum|oneof) (\w+)")
_VALUE = re.compile(r"(\w+) = -?\d+\b[^;]*;")  # enum value
_FIELD = re.compile(r"(?:(?:optional|repeated) )?(?:map<[^>]+>|[\w.]+) (\w+) = \d+\b[^;]*;")  # any field


def _comment_text(line: str) -> str:
    """What follows `//` on a line, or "" when the line has no comment."""
    return line.split("//", 1)[1].strip() if "//" in line else ""


def _declarations(lines: list[str]) -> list[tuple[int, str, str]]:
    """(index, kind, name) of every service, rpc, message, enum, oneof, field and enum value."""
    found = []
    for i, line in enumerate(lines):
        code = line.split("//", 1)[0].strip()
        if not code or code.startswith(("syntax", "package", "import", "option", "reserved")):
            continue
        decl = _DECL.match(code)
        if decl:
            found.append((i, decl.group(1), decl.group(2)))
            continue
        for kind, pattern in (("value", _VALUE), ("field", _FIELD)):
            numbered = pattern.fullmatch(code)
            if numbered:
                found.append((i, kind, numbered.group(1)))
                break
    return found


def test_every_field_rpc_and_message_is_documented():
    """Every service, rpc, message, enum, enum value and field has a comment: the `//` line(s) directly
    above it or a trailing `//` on its own line, with some text in it."""
    from mi_crow.v1 import artifacts_pb2, common_pb2, inference_pb2

    undocumented = []
    counts: dict[str, int] = {}
    for proto in sorted((ROOT / "protos" / "mi_crow" / "v1").glob("*.proto")):
        lines = proto.read_text().splitlines()
        for i, kind, name in _declarations(lines):
            counts[kind] = counts.get(kind, 0) + 1
            above = []
            j = i - 1
            while j >= 0 and lines[j].strip().startswith("//"):
                above.append(_comment_text(lines[j]))
                j -= 1
            if not (any(re.search(r"\w", t) for t in above) or re.search(r"\w", _comment_text(lines[i]))):
                undocumented.append(f"{proto.name}:{i + 1}: {kind} {name}")
    assert not undocumented, "undocumented declarations:\n" + "\n".join(undocumented)

    # The line scan must have seen every declaration the compiled descriptors hold (so no syntax slips by).
    expected: dict[str, int] = {}

    def add(kind: str, n: int = 1) -> None:
        expected[kind] = expected.get(kind, 0) + n

    def walk(msg) -> None:  # type: ignore[no-untyped-def]
        if msg.GetOptions().map_entry:
            return  # synthesized for a map field: not written in the .proto
        add("message")
        add("field", len(msg.fields))
        add("oneof", len([o for o in msg.oneofs if not o.name.startswith("_")]))
        for enum in msg.enum_types:
            add("enum")
            add("value", len(enum.values))
        for nested in msg.nested_types:
            walk(nested)

    for module in (common_pb2, inference_pb2, artifacts_pb2):
        fd = module.DESCRIPTOR
        for msg in fd.message_types_by_name.values():
            walk(msg)
        for enum in fd.enum_types_by_name.values():
            add("enum")
            add("value", len(enum.values))
        for service in fd.services_by_name.values():
            add("service")
            add("rpc", len(service.methods))
    expected = {k: v for k, v in expected.items() if v}
    assert counts == expected, f"declarations seen in protos/ {counts} != compiled descriptors {expected}"


def test_package_is_mi_crow_v1():
    for proto in (ROOT / "protos" / "mi_crow" / "v1").glob("*.proto"):
        assert "package mi_crow.v1;" in proto.read_text()
