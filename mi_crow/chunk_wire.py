"""TensorChunk wire bytes written and read without passing the payload through protobuf's Python objects.

A chunk is almost all `data` (about 1 MiB). Through protobuf's Python API the payload is copied three times
on the way out (to bytes, into the message, out by SerializeToString) and twice on the way in (FromString,
then every read of `.data`); on a 2-core machine those copies compete with the transport for the CPU. Here
the sender joins the small header, the data field's tag and length, and the tensor's own memory into the
message in one copy, and the receiver slices the payload out of the received bytes as a memoryview and lets
protobuf parse only the small rest. The bytes are exactly what ``SerializeToString`` writes (a test checks
it), so a client in any other language reads an ordinary TensorChunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np
import torch
import xxhash
from google.protobuf.message import DecodeError

from mi_crow.v1 import common_pb2, inference_pb2

DTYPES = {
    torch.float32: common_pb2.FLOAT32,
    torch.float16: common_pb2.FLOAT16,
    torch.bfloat16: common_pb2.BFLOAT16,
    torch.int32: common_pb2.INT32,
    torch.int64: common_pb2.INT64,
}
_DATA_FIELD = common_pb2.TensorChunk.DESCRIPTOR.fields_by_name["data"].number
_LENGTH_DELIMITED = 2
_DATA_TAG = bytes([_DATA_FIELD << 3 | _LENGTH_DELIMITED])
STREAM_ACTIVATIONS = "/mi_crow.v1.InferenceService/StreamActivations"


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_chunk(
    tensor: torch.Tensor,
    *,
    layer: str = "",
    sequence: int = 0,
    token_ids: Sequence[int] = (),
    positions: Sequence[int] = (),
    sample_index: Sequence[int] = (),
    last: bool = False,
) -> bytes:
    """The serialized TensorChunk of ``tensor``, built with one copy of its elements."""
    tensor = tensor.detach().contiguous().cpu()
    if tensor.dtype not in DTYPES:
        raise ValueError(f"cannot send tensors of dtype {tensor.dtype}")
    # bfloat16 has no numpy dtype: reinterpret the same bytes as int16 to get at them.
    elements = (tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor).numpy()
    payload = memoryview(elements.reshape(-1).view(np.uint8))  # the tensor's own memory, as bytes
    # Fields before and after `data`, each serialized by protobuf, keep the canonical field order.
    head = common_pb2.TensorChunk(
        layer=layer, dtype=DTYPES[tensor.dtype], shape=list(tensor.shape), little_endian=True, sequence=sequence
    ).SerializeToString()
    tail = common_pb2.TensorChunk(
        token_ids=list(token_ids),
        positions=list(positions),
        sample_index=list(sample_index),
        xxh3_64=xxhash.xxh3_64_hexdigest(payload),
        last=last,
    ).SerializeToString()
    if not payload.nbytes:  # proto3 leaves an empty bytes field out
        return head + tail
    return b"".join((head, _DATA_TAG, _varint(payload.nbytes), payload, tail))


@dataclass(frozen=True, slots=True)
class ReceivedChunk:
    """A TensorChunk as received: ``meta`` holds every field but the payload, ``data`` views the message bytes."""

    meta: common_pb2.TensorChunk
    data: memoryview

    def __getattr__(self, name: str):  # layer, dtype, shape, token_ids, ... as on a TensorChunk
        return getattr(self.meta, name)


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise DecodeError("truncated or overlong varint in a TensorChunk")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def decode_chunk(wire: bytes) -> ReceivedChunk:
    """Parse a serialized TensorChunk, leaving its payload in place (a zero-copy view of ``wire``)."""
    view = memoryview(wire)
    data, rest, kept_from, pos = view[:0], [], 0, 0
    while pos < len(view):
        field_start = pos
        key, pos = _read_varint(view, pos)
        wire_type = key & 7
        if wire_type == 0:
            _, end = _read_varint(view, pos)
        elif wire_type == 1:
            end = pos + 8
        elif wire_type == _LENGTH_DELIMITED:
            length, pos = _read_varint(view, pos)
            end = pos + length
        elif wire_type == 5:
            end = pos + 4
        else:
            raise DecodeError(f"unsupported wire type {wire_type} in a TensorChunk")
        if end > len(view):
            raise DecodeError("TensorChunk field runs past the end of the message")
        if key >> 3 == _DATA_FIELD and wire_type == _LENGTH_DELIMITED:
            data = view[pos:end]  # a repeated occurrence replaces the earlier one, as protobuf merges
            rest.append(view[kept_from:field_start])
            kept_from = end
        pos = end
    rest.append(view[kept_from:])
    return ReceivedChunk(common_pb2.TensorChunk.FromString(b"".join(rest)), data)


def encoded_or_message(message: bytes | common_pb2.TensorChunk) -> bytes:
    """Response serializer for streams whose handlers yield encoded chunks (or, rarely, messages)."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def stream_activations_call(channel: grpc.Channel) -> grpc.UnaryStreamMultiCallable:
    """StreamActivations on ``channel``, yielding ReceivedChunks instead of parsed TensorChunks."""
    return channel.unary_stream(
        STREAM_ACTIVATIONS,
        request_serializer=inference_pb2.StreamActivationsRequest.SerializeToString,
        response_deserializer=decode_chunk,
    )
