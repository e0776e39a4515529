"""The contract only grows: the .proto files stay backward compatible with the released descriptor snapshot
(protos/snapshots/mi_crow.v1.binpb). Removing, renumbering or retyping a field, or removing a message,
enum value, service or method fails here."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2

from mi_crow.protogen.snapshot import SNAPSHOT, descriptor_set


def _descriptor_set(tmp_path: Path) -> descriptor_pb2.FileDescriptorSet:
    out = descriptor_set(tmp_path / "current.binpb")
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _index(fds: descriptor_pb2.FileDescriptorSet) -> dict[str, object]:
    """Everything a client can depend on, keyed by full name."""
    out: dict[str, object] = {}

    def messages(prefix: str, items) -> None:  # type: ignore[no-untyped-def]
        for m in items:
            name = f"{prefix}.{m.name}"
            out[name] = "message"
            for f in m.field:
                out[f"{name}#{f.number}"] = (f.name, f.type, f.label, f.type_name)
            for e in m.enum_type:
                for v in e.value:
                    out[f"{name}.{e.name}={v.number}"] = v.name
            messages(name, m.nested_type)

    for f in fds.file:
        if not f.package.startswith("mi_crow."):
            continue
        messages(f.package, f.message_type)
        for e in f.enum_type:
            for v in e.value:
                out[f"{f.package}.{e.name}={v.number}"] = v.name
        for s in f.service:
            for m in s.method:
                out[f"{f.package}.{s.name}/{m.name}"] = (m.input_type, m.output_type, m.server_streaming)
    return out


def test_protos_are_backward_compatible_with_the_snapshot(tmp_path: Path):
    released = _index(descriptor_pb2.FileDescriptorSet.FromString(SNAPSHOT.read_bytes()))
    current = _index(_descriptor_set(tmp_path))
    broken = [
        f"{key}: {old} -> {current.get(key, 'REMOVED')}" for key, old in released.items() if current.get(key) != old
    ]
    assert not broken, "breaking changes to the released contract:\n" + "\n".join(broken)


def test_the_check_catches_a_renumbered_field(tmp_path: Path):
    fds = descriptor_pb2.FileDescriptorSet.FromString(SNAPSHOT.read_bytes())
    released = _index(fds)
    chunk = next(m for f in fds.file for m in f.message_type if m.name == "TensorChunk")
    chunk.field[0].number = 99  # what a careless edit would do
    assert _index(fds) != released
