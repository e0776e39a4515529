"""Hand-built TensorChunk bytes: identical to protobuf's, read back without copying the payload."""

from __future__ import annotations

import pytest
import torch
import xxhash
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from mi_crow.chunk_wire import DTYPES, decode_chunk, encode_chunk, encoded_or_message
from mi_crow.chunks import chunk_to_tensor, tensor_to_chunk
from mi_crow.services.common.encoded_responses import with_response_serializers
from mi_crow.v1 import common_pb2, inference_pb2_grpc

TENSORS = {
    "float32 rows": torch.randn(5, 7),
    "float16": torch.randn(3, 4).half(),
    "bfloat16": torch.randn(3, 2).bfloat16(),
    "int32": torch.arange(6, dtype=torch.int32).reshape(2, 3),
    "int64": torch.arange(6).reshape(3, 2) - 3,
    "no rows": torch.zeros(0, 4),
    "scalar": torch.tensor(3.5),
    "transposed view": torch.randn(4, 3).t(),
}


@pytest.mark.parametrize("name", TENSORS)
def test_encoding_is_byte_identical_to_protobuf_and_round_trips(name: str):
    t = TENSORS[name]
    n = t.shape[0] if t.ndim else 0
    columns = {"token_ids": range(n), "positions": [7] * n, "sample_index": [2**40] * n}
    wire = encode_chunk(t, layer="transformer_h_0", sequence=300, last=True, **columns)
    elements = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).contiguous().numpy().tobytes()
    by_protobuf = common_pb2.TensorChunk(
        layer="transformer_h_0",
        dtype=DTYPES[t.dtype],
        shape=list(t.shape),
        little_endian=True,
        sequence=300,
        data=elements,
        xxh3_64=xxhash.xxh3_64_hexdigest(elements),
        last=True,
        **{name: list(values) for name, values in columns.items()},
    )
    assert wire == by_protobuf.SerializeToString()

    got = decode_chunk(wire)
    assert torch.equal(chunk_to_tensor(got), t.contiguous()) and chunk_to_tensor(got).dtype == t.dtype
    assert (got.layer, got.sequence, got.last, list(got.shape)) == ("transformer_h_0", 300, True, list(t.shape))
    assert list(got.token_ids) == list(range(n)) and list(got.sample_index) == [2**40] * n
    assert got.meta.data == b""  # the payload lives only in the view


def test_received_payload_is_a_view_of_the_message_bytes():
    wire = encode_chunk(torch.randn(64, 16))
    got = decode_chunk(wire)
    assert got.data.obj is wire  # no copy: the view keeps the received bytes alive
    assert bytes(got.data) == common_pb2.TensorChunk.FromString(wire).data


def test_fields_in_any_order_and_unknown_fields_are_read_as_protobuf_reads_them():
    t = torch.randn(3, 5)
    data = tensor_to_chunk(t).data
    # Another implementation may write `data` first, repeat it (the last one wins) and add fields we do not know.
    # Field 111 as a varint, a fixed32 and a fixed64.
    unknown = b"\xf8\x06\x05" + b"\xfd\x06\x01\x02\x03\x04" + b"\xf9\x06" + bytes(8)
    wire = (
        common_pb2.TensorChunk(data=b"stale").SerializeToString()
        + common_pb2.TensorChunk(data=data).SerializeToString()
        + unknown
        + common_pb2.TensorChunk(
            layer="x", dtype=common_pb2.FLOAT32, shape=[3, 5], little_endian=True
        ).SerializeToString()
    )
    reference = common_pb2.TensorChunk.FromString(wire)
    got = decode_chunk(wire)
    assert bytes(got.data) == reference.data == data
    assert got.layer == "x" and list(got.shape) == [3, 5]
    assert torch.equal(chunk_to_tensor(got), t)


@pytest.mark.parametrize(
    "wire",
    [b"\x32\x10abc", b"\x08", b"\x08" + b"\xff" * 10 + b"\x01", b"\x0f", b"\x32\x01\xff\x0a\x01\xff"],
    ids=["data past the end", "truncated varint", "overlong varint", "unknown wire type", "invalid utf-8 layer"],
)
def test_malformed_bytes_raise_decode_error(wire: bytes):
    with pytest.raises(DecodeError):
        decode_chunk(wire)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_as_protobuf_does_or_fail_with_decode_error(wire: bytes):
    try:
        got = decode_chunk(wire)
    except DecodeError:
        return
    reference = common_pb2.TensorChunk.FromString(wire)  # whatever we accept, protobuf accepts the same way
    assert bytes(got.data) == reference.data
    reference.ClearField("data")
    assert got.meta == reference


def test_serializer_takes_encoded_bytes_or_messages():
    chunk = tensor_to_chunk(torch.ones(2, 2))
    assert encoded_or_message(chunk) == encoded_or_message(chunk.SerializeToString()) == chunk.SerializeToString()


def test_swapping_a_serializer_for_a_method_the_service_lacks_is_refused():
    add = with_response_serializers(inference_pb2_grpc.add_InferenceServiceServicer_to_server, {"Nope": bytes})
    with pytest.raises(ValueError, match="Nope"):
        add(inference_pb2_grpc.InferenceServiceServicer(), object())
